"""Encoder throughput, lightpipe vs transformers 4.57.6 (vs sentence-transformers), in one
process on the same real sentences (Python's own docs, `pydoc_data.topics`).

    python benchmarks/encoders.py [--n 2000] [--batch-size 32]

Rows: all-MiniLM-L6-v2 sentence embeddings; text-classification, NER and zero-shot (200
sentences x 5 labels) on DistilBERT-size checkpoints with random weights (speed doesn't depend
on weight values).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import sentences  # noqa: E402


def timed(fn, repeat=1):
    """Best wall time of `repeat` runs (callers warm up first)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def row(name, n, seconds, baseline=None):
    ratio = f"{baseline / seconds:5.2f}x" if baseline else "  1.00x"
    print(f"  {name:<42} {n / seconds:9.1f} sentences/s  {ratio}")
    return seconds


def embeddings(texts, batch_size):
    import transformers
    from sentence_transformers import SentenceTransformer

    from lightpipe import pipeline
    from lightpipe.hub import resolve

    folder = str(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    ours = pipeline("feature-extraction", model=folder)
    theirs = transformers.pipeline("feature-extraction", model=folder)
    st = SentenceTransformer(folder, device="cpu")

    def run_ours():
        return ours(texts, pooling="mean", normalize=True, return_tensors=True, batch_size=batch_size)

    def run_theirs():  # the pipeline's per-token output, mean-pooled the same way
        out = theirs(texts, batch_size=batch_size, return_tensors=True)
        return [torch.nn.functional.normalize(o[0].mean(0), dim=-1) for o in out]

    def run_st():
        return st.encode(texts, batch_size=batch_size, convert_to_tensor=True)

    print(f"all-MiniLM-L6-v2 embeddings, {len(texts)} sentences, batch_size={batch_size}")
    ours(texts[:64], pooling="mean"), theirs(texts[:64]), st.encode(texts[:64])  # warm-up
    t_theirs = timed(run_theirs)
    t_st = timed(run_st)
    t_ours = timed(run_ours)
    t_default = timed(lambda: ours(texts, pooling="mean", normalize=True, return_tensors=True))
    row("transformers pipeline", len(texts), t_theirs)
    row("sentence-transformers", len(texts), t_st, t_theirs)
    row("lightpipe", len(texts), t_ours, t_theirs)
    row("lightpipe, default batching (token budget)", len(texts), t_default, t_theirs)
    print(f"  lightpipe vs sentence-transformers: {t_st / t_ours:.2f}x (same batch_size), "
          f"{t_st / t_default:.2f}x (default batching)")


def distilbert_size(head: str, labels: list[str], folder: Path | None = None) -> Path:
    """A DistilBERT-base-shaped checkpoint with random weights (MiniLM's uncased vocabulary), in
    `folder` (default: a new temporary one)."""
    import transformers

    from lightpipe.hub import resolve

    folder = Path(folder or tempfile.mkdtemp(prefix=f"lp-bench-{head}-"))
    # MiniLM's vocabulary is distilbert-base-uncased's; DistilBERT's tokenizer class gives no token types
    tokenizer = transformers.DistilBertTokenizerFast.from_pretrained(str(resolve("sentence-transformers/all-MiniLM-L6-v2")))
    config = transformers.DistilBertConfig(vocab_size=tokenizer.vocab_size, id2label=dict(enumerate(labels)),
                                           label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(0)
    cls = {"sequence": transformers.DistilBertForSequenceClassification,
           "token": transformers.DistilBertForTokenClassification}[head]
    cls(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def classification(texts, batch_size):
    import transformers

    from lightpipe import pipeline

    folder = distilbert_size("sequence", ["NEGATIVE", "POSITIVE"])
    ours = pipeline("text-classification", model=folder)
    theirs = transformers.pipeline("text-classification", model=str(folder))
    print(f"text-classification, DistilBERT-size random weights, {len(texts)} sentences, batch_size={batch_size}")
    ours(texts[:64]), theirs(texts[:64])  # warm-up
    t_theirs = timed(lambda: theirs(texts, batch_size=batch_size))
    t_ours = timed(lambda: ours(texts, batch_size=batch_size))
    row("transformers pipeline", len(texts), t_theirs)
    row("lightpipe", len(texts), t_ours, t_theirs)


def ner(texts, batch_size):
    import transformers

    from lightpipe import pipeline

    folder = distilbert_size("token", ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"])
    ours = pipeline("ner", model=folder)
    theirs = transformers.pipeline("ner", model=str(folder))
    print(f"ner (aggregation_strategy=simple), DistilBERT-size, {len(texts)} sentences, batch_size={batch_size}")
    ours(texts[:16]), theirs(texts[:16])  # warm-up
    t_theirs = timed(lambda: theirs(texts, aggregation_strategy="simple", batch_size=batch_size))
    t_ours = timed(lambda: ours(texts, aggregation_strategy="simple", batch_size=batch_size))
    row("transformers pipeline", len(texts), t_theirs)
    row("lightpipe", len(texts), t_ours, t_theirs)


def zero_shot(texts, batch_size):
    """transformers' default runs each (text, label) pair alone; lightpipe batches all pairs sorted."""
    import transformers

    from lightpipe import pipeline

    folder = distilbert_size("sequence", ["contradiction", "neutral", "entailment"])
    labels = ["education", "politics", "business", "sports", "technology"]
    ours = pipeline("zero-shot-classification", model=folder)
    theirs = transformers.pipeline("zero-shot-classification", model=str(folder))
    print(f"zero-shot-classification, DistilBERT-size NLI, {len(texts)} sentences x {len(labels)} labels")
    ours(texts[:16], labels), theirs(texts[:16], labels)  # warm-up
    t_default = timed(lambda: theirs(texts, labels))
    t_batched = timed(lambda: theirs(texts, labels, batch_size=batch_size))
    t_ours = timed(lambda: ours(texts, labels))
    row("transformers pipeline (default batch_size)", len(texts), t_default)
    row(f"transformers pipeline (batch_size={batch_size})", len(texts), t_batched, t_default)
    row("lightpipe (default)", len(texts), t_ours, t_default)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", choices=["embeddings", "classification", "ner", "zero-shot"])
    args = parser.parse_args()
    texts = sentences(args.n)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.only in (None, "embeddings"):
        embeddings(texts, args.batch_size)
    if args.only in (None, "classification"):
        classification(texts, args.batch_size)
    if args.only in (None, "ner"):
        ner(texts, args.batch_size)
    if args.only in (None, "zero-shot"):
        zero_shot(texts[:200], args.batch_size)


if __name__ == "__main__":
    main()
