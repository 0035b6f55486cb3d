"""lightpipe vs the fastest CPU inference engines (issue 15), in one process, on the same inputs,
with the same number of threads each: sentence-transformers / transformers 4.57.6, lightpipe
float32 and quantize="int8", lightpipe with backend="ctranslate2" float32 / int8 (encoders),
ONNX Runtime float32 / int8, CTranslate2 float32 / int8.

    pip install -e '.[bench]'   # onnxruntime, onnx, optimum[onnxruntime], ctranslate2 + the references
    python benchmarks/rivals.py [--quick] [--threads 2] [--only WORKLOAD ...] [--rebuild]

WORKLOADs: embeddings (the real all-MiniLM-L6-v2, embedded in lightpipe; 400 pydoc sentences,
batch 32), classification (DistilBERT-base size, sst-2-shaped head; 400 sentences, batch 32),
decoding (GPT-2-small size; one prompt greedy, then 8 prompts together; 64 new tokens each,
exactly: min = max), summarization (distilbart-cnn-12-6 size and generation settings: 4 beams,
max_length 142; 4 documents of 250-750 tokens, all in one batch for every engine) and
cold-start (benchmarks/cold_start.py: import + load + first result in a fresh process, vs
`import torch` alone). Each workload prints its rows with the ratio to lightpipe float32 and a
quality column; the end prints the issue's table in Markdown.

Threads: torch.set_num_threads(--threads) for transformers, sentence-transformers and lightpipe;
ORT intra_op_num_threads=--threads, inter_op_num_threads=1; CTranslate2 intra_threads=--threads,
inter_threads=1. Each engine is loaded, warmed up, timed (best of --repeat, fewer once 30 s are
spent; summarization once) and released before the next one, so no thread pool idles beside
another and memory stays low. Load and conversion times are not counted; tokenization is, for
every engine.

Checkpoints: except MiniLM, random weights in the real architectures' shapes (speed doesn't
depend on weight values), built like the other benchmarks (encoders.py, generation.py,
summarization.py). ORT and CTranslate2 are converted from those same folders
(benchmarks/rival_engines.py says how: optimum export + ORT's BERT fusions, quantize_dynamic,
TransformersConverter); checkpoints and conversions are cached in $TMPDIR/lightpipe-bench-rivals
(the first run spends several minutes converting, mostly distilbart); --rebuild starts afresh.

lightpipe ct2 (every row but cold start): `pipeline(..., backend="ctranslate2")` and
quantize="int8" with it, i.e. lightpipe's pipeline with the encoder's layers in CTranslate2
(embeddings, classification), or its generation in a CTranslate2 Generator / Translator
(decoding, summarization), built from lightpipe's loaded weights at load time (not counted,
like every conversion); the gap between it and the bare CTranslate2 column is what lightpipe's
pipeline costs around the same engine, within this run's drift: benchmarks/ct2_overhead.py
measures that gap with the two taking turns call by call.

How the rivals are driven, where they lack a pipeline:
  - ORT encoders: our loop over length-sorted batches of 32 (as sentence-transformers does),
    tokenized by the checkpoint's tokenizer.json (`tokenizers`), mean pooling in numpy.
  - ORT decoding and summarization: optimum's ORTModelForCausalLM / ORTModelForSeq2SeqLM
    (transformers' generate() over ORT sessions; without optimum these cells would be "–").
  - CTranslate2 encoders: ctranslate2.Encoder on the same batches. It has no DistilBERT
    classification head: the encoder runs in CTranslate2, the head (two small matmuls on the
    [CLS] vectors) in numpy.
  - CTranslate2 decoding: Generator.generate_batch; summarization: Translator.translate_batch
    with target_prefix <s> (BART's forced_bos_token_id).
A cell shows "–" when an engine can't be imported (not installed) or failed; the reason is
printed in its workload's rows.

Quality columns: embeddings, cosine to sentence-transformers float32 (mean, and min over the
sentences); classification, the largest |p(POSITIVE) - transformers'| and the labels that
agree; decoding, top-1 agreement with teacher forcing on lightpipe float32's 8 greedy
continuations (each position's argmax vs the same engine's float32 argmax for int8 engines, vs
lightpipe float32's for float32 ones), plus the greedy continuations equal to lightpipe
float32's. Random-weight decoders have flat logits, so int8 likely flips more top-1 choices
than on a trained model. Summarization: the summaries equal to transformers float32's, as
token ids (random weights mostly pick ids past the small tokenizer's vocabulary, which decode
to nothing), and their mean length in tokens, i.e. the work done: random weights never pick
eos, so every engine runs to max_length (CTranslate2 writes one more token where transformers
forces </s>). CTranslate2's beam search ranks hypotheses a little differently from
transformers' (its greedy output on this checkpoint is transformers' exactly), so its float32
summaries share a prefix with transformers' rather than being equal.

--quick: 96 sentences, 16 new tokens, 1 document summarized to at most 30 tokens, best of 1,
cold start once: a check that every column runs (minutes once conversions are cached), not a
measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import rival_engines as rivals  # noqa: E402
from tiny import sentences  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CACHE = Path(tempfile.gettempdir()) / "lightpipe-bench-rivals"
COLUMNS = ["reference", "lightpipe fp32", "lightpipe int8", "lightpipe ct2 fp32", "lightpipe ct2 int8", "ORT fp32",
           "ORT int8", "CT2 fp32", "CT2 int8"]
BASELINE = "lightpipe fp32"
WORKLOADS = ["embeddings", "classification", "decoding", "summarization", "cold-start"]


# ---- measuring and printing ----

def best_time(fn, repeat: int, budget: float = 30.0):
    """(best wall time of up to `repeat` calls, the last call's result); no further call starts
    once `budget` seconds are spent, so slow engines don't stretch the run."""
    best, out, spent = math.inf, None, 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > budget:
            break
    return best, out


def fmt(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.3g}"


def release():
    gc.collect()


class Table:
    """One workload's rows: label, column, items/s, quality note (or the error that stopped it)."""

    def __init__(self, title: str, unit: str):
        self.title, self.unit, self.rows = title, unit, []

    def add(self, label: str, column: str, rate: float | None, note: str = ""):
        self.rows.append((label, column, rate, note))

    def rate(self, column: str) -> float | None:
        return next((r for _, c, r, _ in self.rows if c == column and r is not None), None)

    def print(self):
        base = self.rate(BASELINE)
        print(f"\n{self.title}")
        for label, _, rate, note in self.rows:
            if rate is None:
                print(f"  {label:<32} {'–':>9}  {'':>17}  {note}")
                continue
            ratio = f"{rate / base:5.2f}x lightpipe" if base else ""
            print(f"  {label:<32} {fmt(rate):>9}  {ratio:>17}  {note}")
        sys.stdout.flush()


def run_engine(table: Table, label: str, column: str, measure):
    """`measure()` → (items/s, note); a rival that can't be imported or fails becomes a "–" row
    with the reason, and the others still run."""
    try:
        rate, note = measure()
    except ImportError as e:
        table.add(label, column, None, f"not installed ({e.name or e}): pip install -e '.[bench]'")
    except Exception as e:  # noqa: BLE001 — one engine failing must not hide the others' numbers
        traceback.print_exc()
        table.add(label, column, None, f"failed: {type(e).__name__}: {str(e)[:120]}")
    else:
        table.add(label, column, rate, note)
    release()


def length_sorted_batches(encodings, batch_size: int):
    """Index lists of `batch_size` encodings, longest first (sentence-transformers' order: less padding)."""
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids), reverse=True)
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def padded(encodings, rows) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 arrays of the encodings `rows`, right-padded with 0."""
    width = max(len(encodings[i].ids) for i in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for r, i in enumerate(rows):
        n = len(encodings[i].ids)
        ids[r, :n], mask[r, :n] = encodings[i].ids, 1
    return ids, mask


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit-length means of each row's real tokens (sentence-transformers' MiniLM: mean + normalize)."""
    summed = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return summed / np.linalg.norm(summed, axis=1, keepdims=True)


