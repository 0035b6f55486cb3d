"""Serving benchmark: requests/s and p50/p99 latency under concurrency.

Default run: embeddings with dynamic batching vs one request at a time (--max-batch-tokens 1:
every batch is a single request). `--threads-compare`: a bounded loopback load test of 64
concurrent clients on classification and embeddings, with torch's default intra-op threads
(one per core; also with OMP_WAIT_POLICY=PASSIVE), lightpipe's `serve` default (all cores but
one) and one thread — the oversubscription measurement behind `--threads`' default.

Each configuration runs `lightpipe serve` in its own process; the load comes from this one
(asyncio + httpx), one sentence per request, so the server's worker sees what real clients
send. Prints a markdown table, with the machine's load average (other processes' load skews
every number).

    python benchmarks/serve.py                       # all-MiniLM-L6-v2 (embedded), 32 clients
    python benchmarks/serve.py --requests 1000 --concurrency 64 --route /v1/embeddings
    python benchmarks/serve.py --threads-compare     # 64 clients, classification + embeddings, 4 thread settings
    python benchmarks/serve.py --device cuda --concurrency 128 --requests 4096 --client-procs 6
    OMP_NUM_THREADS=2 python benchmarks/serve.py --server-cpus 0,1 --client-procs 2   # a 2-core server on a bigger box
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import subprocess
import sys
import time

import httpx

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def sentences(n: int) -> list[str]:
    """Real English sentences of varied length (Python's bundled docs), no download."""
    from pydoc_data.topics import topics

    out = []
    for text in topics.values():
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
            if 4 <= len(s.split()) <= 40:
                out.append(s.strip())
            if len(out) >= n:
                return out
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, max_batch_tokens: int, model: str | None = None, extra: tuple = (),
                 env: dict | None = None, port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    cmd = [sys.executable, "-m", "lightpipe.cli", "serve", "--model", model or args.model, "--port", str(port),
           "--max-batch-tokens", str(max_batch_tokens), "--max-concurrent-requests", "4096", "--log-level", "warning",
           *extra]
    if args.device:
        cmd += ["--device", args.device]
    if args.server_cpus:  # pin the server (e.g. "0,1") so the load generator doesn't share its cores
        cmd = ["taskset", "-c", args.server_cpus, *cmd]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **(env or {})})
    return proc, wait_healthy(proc, f"http://127.0.0.1:{port}")


