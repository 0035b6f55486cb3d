"""Where an encoder pipeline's float32 time goes (issue 15): the rows of benchmarks/rivals.py,
profiled with PyTorch's own tools. Findings: benchmarks/PROFILE-encoders.md.

    python benchmarks/profile_encoders.py [--only embeddings|classification] [--threads 2]

For each workload (the real all-MiniLM-L6-v2 embedding 400 pydoc sentences in batches of 32;
a DistilBERT-base-size sst-2 classifier, random weights, same sentences and batches):
  - phases, by time.perf_counter: tokenization, model forward, everything else (batching,
    collation, pooling / softmax, Python);
  - padding: tokens computed (batch x longest) vs real tokens;
  - torch.profiler (record_shapes) over one full call: self CPU time by op, top ops by shape;
  - aten ops dispatched per encoder layer (per-op overhead at small shapes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from generation import best_of  # noqa: E402
from tiny import sentences  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
CACHE = Path(tempfile.gettempdir()) / "lightpipe-bench-rivals"  # shared with rivals.py


class ForwardTimer:
    """Wraps pipe.model's forward to add up the time spent inside it."""

    def __init__(self, model):
        self.model, self.seconds, self.calls = model, 0.0, 0
        self.inner = model.forward

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = self.inner(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            return out
        self.model.forward = timed
        return self

    def __exit__(self, *exc):
        del self.model.forward  # the class's method again


def padding(pipe, rows, batch_size):
    """(real tokens, computed tokens) of the pipeline's own length-sorted batching (forward_rows)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids), reverse=True)
    real, computed, start = sum(len(r.ids) for r in rows), 0, 0
    while start < len(order):
        batch = pipe.next_batch(rows, order[start:start + batch_size])
        computed += len(rows[batch[0]].ids) * len(batch)
        start += len(batch)
    return real, computed


def ops_per_layer(layer, x, mask):
    """aten ops dispatched by one layer's forward, counted by name."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        layer(x, mask)
    return counts


def report(title, pipe, run, rows, batch_size, first_layer, hidden_size):
    print(f"\n## {title}\n")
    run()  # warm-up
    with ForwardTimer(pipe.model) as timer:  # the forward's share of this same call
        total = best_of(run, repeat=1)
    forward = timer.seconds
    texts = sentences(400)
    tokenize = best_of(lambda: pipe.tokenizer.encode_batch(texts), repeat=3)
    real, computed = padding(pipe, rows, batch_size)
    print(f"call {total * 1e3:.0f} ms ({len(texts) / total:.0f} sent/s); model forward {forward * 1e3:.0f} ms "
          f"({forward / total:.0%}, {timer.calls} batches); tokenization {tokenize * 1e3:.1f} ms "
          f"({tokenize / total:.1%}); the rest {(total - forward - tokenize) * 1e3:.0f} ms "
          f"({(total - forward - tokenize) / total:.0%})")
    print(f"padding: {real} real tokens, {computed} computed ({computed / real - 1:.1%} waste)")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12))

    x = torch.randn(batch_size, 28, hidden_size)
    mask = torch.zeros(batch_size, 1, 1, 28)
    mask[-1, ..., 20:] = torch.finfo(torch.float32).min
    with torch.inference_mode():
        counts = ops_per_layer(first_layer, x, mask)
    print(f"aten ops per layer (batch {batch_size} x 28 tokens, padded): {sum(counts.values())}: {dict(counts)}")


def embeddings(args):
    from lightpipe import pipeline
    from lightpipe.hub import resolve

    pipe = pipeline("feature-extraction", model=resolve(MINILM))
    texts = sentences(400)
    rows = pipe.sentence_model.encode(texts, truncation=True)
    report("all-MiniLM-L6-v2 embeddings, 400 sentences, batch 32", pipe,
           lambda: pipe.embed(texts, batch_size=32), rows, 32, pipe.model.encoder.layer[0], 384)


def classification(args):
    from encoders import distilbert_size
    from lightpipe import pipeline

    folder = CACHE / "distilbert-sst2"
    if not folder.is_dir():
        folder = distilbert_size("sequence", ["NEGATIVE", "POSITIVE"])
    pipe = pipeline("text-classification", model=folder)
    texts = sentences(400)
    rows = pipe.encode(texts)
    report("DistilBERT-base-size text-classification, 400 sentences, batch 32", pipe,
           lambda: pipe(texts, batch_size=32), rows, 32, pipe.model.distilbert.transformer.layer[0], 768)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["embeddings", "classification"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in ("embeddings", "classification"):
        if args.only in (None, name):
            globals()[name](args)


if __name__ == "__main__":
    main()