def fast_tokenizer(folder: Path, max_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def ort_engines(exported: Path, int8: Path):
    return [("ONNX Runtime fp32", "ORT fp32", exported), ("ONNX Runtime int8", "ORT int8", int8)]


CT2_ENGINES = [("CTranslate2 fp32", "CT2 fp32", "float32"), ("CTranslate2 int8", "CT2 int8", "int8")]
# lightpipe's rows: (column, quantize, backend)
LIGHTPIPE_ENGINES = [("lightpipe fp32", None, "torch"), ("lightpipe int8", "int8", "torch"),
                     ("lightpipe ct2 fp32", None, "ctranslate2"), ("lightpipe ct2 int8", "int8", "ctranslate2")]


# ---- embeddings: the real all-MiniLM-L6-v2 ----

def embeddings(args) -> Table:
    from lightpipe import pipeline
    from lightpipe.hub import resolve

    folder = resolve(MINILM)
    texts, bs = sentences(args.sentences), args.batch_size
    max_length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    tok = fast_tokenizer(folder, max_length)
    mean_tokens = np.mean([len(e.ids) for e in tok.encode_batch(texts)])
    table = Table(f"all-MiniLM-L6-v2 embeddings, {len(texts)} pydoc sentences (mean {mean_tokens:.0f} tokens), "
                  f"batch {bs}, {args.threads} threads", "sent/s")
    ref = {}

    def timed(run):
        run(texts[:bs])  # warm-up
        seconds, out = best_time(lambda: run(texts), args.repeat)
        out = np.asarray(out, dtype=np.float32)
        if "st" not in ref:
            ref["st"] = out
        cos = (out * ref["st"]).sum(1)
        return len(texts) / seconds, f"cosine to ST fp32 {cos.mean():.4f} (min {cos.min():.4f})"

    def st():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device="cpu")
        return timed(lambda t: model.encode(t, batch_size=bs, convert_to_numpy=True))

    run_engine(table, "sentence-transformers fp32", "reference", st)
    for column, quantize, backend in LIGHTPIPE_ENGINES:
        def lp(quantize=quantize, backend=backend):
            ours = pipeline("feature-extraction", model=folder, quantize=quantize, backend=backend)
            return timed(lambda t: ours.embed(t, batch_size=bs).numpy())
        run_engine(table, column, column, lp)

    def ort_run(session):
        feeds = {i.name for i in session.get_inputs()}

        def run(t):
            encodings = tok.encode_batch(t)
            out = np.empty((len(t), 384), np.float32)
            for rows in length_sorted_batches(encodings, bs):
                ids, mask = padded(encodings, rows)
                feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
                hidden = session.run(["last_hidden_state"], {k: v for k, v in feed.items() if k in feeds})[0]
                out[rows] = mean_pool(hidden, mask)
            return out
        return run

    def ort_folders():
        exported = rivals.onnx_export(folder, CACHE / "minilm-onnx", "feature-extraction")
        fused = rivals.onnx_fuse_encoder(exported, CACHE / "minilm-onnx-fused", 12, 384)
        return fused, rivals.onnx_int8(fused, CACHE / "minilm-onnx-fused-int8")

    for label, column, which in [("ONNX Runtime fp32", "ORT fp32", 0), ("ONNX Runtime int8", "ORT int8", 1)]:
        run_engine(table, label, column,
                   lambda which=which: timed(ort_run(rivals.ort_session(ort_folders()[which], args.threads))))

    def ct2(compute_type):
        import ctranslate2

        encoder = ctranslate2.Encoder(str(rivals.ct2_convert(folder, CACHE / "minilm-ct2")),
                                      compute_type=compute_type, **rivals.ct2_threads(args.threads))

        def run(t):
            encodings = tok.encode_batch(t)
            out = np.empty((len(t), 384), np.float32)
            for rows in length_sorted_batches(encodings, bs):
                _, mask = padded(encodings, rows)
                hidden = rivals.as_array(encoder.forward_batch([encodings[i].ids for i in rows]).last_hidden_state)
                out[rows] = mean_pool(hidden, mask)
            return out
        return timed(run)

    for label, column, compute_type in CT2_ENGINES:
        run_engine(table, label, column, lambda c=compute_type: ct2(c))
    return table