def wait_healthy(proc: subprocess.Popen, url: str, why=lambda: "", seconds: float = 120) -> str:
    """`url` once its /health answers 200; RuntimeError (with `why()`, e.g. the server's last
    line of output) if the process exits first or it isn't healthy within `seconds` (then killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} {why()}".strip())
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the server was not healthy within {seconds:.0f} s {why()}".strip())


def body(route: str, model: str, text: str) -> dict:
    if route.endswith("/v1/embeddings"):
        return {"model": model, "input": text, "encoding_format": "float"}
    return {"inputs": text}


async def load(url: str, route: str, model: str, texts: list[str], concurrency: int) -> tuple[list[float], float, int]:
    """Send every text once, `concurrency` requests in flight; latencies (s), wall time, errors."""
    latencies: list[float] = []
    errors = 0
    queue = iter(texts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker():
            nonlocal errors
            for text in queue:
                start = time.perf_counter()
                try:
                    r = await client.post(route, json=body(route, model, text))
                except httpx.TransportError:  # a connection reset or timed out: an error, not the end of the run
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, wall, errors


def client_process(job) -> tuple[list[float], float, float, int]:
    """One load-generating process: its share of the texts and clients, started at `start_at`
    (the same moment in every process), so that one Python process's HTTP client is not the
    bottleneck."""
    url, route, model, texts, concurrency, start_at = job
    time.sleep(max(0.0, start_at - time.time()))
    begin = time.time()
    latencies, _, errors = asyncio.run(load(url, route, model, texts, concurrency))
    return latencies, begin, time.time(), errors


def load_processes(url: str, args, texts: list[str], concurrency: int) -> tuple[list[float], float, int]:
    procs = max(1, min(args.client_procs, concurrency))
    if procs == 1:
        return asyncio.run(load(url, args.route, args.model, texts, concurrency))
    import multiprocessing

    start_at = time.time() + 1.0
    jobs = [(url, args.route, args.model, texts[i::procs], concurrency // procs + (i < concurrency % procs), start_at)
            for i in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(client_process, jobs)
    latencies = [x for part in parts for x in part[0]]
    wall = max(p[2] for p in parts) - min(p[1] for p in parts)
    return latencies, wall, sum(p[3] for p in parts)


def batch_totals(url: str) -> tuple[float, float]:
    """(inputs, batches) run so far, from /metrics."""
    text = httpx.get(url + "/metrics").text
    total = sum(float(m) for m in re.findall(r"^lightpipe_batch_inputs_sum\S* (\S+)$", text, re.M))
    count = sum(float(m) for m in re.findall(r"^lightpipe_batch_inputs_count\S* (\S+)$", text, re.M))
    return total, count


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_config(label: str, args, max_batch_tokens: int, concurrency: int, texts: list[str]) -> dict:
    proc, url = start_server(args, max_batch_tokens)
    try:
        asyncio.run(load(url, args.route, args.model, texts[:args.warmup], concurrency))  # warm-up
        inputs0, batches0 = batch_totals(url)
        latencies, wall, errors = load_processes(url, args, texts, concurrency)
        inputs1, batches1 = batch_totals(url)
        batch = (inputs1 - inputs0) / max(batches1 - batches0, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"config": label, "concurrency": concurrency, "requests": len(texts), "errors": errors,
            "rps": len(texts) / wall, "p50": percentile(latencies, 0.5) * 1000, "p99": percentile(latencies, 0.99) * 1000,
            "batch": batch}


# -- --threads-compare: 64 clients, classification and embeddings, four thread settings ----------

def classification_checkpoint(folder) -> str:
    """all-MiniLM-L6-v2's encoder with a seeded random 2-label head: a real-sized BERT classifier
    built offline (the embedded model is the only checkpoint a fresh machine has)."""
    import shutil
    import warnings

    import torch
    import transformers

    from lightpipe.hub import resolve

    source = resolve(MINILM)
    folder = os.path.join(folder, "minilm-sst2")
    if not os.path.isdir(folder):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = transformers.BertForSequenceClassification.from_pretrained(
                source, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
        model.save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if os.path.exists(os.path.join(source, name)):
                shutil.copy(os.path.join(source, name), folder)
    return folder


def threads_compare(args, texts: list[str]) -> None:
    import tempfile

    import torch

    from lightpipe.server.threads import usable_cores

    cores = usable_cores()
    every = str(torch.get_num_threads())
    settings = [(f"torch's default ({every}, one per core)", ["--threads", every], {}),
                (f"torch's default ({every}), OMP_WAIT_POLICY=PASSIVE", ["--threads", every],
                 {"OMP_WAIT_POLICY": "PASSIVE"}),  # OpenMP threads sleep between regions instead of spinning
                ("lightpipe's default (all cores but one)", [], {}),
                ("1 thread", ["--threads", "1"], {})]
    folder = classification_checkpoint(args.work_dir or tempfile.mkdtemp(prefix="lightpipe-bench-"))
    tasks = [("classification", f"cls={folder}", "/models/cls", "cls"),
             ("embeddings", MINILM, "/v1/embeddings", MINILM)]
    rows = []
    for task, spec, route, name in tasks:
        for label, extra, env in settings:
            proc, url = start_server(args, args.max_batch_tokens, spec, extra, env)
            try:
                asyncio.run(load(url, route, name, texts[:args.warmup], args.concurrency))  # warm-up
                before = os.getloadavg()[0]
                latencies, wall, errors = asyncio.run(load(url, route, name, texts, args.concurrency))
                after = os.getloadavg()[0]
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            rows.append({"task": task, "threads": label, "requests": len(texts), "errors": errors,
                         "rps": len(texts) / wall, "p50": percentile(latencies, 0.5) * 1000,
                         "p99": percentile(latencies, 0.99) * 1000, "load": f"{before:.1f} → {after:.1f}"})
            r = rows[-1]
            print(f"{task}, {label}: {r['rps']:.1f} req/s, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, "
                  f"load {r['load']}", file=sys.stderr)
    print(f"\n{args.concurrency} concurrent clients, one sentence per request, {len(texts)} requests per row; "
          f"{cores} usable cores ({platform.machine()}), torch {torch.__version__}\n")
    print("| task | torch intra-op threads | req/s | p50 ms | p99 ms | errors | load average (1 min) |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['task']} | {r['threads']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['errors']} | "
              f"{r['load']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MINILM)
    parser.add_argument("--route", default="/embed", choices=["/embed", "/v1/embeddings", "/"])
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--device", help="the server's --device (default: cpu)")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="load-generating processes (one Python HTTP client tops out at a few hundred req/s)")
    parser.add_argument("--skip-single", action="store_true", help="skip the single-client reference run")
    parser.add_argument("--server-cpus", help="run the server under taskset -c CPUS, e.g. 0,1")
    parser.add_argument("--threads-compare", action="store_true",
                        help="64 clients on classification and embeddings with four intra-op thread settings")
    parser.add_argument("--work-dir", help="--threads-compare: where to keep the classification checkpoint it builds")
    args = parser.parse_args()
    if args.threads_compare and "--concurrency" not in sys.argv:
        args.concurrency = 64

    texts = sentences(args.requests)
    texts = (texts * (args.requests // max(len(texts), 1) + 1))[:args.requests]
    if args.threads_compare:
        threads_compare(args, texts)
        return
    rows = [
        run_config("one request at a time (--max-batch-tokens 1)", args, 1, args.concurrency, texts),
        run_config(f"dynamic batching (--max-batch-tokens {args.max_batch_tokens})", args, args.max_batch_tokens,
                   args.concurrency, texts),
    ]
    if not args.skip_single:
        rows.append(run_config("single client, for reference", args, args.max_batch_tokens, 1,
                               texts[:max(64, args.requests // 8)]))
    import torch

    where = args.device or "cpu"
    if args.server_cpus:
        where += f", server pinned to CPUs {args.server_cpus}"
    print(f"\n{args.model}, {args.route}, one sentence per request; server on {where}; {os.cpu_count()} CPU cores "
          f"({platform.machine()}), torch {torch.__version__}\n")
    print("| configuration | clients | requests | req/s | p50 ms | p99 ms | mean batch | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['concurrency']} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.1f} | "
              f"{r['p99']:.1f} | {r['batch']:.1f} | {r['errors']} |")
    base, batched = rows[0], rows[1]
    print(f"\ndynamic batching: {batched['rps'] / base['rps']:.2f}x the requests/s, p99 "
          f"{base['p99'] / batched['p99']:.2f}x lower, at {args.concurrency} concurrent clients")


if __name__ == "__main__":
    main()
