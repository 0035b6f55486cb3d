"""What lightpipe's pipeline costs around CTranslate2: `pipeline(..., backend="ctranslate2")`
against the bare CTranslate2 engine it wraps, head to head, on rivals.py's decoding rows (GPT-2-small
size, 1 prompt and 8 together, greedy, exactly 64 new tokens) and its summarization row
(distilbart-cnn-12-6 size, 4 documents, 4 beams, max_length 142), float32 and int8.

    python benchmarks/ct2_overhead.py [--quick] [--rounds 5] [--loads 2] [--threads 2] [--only decoding|summarization]

Why a second benchmark: rivals.py times its engines one after another, each for a few calls.
On a VM whose speed drifts by 10% over minutes, that can't resolve the few percent between two
columns that run the same engine. Here both are loaded together and take turns call by call (A B A B
...), each row reporting the best of --rounds calls each, so drift hits both alike. And one
load of an engine can run a few percent faster or slower than another load of the same files
for as long as it lives (where its weights land in memory, on a VM sharing its caches and
memory bandwidth): each side is loaded --loads times, all taking turns, and a row gives each
side's best load and the spread between its loads.

Same inputs, same threads (torch.set_num_threads and intra_threads), tokenization counted for
both, as in rivals.py; the bare engine is CTranslate2's own conversion of the same checkpoint
(cached with rivals.py's, in $TMPDIR/lightpipe-bench-rivals), lightpipe's is built from its
loaded weights. Both do the same work: at max_length lightpipe decodes one step fewer and ends a
summary with </s> (as transformers does), so the bare Translator is given that one step fewer
too. Each row says how many outputs have the same ids (without <s>, </s> and padding).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import rival_engines as rivals  # noqa: E402
import rivals as table  # noqa: E402  (its checkpoints, inputs and cache)
from summarization import GENERATION, checkpoint, documents  # noqa: E402

COMPUTE = [("float32", None), ("int8", "int8")]  # CTranslate2's compute_type, lightpipe's quantize


def alternate(calls: dict, rounds: int) -> dict:
    """{name: (best seconds, last result)} of each call over `rounds` rounds; in a round every
    call runs once, in order."""
    best = {name: (math.inf, None) for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            out = call()
            took = time.perf_counter() - start
            best[name] = (min(best[name][0], took), out)
    return best


def report(row: str, compute: str, items: int, best: dict) -> None:
    """One row: each side's best rate over its loads (and the spread between its loads), their
    ratio, and how many outputs of its first loads agree."""
    def side(name):
        times = [seconds for key, (seconds, _) in best.items() if key.startswith(name)]
        return items / min(times), items / max(times), best[f"{name} 0"][1]

    (ours, ours_low, ours_out), (bare, bare_low, bare_out) = side("lightpipe"), side("bare")
    same = sum(a == b for a, b in zip(ours_out, bare_out))
    print(f"  {row:<20} {compute:<8} lightpipe ct2 {ours:6.3g} (loads {ours_low:.3g}-{ours:.3g})   bare CTranslate2 "
          f"{bare:6.3g} (loads {bare_low:.3g}-{bare:.3g})   {ours / bare:5.3f}x   same ids {same}/{len(bare_out)}",
          flush=True)


def decoding(args) -> None:
    import ctranslate2
    import transformers

    from generation import gpt2_small
    from lightpipe import pipeline

    folder = rivals.cached(table.CACHE / "gpt2-small", gpt2_small)
    converted = rivals.ct2_convert(folder, table.CACHE / "gpt2-small-ct2")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    n = args.new_tokens
    print(f"\nGPT-2-small size (random weights), greedy, {n} new tokens each, {args.threads} threads, tok/s")

    def rows(compute, quantize):
        ours = [pipeline("text-generation", model=folder, quantize=quantize, backend="ctranslate2")
                for _ in range(args.loads)]
        bare = [ctranslate2.Generator(str(converted), compute_type=compute, **rivals.ct2_threads(args.threads))
                for _ in range(args.loads)]

        def lightpipe(pipe, texts):
            out = pipe(texts, do_sample=False, max_new_tokens=n, min_new_tokens=n, return_tensors=True,
                       batch_size=len(texts))
            return [r[0]["generated_token_ids"][-n:].tolist() for r in out]

        for row, texts in zip(["1 prompt", f"{len(args.prompts)} prompts together"], [args.prompt, args.prompts]):
            calls = {}
            for i in range(args.loads):
                calls[f"lightpipe {i}"] = lambda p=ours[i], t=texts: lightpipe(p, t)
                calls[f"bare {i}"] = lambda g=bare[i], t=texts: rivals.ct2_generate(g, tok, t, n)
            alternate(calls, 1)  # warm-up
            report(row, compute, n * len(texts), alternate(calls, args.rounds))

    for compute, quantize in COMPUTE:
        rows(compute, quantize)  # its engines go when it returns
        gc.collect()


def summarization(args) -> None:
    import ctranslate2
    import transformers

    from lightpipe import pipeline

    folder = checkpoint("distilbart")
    converted = rivals.ct2_convert(folder, table.CACHE / "distilbart-ct2")
    vocabulary = rivals.ct2_vocabulary(converted)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    docs, settings = documents(args.docs), dict(GENERATION)
    if args.quick:
        settings.update(max_length=24, min_length=12)
    bare_settings = dict(settings, max_length=settings["max_length"] - 1)  # lightpipe's last step is its forced </s>
    special = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    print(f"\nsummarization, distilbart-cnn-12-6 size (random weights), {len(docs)} documents in one batch, "
          f"{settings['num_beams']} beams, max_length {settings['max_length']}, docs/s")
    def content(ids):  # without the start, <s> and </s>: each engine frames a summary its own way
        return [int(i) for i in ids if int(i) not in special]

    def row(compute, quantize):
        calls = {}
        for i in range(args.loads):
            ours = pipeline("summarization", model=folder, quantize=quantize, backend="ctranslate2")
            bare = ctranslate2.Translator(str(converted), compute_type=compute, **rivals.ct2_threads(args.threads))
            calls[f"lightpipe {i}"] = lambda p=ours: [content(r["summary_token_ids"]) for r in p(
                docs, batch_size=len(docs), return_tensors=True, **settings)]
            calls[f"bare {i}"] = lambda t=bare: [content(ids) for ids in rivals.ct2_summarize(t, tok, vocabulary, docs,
                                                                                            bare_settings)]
        report("summarization", compute, len(docs), alternate(calls, args.rounds))

    for compute, quantize in COMPUTE:
        row(compute, quantize)
        gc.collect()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a check that it runs: 8 new tokens, 1 document "
                                                             "summarized to 24 tokens, 1 round")
    parser.add_argument("--rounds", type=int, help="calls each engine makes per row (default 5; 3 for summarization)")
    parser.add_argument("--loads", type=int, default=2, help="engines of each side, loaded side by side (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["decoding", "summarization"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.new_tokens, args.docs = (8, 1) if args.quick else (64, 4)
    args.prompt, args.prompts = table.decoding_prompts()
    rounds = args.rounds or (1 if args.quick else None)
    if args.only in (None, "decoding"):
        args.rounds = rounds or 5
        decoding(args)
    if args.only in (None, "summarization"):
        args.rounds = rounds or 3
        summarization(args)

if __name__ == "__main__":
    main()