# ---- classification: DistilBERT-base size, sst-2-shaped ----

def sst2_checkpoint() -> Path:
    from encoders import distilbert_size

    return rivals.cached(CACHE / "distilbert-sst2", lambda tmp: distilbert_size("sequence", ["NEGATIVE", "POSITIVE"], tmp))


def p_positive(results) -> np.ndarray:
    """P(POSITIVE) from text-classification results ({"label", "score"} of the top label)."""
    return np.array([r["score"] if r["label"] == "POSITIVE" else 1 - r["score"] for r in results])


def softmax_positive(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z[:, 1] / z.sum(1)


def classification(args) -> Table:
    import transformers

    from lightpipe import pipeline

    folder = sst2_checkpoint()
    texts, bs = sentences(args.sentences), args.batch_size
    tok = fast_tokenizer(folder, 512)
    table = Table(f"text-classification, DistilBERT-base size (random weights, sst-2 head), {len(texts)} sentences, "
                  f"batch {bs}, {args.threads} threads", "sent/s")
    ref = {}

    def timed(run):
        run(texts[:bs])
        seconds, p = best_time(lambda: run(texts), args.repeat)
        ref.setdefault("p", p)
        same = int(((p > 0.5) == (ref["p"] > 0.5)).sum())
        return len(texts) / seconds, f"max |Δp| to transformers {np.abs(p - ref['p']).max():.1e}, labels same {same}/{len(texts)}"

    def theirs():
        clf = transformers.pipeline("text-classification", model=str(folder))
        return timed(lambda t: p_positive(clf(t, batch_size=bs)))

    run_engine(table, "transformers pipeline fp32", "reference", theirs)
    for column, quantize, backend in LIGHTPIPE_ENGINES:
        def lp(quantize=quantize, backend=backend):
            ours = pipeline("text-classification", model=folder, quantize=quantize, backend=backend)
            return timed(lambda t: p_positive(ours(t, batch_size=bs)))
        run_engine(table, column, column, lp)

    def ort(which):
        exported = rivals.onnx_export(folder, CACHE / "distilbert-sst2-onnx", "text-classification")
        fused = rivals.onnx_fuse_encoder(exported, CACHE / "distilbert-sst2-onnx-fused", 12, 768)
        session = rivals.ort_session([fused, rivals.onnx_int8(fused, CACHE / "distilbert-sst2-onnx-fused-int8")][which],
                                     args.threads)

        def run(t):
            encodings = tok.encode_batch(t)
            p = np.empty(len(t))
            for rows in length_sorted_batches(encodings, bs):
                ids, mask = padded(encodings, rows)
                p[rows] = softmax_positive(session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0])
            return p
        return timed(run)

    run_engine(table, "ONNX Runtime fp32", "ORT fp32", lambda: ort(0))
    run_engine(table, "ONNX Runtime int8", "ORT int8", lambda: ort(1))

    def ct2(compute_type):
        import ctranslate2
        from safetensors.numpy import load_file

        encoder = ctranslate2.Encoder(str(rivals.ct2_convert(folder, CACHE / "distilbert-sst2-ct2")),
                                      compute_type=compute_type, **rivals.ct2_threads(args.threads))
        head = load_file(str(folder / "model.safetensors"))
        w1, b1 = head["pre_classifier.weight"].T.copy(), head["pre_classifier.bias"]
        w2, b2 = head["classifier.weight"].T.copy(), head["classifier.bias"]

        def run(t):
            encodings = tok.encode_batch(t)
            p = np.empty(len(t))
            for rows in length_sorted_batches(encodings, bs):
                hidden = rivals.as_array(encoder.forward_batch([encodings[i].ids for i in rows]).last_hidden_state)
                cls = np.maximum(hidden[:, 0] @ w1 + b1, 0)  # DistilBertForSequenceClassification's head
                p[rows] = softmax_positive(cls @ w2 + b2)
            return p
        return timed(run)

    for label, column, compute_type in CT2_ENGINES:
        run_engine(table, label, column, lambda c=compute_type: ct2(c))
    return table


