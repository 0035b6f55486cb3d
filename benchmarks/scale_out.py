"""Scale-out throughput: `lightpipe run --input FILE` (JSON lines, Parquet) and Ray Data with
1 and 2 actors, sentiment-analysis over the same N real sentences (Python's own docs).

    python benchmarks/scale_out.py [--rows 2000] [--size distilbert|tiny] [--skip-ray]

The model is a DistilBERT-size checkpoint with random weights (speed doesn't depend on weight
values) and MiniLM's (= distilbert-base-uncased's) vocabulary; `--size tiny` uses a 2-layer one.
File runs time `run_file` (what the CLI calls) with the pipeline already loaded; Ray runs time
read_parquet → map_batches(PipelinePredictor) → write_parquet, actor start-up (each actor
imports torch and loads the model) included, on a local runtime with all of this machine's CPUs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import sentences  # noqa: E402


def build_checkpoint(folder: Path, size: str) -> Path:
    import torch
    import transformers

    from lightpipe.hub import resolve

    # MiniLM's vocabulary is distilbert-base-uncased's; DistilBERT's tokenizer class gives no token types
    tokenizer = transformers.DistilBertTokenizerFast.from_pretrained(str(resolve("sentence-transformers/all-MiniLM-L6-v2")))
    dims = {} if size == "distilbert" else {"dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 128}
    config = transformers.DistilBertConfig(vocab_size=tokenizer.vocab_size, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                           label2id={"NEGATIVE": 0, "POSITIVE": 1}, **dims)
    torch.manual_seed(0)
    transformers.DistilBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_corpus(folder: Path, texts: list[str]) -> tuple[Path, Path]:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl, parquet = folder / "reviews.jsonl", folder / "reviews.parquet"
    jsonl.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), parquet)
    return jsonl, parquet


def report(name: str, threads, rows: int, seconds: float, note: str = "") -> None:
    print(f"| {name:<34} | {threads!s:>7} | {rows:>6} | {seconds:8.1f} | {rows / seconds:8.1f} | {note}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--size", choices=["distilbert", "tiny"], default="distilbert")
    parser.add_argument("--batch-size", type=int, default=256, help="Ray map_batches batch_size")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()

    import torch

    from lightpipe import pipeline
    from lightpipe.fileio import run_file

    work = Path(tempfile.mkdtemp(prefix="lp-scale-out-"))
    model = build_checkpoint(work / "model", args.size)
    texts = sentences(args.rows)
    jsonl, parquet = write_corpus(work, texts)
    cpus = os.cpu_count()
    options = {"truncation": True}
    print(f"{platform.processor() or platform.machine()}, {cpus} CPUs, torch {torch.__version__}, "
          f"{args.size} checkpoint, {len(texts)} rows; load average at start {os.getloadavg()[0]:.1f}")
    print("| run                                | threads |   rows |  seconds |   rows/s | note")
    print("|------------------------------------|---------|--------|----------|----------|-----")

    pipe = pipeline("sentiment-analysis", model=model)
    pipe(texts[:256], **options)  # warm-up
    start = time.perf_counter()
    pipe(texts, **options)
    report("pipeline(list) in memory", torch.get_num_threads(), len(texts), time.perf_counter() - start, "baseline")
    for name, source, target in [("run --input .jsonl → .jsonl", jsonl, work / "scored.jsonl"),
                                 ("run --input .parquet → .parquet", parquet, work / "scored.parquet")]:
        start = time.perf_counter()
        run_file(pipe, source, target, options=options, progress=False)
        report(name, torch.get_num_threads(), len(texts), time.perf_counter() - start)
    del pipe

    if args.skip_ray:
        return
    import ray

    from lightpipe.integrations.ray import PipelinePredictor

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        for concurrency in (1, 2):
            # leave one CPU for Ray Data's read/write tasks, else the actors take every CPU and
            # the reads never get scheduled
            per_actor = max(0.25, (cpus - 1) / concurrency)

            def run(rows: int, out: Path) -> float:
                start = time.perf_counter()
                (ray.data.read_parquet(str(parquet)).limit(rows)
                 .repartition(4 * concurrency)  # one small file is one block: split it so every actor gets work
                 .map_batches(PipelinePredictor, fn_constructor_kwargs={"task": "sentiment-analysis", "model": str(model),
                                                                        "options": options},
                              concurrency=concurrency, num_cpus=per_actor, batch_size=args.batch_size)
                 .write_parquet(str(out)))
                return time.perf_counter() - start

            overhead = run(8 * concurrency, work / f"ray-warm-{concurrency}")  # start-up + a few rows
            seconds = run(len(texts), work / f"ray-{concurrency}")
            steady = f"; {len(texts) / (seconds - overhead):.1f} rows/s after it" if seconds > 2 * overhead else ""
            report(f"Ray Data, concurrency={concurrency}", f"{concurrency}x{max(1, int(per_actor))}", len(texts), seconds,
                   f"incl. ~{overhead:.1f} s start-up{steady}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