# ---- decoding: GPT-2-small size ----

def decoding_prompts() -> tuple[list[str], list[str]]:
    """The decoding rows' inputs: one prompt, and 8 prompts sent together."""
    return ["In this course, we will teach you how to"], [s for s in sentences(40) if 20 < len(s) < 120][:8]


def decoding(args) -> list[Table]:
    """Two tables (one prompt, 8 prompts) from one load of each engine."""
    import transformers

    from generation import gpt2_small
    from lightpipe import pipeline

    folder = rivals.cached(CACHE / "gpt2-small", gpt2_small)
    n = args.new_tokens
    prompt, prompts = decoding_prompts()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    one = Table(f"GPT-2-small size (random weights), 1 prompt, greedy, {n} new tokens, {args.threads} threads", "tok/s")
    eight = Table(f"GPT-2-small size, {len(prompts)} prompts together, greedy, {n} new tokens each", "tok/s")
    # teacher-forced top-1: every engine's argmax over lightpipe fp32's 8 continuations
    state = {"reference": None, "argmax": {}}

    def measure(column, generate, logits):
        """Time `generate(prompts, n) -> new ids per prompt` on both rows; record top-1 choices."""
        generate(prompt, 4)
        seconds1, out1 = best_time(lambda: generate(prompt, n), args.repeat)
        seconds8, out8 = best_time(lambda: generate(prompts, n), args.repeat)
        for out in (out1, out8):
            if any(len(ids) != n for ids in out):
                raise RuntimeError(f"generated {[len(ids) for ids in out]} tokens, not {n} each")
        if state["reference"] is None:  # lightpipe fp32: the sequences everyone is scored on
            state["reference"] = [(len(tok(p)["input_ids"]), tok(p)["input_ids"] + ids) for p, ids in zip(prompts, out8)]
            state["continuations"] = out8
        with torch.inference_mode():
            state["argmax"][column] = np.concatenate([np.asarray(logits(seq))[start - 1:-1].argmax(-1)
                                                      for start, seq in state["reference"]])
        versus = column.replace("int8", "fp32") if column.endswith("int8") else BASELINE
        agree = (state["argmax"][column] == state["argmax"][versus]).mean() if versus in state["argmax"] else math.nan
        same = sum(a == b for a, b in zip(out8, state["continuations"]))
        note = f"top-1 vs {versus} {100 * agree:.1f}%"
        return (n / seconds1, note), (n * len(prompts) / seconds8, f"{note}, greedy = lightpipe fp32's {same}/{len(prompts)}")

    def engine(label, column, load):
        """One load, two rows; a failure marks both."""
        rows = {}

        def first():
            rows["eight"] = None
            (rate1, note), rows["eight"] = measure(column, *load())
            return rate1, note

        run_engine(one, label, column, first)
        if rows.get("eight"):
            eight.add(label, column, *rows["eight"])
        else:
            eight.add(label, column, None, one.rows[-1][3])

    def lp(quantize, backend="torch"):
        ours = pipeline("text-generation", model=folder, quantize=quantize, backend=backend)

        def generate(p, k):
            out = ours(p, do_sample=False, max_new_tokens=k, min_new_tokens=k, return_tensors=True, batch_size=len(p))
            return [r[0]["generated_token_ids"][-k:].tolist() for r in out]
        if backend == "ctranslate2":  # the torch layers are gone: the logits are CTranslate2's
            engine = ours.model.generation_backend.engine
            return generate, lambda seq: rivals.as_array(engine.forward_batch([[f"<{t}>" for t in seq]]))[0]
        return generate, lambda seq: ours.model(torch.tensor([seq]))[0].float().numpy()

    def theirs():
        gen = transformers.pipeline("text-generation", model=str(folder), tokenizer=tok)

        def generate(p, k):
            out = gen(p, do_sample=False, max_new_tokens=k, min_new_tokens=k, return_tensors=True, batch_size=len(p),
                      pad_token_id=tok.eos_token_id)
            return [torch.as_tensor(r[0]["generated_token_ids"])[-k:].tolist() for r in out]
        return generate, lambda seq: gen.model(torch.tensor([seq])).logits[0].numpy()

    def ort(which):
        from optimum.onnxruntime import ORTModelForCausalLM

        exported = rivals.onnx_export(folder, CACHE / "gpt2-small-onnx", "text-generation-with-past")
        path = [exported, rivals.onnx_int8(exported, CACHE / "gpt2-small-onnx-int8")][which]
        model = ORTModelForCausalLM.from_pretrained(path, session_options=rivals.ort_options(args.threads), use_cache=True)

        def generate(p, k):
            enc = tok(p, return_tensors="pt", padding=True)
            out = model.generate(**enc, do_sample=False, max_new_tokens=k, min_new_tokens=k, pad_token_id=tok.eos_token_id)
            return out[:, -k:].tolist()
        return generate, lambda seq: model(input_ids=torch.tensor([seq]),
                                           attention_mask=torch.ones(1, len(seq), dtype=torch.long)).logits[0].numpy()

    def ct2(compute_type):
        import ctranslate2

        generator = ctranslate2.Generator(str(rivals.ct2_convert(folder, CACHE / "gpt2-small-ct2")),
                                          compute_type=compute_type, **rivals.ct2_threads(args.threads))
        return (lambda p, k: rivals.ct2_generate(generator, tok, p, k),
                lambda seq: rivals.as_array(generator.forward_batch([seq]))[0])

    # lightpipe fp32 first: its continuations are what the agreements are measured on
    engine("lightpipe fp32", "lightpipe fp32", lambda: lp(None))
    engine("transformers pipeline fp32", "reference", theirs)
    engine("lightpipe int8", "lightpipe int8", lambda: lp("int8"))
    engine("lightpipe ct2 fp32", "lightpipe ct2 fp32", lambda: lp(None, "ctranslate2"))
    engine("lightpipe ct2 int8", "lightpipe ct2 int8", lambda: lp("int8", "ctranslate2"))
    engine("ONNX Runtime fp32 (optimum)", "ORT fp32", lambda: ort(0))
    engine("ONNX Runtime int8 (optimum)", "ORT int8", lambda: ort(1))
    for label, column, compute_type in CT2_ENGINES:
        engine(label, column, lambda c=compute_type: ct2(c))
    return [one, eight]


# ---- summarization: distilbart-cnn-12-6 size ----

def summarization(args) -> Table:
    import transformers

    from lightpipe import pipeline
    from summarization import GENERATION, checkpoint, documents

    folder = checkpoint("distilbart")
    docs = documents(args.docs)
    settings = dict(GENERATION)
    if args.summary_length:
        settings.update(max_length=args.summary_length, min_length=min(settings["min_length"], args.summary_length // 2))
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    lengths = [len(ids) for ids in tok(docs)["input_ids"]]
    table = Table(f"summarization, distilbart-cnn-12-6 size (random weights), {len(docs)} documents of {min(lengths)}-"
                  f"{max(lengths)} tokens in one batch, {settings['num_beams']} beams, max_length {settings['max_length']}",
                  "docs/s")
    special = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    ref = {}

    def content(ids) -> list[int]:
        """A summary's ids without the start, <s>, </s> and padding (every engine frames them its own way)."""
        ids = [int(i) for i in ids]
        while ids and ids[0] in special:
            ids.pop(0)
        while ids and ids[-1] in special:
            ids.pop()
        return ids

    def timed(run):
        run(docs[:1])  # warm-up: one document, the same settings
        seconds, out = best_time(lambda: [content(ids) for ids in run(docs)], 1)
        ref.setdefault("ids", out)
        same = sum(a == b for a, b in zip(out, ref["ids"]))
        shared = np.mean([next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) / len(b)
                          for a, b in zip(out, ref["ids"])])
        mean = np.mean([len(ids) for ids in out])
        # random weights mostly pick ids past the small tokenizer's vocabulary: compare ids, not text
        return len(docs) / seconds, (f"same ids as transformers {same}/{len(docs)} (first {100 * shared:.0f}% shared), "
                                     f"mean {mean:.0f} tokens")

    def theirs():
        summarize = transformers.pipeline("summarization", model=str(folder))
        return timed(lambda d: [r["summary_token_ids"] for r in summarize(d, batch_size=len(d), return_tensors=True,
                                                                          **settings)])

    run_engine(table, "transformers pipeline fp32", "reference", theirs)
    for column, quantize, backend in LIGHTPIPE_ENGINES:
        def lp(quantize=quantize, backend=backend):
            ours = pipeline("summarization", model=folder, quantize=quantize, backend=backend)
            return timed(lambda d: [r["summary_token_ids"] for r in ours(d, batch_size=len(d), return_tensors=True,
                                                                         **settings)])
        run_engine(table, column, column, lp)

    def ort(which):
        from optimum.onnxruntime import ORTModelForSeq2SeqLM

        exported = rivals.onnx_export(folder, CACHE / "distilbart-onnx", "text2text-generation-with-past")
        path = [exported, rivals.onnx_int8(exported, CACHE / "distilbart-onnx-int8")][which]
        model = ORTModelForSeq2SeqLM.from_pretrained(path, session_options=rivals.ort_options(args.threads),
                                                     use_cache=True, use_merged=False)

        def run(d):
            enc = tok(d, return_tensors="pt", padding=True, truncation=True)
            return model.generate(**enc, **settings).tolist()
        return timed(run)

    run_engine(table, "ONNX Runtime fp32 (optimum)", "ORT fp32", lambda: ort(0))
    run_engine(table, "ONNX Runtime int8 (optimum)", "ORT int8", lambda: ort(1))

    def ct2(compute_type):
        import ctranslate2

        converted = rivals.ct2_convert(folder, CACHE / "distilbart-ct2")
        translator = ctranslate2.Translator(str(converted), compute_type=compute_type, **rivals.ct2_threads(args.threads))
        ids = rivals.ct2_vocabulary(converted)

        return timed(lambda d: rivals.ct2_summarize(translator, tok, ids, d, settings))

    for label, column, compute_type in CT2_ENGINES:
        run_engine(table, label, column, lambda c=compute_type: ct2(c))
    return table


# ---- the table ----

def markdown(tables: list[Table]) -> str:
    def cell(table, *columns):
        rates = [table.rate(c) for c in columns]
        if all(r is None for r in rates):
            return "–"
        return " / ".join("–" if r is None else fmt(r) for r in rates)

    lines = ["| workload | sentence-transformers / transformers | lightpipe fp32 | lightpipe int8 | "
             "lightpipe ct2 fp32 / int8 | ONNX Runtime fp32 / int8 | CTranslate2 fp32 / int8 |",
             "|---|---|---|---|---|---|---|"]
    for t in tables:
        lines.append(f"| {t.title}, {t.unit} | {cell(t, 'reference')} | {cell(t, 'lightpipe fp32')} | "
                     f"{cell(t, 'lightpipe int8')} | {cell(t, 'lightpipe ct2 fp32', 'lightpipe ct2 int8')} | "
                     f"{cell(t, 'ORT fp32', 'ORT int8')} | {cell(t, 'CT2 fp32', 'CT2 int8')} |")
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ["torch", "transformers", "sentence-transformers", "onnxruntime", "optimum-onnx", "ctranslate2"]:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, help="workloads to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check every column runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sentences", type=int, help="embeddings and classification inputs (default 400)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, help="decoding: new tokens per prompt (default 64)")
    parser.add_argument("--docs", type=int, help="summarization: documents (default 4)")
    parser.add_argument("--summary-length", type=int, help="summarization: max_length override (default: the checkpoint's 142)")
    parser.add_argument("--repeat", type=int, help="best of how many timed runs (default 3; summarization always 1)")
    parser.add_argument("--rebuild", action="store_true", help=f"drop the cached checkpoints and conversions in {CACHE}")
    args = parser.parse_args()
    quick = args.quick
    args.sentences = args.sentences or (96 if quick else 400)
    args.new_tokens = args.new_tokens or (16 if quick else 64)
    args.docs = args.docs or (1 if quick else 4)
    args.summary_length = args.summary_length or (30 if quick else None)
    args.repeat = args.repeat or (1 if quick else 3)
    only = args.only or WORKLOADS

    if args.rebuild:
        shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
    warnings.simplefilter("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"{versions()}\n{args.threads} threads each; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          f"{' (--quick: a check that the columns run, not a measurement)' if quick else ''}")

    tables = []
    for name, workload in [("embeddings", embeddings), ("classification", classification), ("decoding", decoding),
                           ("summarization", summarization)]:
        if name in only:
            result = workload(args)
            for table in result if isinstance(result, list) else [result]:
                table.print()
                tables.append(table)
    if tables:
        load = os.getloadavg()
        print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n\n{markdown(tables)}")
    if "cold-start" in only:
        from cold_start import cold_start

        cold_start(sst2_checkpoint(), repeat=1 if quick else 3)


if __name__ == "__main__":
    main()
