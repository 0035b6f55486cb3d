"""Serving generation: streamed tokens/s, time to first token and inter-token latency under
concurrency, on a GPT-2-small-size checkpoint with random weights (speed doesn't depend on
weight values) served by `lightpipe serve` on loopback.

Rows (every request streamed from /v1/completions, with a mix of max_tokens 16/32/64 and
temperatures 0/0.7/1.0, seeded):
- one at a time: the mix sent by one client, one request after the other — the baseline;
- 1, 4, 16, 32 concurrent clients, each sending --requests-per-client requests back to back;
- 16 clients streaming while one non-streamed /v1/completions request with 32 prompts runs:
  the streams' time to first token (issue 12's target: p99 under 2 s) and the batch's latency.
Each row: aggregate generated tokens/s (the ratio to the one-at-a-time row beside it; target:
16 clients >= 4x), TTFT and inter-token latency p50/p99, requests, wall time.

`transformers serve` (transformers' own server) is tried on the same folder with the same
requests through its /v1/chat/completions (it has no completions route): with
--continuous_batching, else (when that fails its first request: in 4.57.6 it sizes its paged
cache from GPU memory, so it fails on a CPU) in its default mode. Where it can't run at all, one
line says why and its column is "–".

    python benchmarks/serve_generation.py                 # the issue's settings
    python benchmarks/serve_generation.py --quick         # every path, a 2-layer model, about a minute
    python benchmarks/serve_generation.py --clients 1 4 16 32 --requests-per-client 3 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import free_port, percentile, sentences, start_server, wait_healthy  # noqa: E402

NAME = "gpt2-random"  # the name lightpipe serves the checkpoint under
MAX_TOKENS = (16, 32, 64)
TEMPERATURES = (0.0, 0.7, 1.0)


# -- the request mix ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    prompt: str
    max_tokens: int
    temperature: float
    seed: int | None  # sampled requests carry one, so a run can be repeated


def request_mix(prompts: list[str], n: int, max_tokens=MAX_TOKENS, temperatures=TEMPERATURES) -> list[Job]:
    """n requests cycling through every (max_tokens, temperature) pair: 9 consecutive requests
    hold each pair once, so any 9 in a row have the same mean length."""
    jobs = []
    for i in range(n):
        t = temperatures[(i // len(max_tokens)) % len(temperatures)]
        jobs.append(Job(prompts[i % len(prompts)], max_tokens[i % len(max_tokens)], t, i if t > 0 else None))
    return jobs


def per_client(jobs: list[Job], clients: int) -> list[list[Job]]:
    """Client c sends jobs c, c + clients, ... (with the mix's period of 3 lengths, every client
    gets each length in turn)."""
    return [jobs[c::clients] for c in range(clients)]


def completions_request(job: Job, model: str) -> tuple[str, dict]:
    body = {"model": model, "prompt": job.prompt, "max_tokens": job.max_tokens, "temperature": job.temperature,
            "stream": True, "stream_options": {"include_usage": True}}
    if job.seed is not None:
        body["seed"] = job.seed
    return "/v1/completions", body


def chat_request(job: Job, model: str) -> tuple[str, dict]:
    """The same request for a chat-only server (transformers serve); the checkpoint's template
    is the message's text alone, so the prompt's tokens are the same."""
    route, body = completions_request(job, model)
    body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
    return "/v1/chat/completions", body


# -- one streamed request, as the client saw it ------------------------------------------------

DONE = "[DONE]"


def sse_data(line: str):
    """One line of a server-sent event stream: its JSON payload (a dict), DONE for `data: [DONE]`,
    None for anything else (blank separators, comments, other fields)."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == DONE:
        return DONE
    return json.loads(payload)


def chunk_text(event: dict) -> str:
    """The text a chunk carries: a completion's `text` or a chat chunk's `delta.content`."""
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return choice["text"] or ""
    return (choice.get("delta") or {}).get("content") or ""


@dataclass
class Stream:
    max_tokens: int
    start: float  # when the request was sent (perf_counter)
    end: float
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk with text
    usage_tokens: int | None = None  # completion_tokens of the final usage chunk
    finish_reason: str | None = None
    done: bool = False  # `data: [DONE]` arrived
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]

    def tokens(self) -> tuple[int, str]:
        """(generated tokens, where the count comes from: "usage", "no usage" or "usage out of
        range"). A chunk holds at least one token and no request makes more than max_tokens, so a
        usage count outside [chunks, max_tokens] is wrong (a server that re-tokenizes the text, for
        one): then, as without a usage chunk, the text chunks are counted, at most max_tokens
        (transformers serve's default mode sends a lone space before the first word: one chunk
        more than its tokens)."""
        chunks = len(self.chunk_times)
        if self.usage_tokens is None:
            return min(chunks, self.max_tokens), "no usage"
        if chunks <= self.usage_tokens <= self.max_tokens:
            return self.usage_tokens, "usage"
        return chunks, "usage out of range"


def read_stream(max_tokens: int, start: float, end: float, timed_lines: list[tuple[float, str]],
                error: str | None = None) -> Stream:
    """A Stream from the lines of one response, each with its arrival time."""
    s = Stream(max_tokens, start, end, error=error)
    for t, line in timed_lines:
        event = sse_data(line)
        if event is None:
            continue
        if event == DONE:
            s.done = True
            continue
        if "error" in event:
            s.error = s.error or f"error event: {json.dumps(event['error'])[:200]}"
            continue
        if chunk_text(event):
            s.chunk_times.append(t)
        for choice in event.get("choices") or []:
            s.finish_reason = choice.get("finish_reason") or s.finish_reason
        usage = event.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            s.usage_tokens = usage["completion_tokens"]
    if s.error is None and not (s.done or s.finish_reason):  # transformers serve sends no [DONE]
        s.error = "the stream ended without a finish_reason or data: [DONE]"
    return s


async def send_stream(client: httpx.AsyncClient, route: str, body: dict, max_tokens: int, timeout: float) -> Stream:
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    error = None
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", route, json=body) as r:
                if r.status_code != 200:
                    error = f"HTTP {r.status_code}: {(await r.aread())[:200].decode(errors='replace')}"
                else:
                    async for line in r.aiter_lines():
                        lines.append((time.perf_counter(), line))
    except TimeoutError:
        error = f"no end within {timeout:g} s"
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        error = f"{type(e).__name__}: {e}"
    try:
        return read_stream(max_tokens, start, time.perf_counter(), lines, error)
    except json.JSONDecodeError as e:
        return Stream(max_tokens, start, time.perf_counter(), error=f"bad event: {e}")


def client_for(url: str, clients: int, timeout: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout, connect=10), limits=limits)


async def run_clients(url: str, make_request, jobs: list[list[Job]], timeout: float) -> tuple[list[Stream], float]:
    """Each list of jobs sent back to back by its own client, all clients at once."""
    async with client_for(url, len(jobs), timeout) as client:
        async def one_client(mine: list[Job]) -> list[Stream]:
            out = []
            for job in mine:
                route, body = make_request(job)
                out.append(await send_stream(client, route, body, job.max_tokens, timeout))
            return out

        start = time.perf_counter()
        parts = await asyncio.gather(*(one_client(mine) for mine in jobs))
        wall = time.perf_counter() - start
    return [s for part in parts for s in part], wall


@dataclass
class Batch:
    latency: float = 0.0
    tokens: int = 0
    error: str | None = None


async def run_under_batch(url: str, make_request, model: str, batch_prompts: list[str], batch_tokens: int,
                          jobs: list[Job], clients: int, timeout: float, delay: float = 0.5):
    """One non-streamed /v1/completions request with every batch prompt (greedy, batch_tokens
    each) and, from `delay` seconds after it is sent, `clients` streaming clients sending jobs back
    to back until it has answered. Returns the streams started while it ran, every stream, the
    batch, and the wall time."""
    async with client_for(url, clients, timeout) as client:
        finished = asyncio.Event()
        batch = Batch()
        batch_end = [float("inf")]

        async def big_request():
            start = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    r = await client.post("/v1/completions", json={
                        "model": model, "prompt": batch_prompts, "max_tokens": batch_tokens, "temperature": 0})
                if r.status_code != 200:
                    batch.error = f"HTTP {r.status_code}: {r.text[:200]}"
                else:
                    batch.tokens = r.json()["usage"]["completion_tokens"]
            except TimeoutError:
                batch.error = f"no answer within {timeout:g} s"
            except (httpx.HTTPError, ValueError, KeyError) as e:
                batch.error = f"{type(e).__name__}: {e}"
            batch_end[0] = time.perf_counter()
            batch.latency = batch_end[0] - start
            finished.set()

        async def streamer(c: int) -> list[Stream]:
            await asyncio.sleep(delay)
            out, i = [], 0
            while True:  # at least one request each, then more while the batch runs
                job = jobs[(c + i * clients) % len(jobs)]
                route, body = make_request(job)
                out.append(await send_stream(client, route, body, job.max_tokens, timeout))
                i += 1
                if finished.is_set():
                    return out

        start = time.perf_counter()
        parts = await asyncio.gather(big_request(), *(streamer(c) for c in range(clients)))
        wall = time.perf_counter() - start
    streams = [s for part in parts[1:] for s in part]
    during = [s for s in streams if s.start < batch_end[0]]
    return during, streams, batch, wall


# -- rows and the table ------------------------------------------------------------------------

def summarize(label: str, clients: int, streams: list[Stream], wall: float, extra_tokens: int = 0,
              ttft_of: list[Stream] | None = None) -> dict:
    """A row: aggregate tokens/s over the wall time (plus `extra_tokens` made by the same server
    meanwhile), TTFT over `ttft_of` (default: every stream) and inter-token gaps, in ms."""
    ok = [s for s in streams if s.error is None]
    counted = [s.tokens() for s in ok]
    tokens = sum(n for n, _ in counted)
    chunks = sum(len(s.chunk_times) for s in ok)
    ttfts = [s.ttft for s in (ok if ttft_of is None else [s for s in ttft_of if s.error is None])
             if s.ttft is not None]
    gaps = [g for s in ok for g in s.gaps]

    def ms(values, q):
        return percentile(values, q) * 1000 if values else None

    return {"label": label, "clients": clients, "requests": len(streams), "errors": len(streams) - len(ok),
            "first_error": next((s.error for s in streams if s.error), None),
            "tokens": tokens + extra_tokens, "chunks": chunks,
            "usage_missing": sum(how == "no usage" for _, how in counted),
            "usage_rejected": sum(how == "usage out of range" for _, how in counted),
            "wall": wall, "tok_s": (tokens + extra_tokens) / wall if wall > 0 else 0.0,
            "ttft_p50": ms(ttfts, 0.5), "ttft_p99": ms(ttfts, 0.99), "itl_p50": ms(gaps, 0.5), "itl_p99": ms(gaps, 0.99)}


def ratio(row: dict | None, base: dict | None) -> float | None:
    if not row or not base or not base["tok_s"]:
        return None
    return row["tok_s"] / base["tok_s"]


TTFT_TARGET_MS = 2000
THROUGHPUT_TARGET = (16, 4.0)  # 16 clients: at least 4x the one-at-a-time tokens/s


def target(row: dict, base: dict | None) -> str:
    if row.get("kind") == "clients" and row["clients"] == THROUGHPUT_TARGET[0]:
        r = ratio(row, base)
        met = r is not None and r >= THROUGHPUT_TARGET[1]
        return f"≥ {THROUGHPUT_TARGET[1]:g}x: {'met' if met else 'missed'}"
    if row.get("kind") == "batch":
        met = row["ttft_p99"] is not None and row["ttft_p99"] < TTFT_TARGET_MS
        return f"TTFT p99 < {TTFT_TARGET_MS / 1000:g} s: {'met' if met else 'missed'}"
    return ""


def cell(value, fmt: str = ".0f") -> str:
    return "–" if value is None else format(value, fmt)


def theirs_cell(row: dict | None, base: dict | None) -> str:
    if row is None or row["errors"] == row["requests"]:
        return "–"
    r = ratio(row, base)
    return f"{row['tok_s']:.1f} ({cell(r, '.2f')}x), TTFT p99 {cell(row['ttft_p99'])} ms"


def markdown_table(rows: list[dict], theirs: dict[str, dict | None]) -> str:
    """The README table: one line per row, its ratio to the first (one-at-a-time) row, the
    target it is measured against, and transformers serve's figures for the same label."""
    base = rows[0] if rows else None
    their_base = theirs.get(base["label"]) if base else None
    lines = ["| scenario | clients | requests | tokens | wall s | tok/s | × one at a time | TTFT p50 ms | TTFT p99 ms "
             "| ITL p50 ms | ITL p99 ms | errors | target | transformers serve: tok/s (×), TTFT p99 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall']:.1f} | "
                     f"{r['tok_s']:.1f} | {cell(ratio(r, base), '.2f')}x | {cell(r['ttft_p50'])} | "
                     f"{cell(r['ttft_p99'])} | {cell(r['itl_p50'])} | {cell(r['itl_p99'])} | {r['errors']} | "
                     f"{target(r, base)} | {theirs_cell(theirs.get(r['label']), their_base)} |")
    return "\n".join(lines)


# -- the checkpoint ----------------------------------------------------------------------------

def streamable_checkpoint(folder: Path, quick: bool) -> Path:
    """gpt2_small() (generation.py) with a vocabulary that covers the model's 50257 ids.

    Its tokenizer is trained to 2000 tokens while the model, GPT-2-sized, samples from 50257; an id
    the tokenizer doesn't have decodes to nothing, so most random tokens would stream no text. Each
    missing id becomes a word of its own (" w2000", ...), as every id of a real GPT-2 vocabulary is
    some text: then each generated token streams as one chunk and the timings are per token."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from generation import gpt2_small

    folder = gpt2_small(folder, **({"n_layer": 2} if quick else {}))
    size = json.loads((folder / "config.json").read_text())["vocab_size"]
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in tokenizer.get("added_tokens", [])}
    for i in range(size):
        if i not in taken:
            word = f"Ġw{i}"  # byte-level: "Ġ" is the space
            assert word not in vocab, word
            vocab[word] = i
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    plain = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    plain.update({w: i for w, i in vocab.items() if w not in plain})
    (folder / "vocab.json").write_text(json.dumps(plain, ensure_ascii=False), encoding="utf-8")
    return folder


def add_plain_chat_template(folder: Path) -> None:
    """For transformers serve, which only takes chats: a template that renders the message's
    text alone, so a chat is tokenized as the completion prompt is."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["chat_template"] = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


# -- servers -----------------------------------------------------------------------------------

def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def start_transformers_serve(python: str, folder: Path, port: int, threads: int, log: Path,
                             continuous: bool) -> tuple[subprocess.Popen, str]:
    """`transformers serve` (with `--continuous_batching` if `continuous`) on `folder`, run by
    `python`; RuntimeError saying why if it doesn't become healthy (its last line of output)."""
    cmd = [python, "-m", "transformers.commands.transformers_cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--force_model", str(folder), "--log_level", "warning"]
    if continuous:
        cmd.append("--continuous_batching")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, wait_healthy(proc, f"http://127.0.0.1:{port}", why=lambda: f"({last_line(log)})")


def compare_transformers(args, folder: Path, threads: int, prompts: list[str], tmp: Path) -> tuple[dict, list[str]]:
    """transformers serve's rows by label, and what to say about them: with
    --continuous_batching when a first request goes through, else in its default mode (a
    generate() call per request, on threads of their own)."""
    add_plain_chat_template(folder)
    notes = []
    for continuous in (True, False):
        mode = "--continuous_batching" if continuous else "its default mode"
        print(f"transformers serve, {mode} (same checkpoint):", file=sys.stderr)
        log = tmp / f"transformers-{'cb' if continuous else 'plain'}.log"
        try:
            proc, url = start_transformers_serve(args.transformers_python, folder, free_port(), threads, log, continuous)
        except RuntimeError as e:
            return {}, notes + [f"transformers serve did not run: {e}"]
        try:
            make_request = lambda job: chat_request(job, str(folder))  # noqa: E731
            probe, _ = asyncio.run(run_clients(url, make_request, [request_mix(prompts, 1, max_tokens=(4,))],
                                               min(args.timeout, 120)))
            if probe[0].error:
                notes.append(f"transformers serve {mode} failed its first request ({probe[0].error}; its log: "
                             f"{last_line(log)})")
                continue
            rows = {row["label"]: row for row in scenarios(url, make_request, args, prompts, batch=False)}
        finally:
            stop(proc)
        if all(r["errors"] == r["requests"] for r in rows.values()):
            first = next(iter(rows.values()))
            return {}, notes + [f"every transformers serve request failed: {first['first_error']} (its log: "
                                f"{last_line(log)})"]
        return rows, notes + [
            f"transformers serve ran in {mode}: /v1/chat/completions with the same prompts, max_tokens and "
            "temperatures (a template that renders the message's text alone, so the prompt tokens are the same); "
            "it has no route for a list of prompts, so no batch row; it sends no usage, so its tokens are its text "
            "chunks, at most max_tokens a request (its streamer sends text a word at a time: a token with no leading "
            "space joins the next chunk, so its count can be a few % low)"
            + ("; its continuous batching takes the sampling settings of the first request it serves for every "
               "request" if continuous else "")]
    return {}, notes


def scenarios(url: str, make_request, args, prompts: list[str], batch: bool) -> list[dict]:
    """Every row against one server: warm-up, one at a time, each --clients count, and (with
    `batch`) the streams under a batch request."""
    warm = request_mix(prompts, 3, max_tokens=(4,))
    asyncio.run(run_clients(url, make_request, [warm[:1], warm[1:2], warm[2:]], args.timeout))
    rows = []
    jobs = request_mix(prompts, args.baseline_requests, args.max_tokens)
    streams, wall = asyncio.run(run_clients(url, make_request, [jobs], args.timeout))
    rows.append(summarize("one at a time", 1, streams, wall) | {"kind": "baseline"})
    report(rows[-1])
    for clients in args.clients:
        jobs = request_mix(prompts, clients * args.requests_per_client, args.max_tokens)
        streams, wall = asyncio.run(run_clients(url, make_request, per_client(jobs, clients), args.timeout))
        label = f"{clients} concurrent client{'s' if clients > 1 else ''}"
        rows.append(summarize(label, clients, streams, wall) | {"kind": "clients"})
        report(rows[-1])
    if batch:
        jobs = request_mix(prompts, 4 * args.batch_clients * args.requests_per_client, args.max_tokens)
        during, streams, big, wall = asyncio.run(run_under_batch(
            url, make_request, NAME, prompts[:args.batch_prompts], args.batch_tokens, jobs, args.batch_clients,
            args.timeout))
        row = summarize(f"{args.batch_clients} clients + a {args.batch_prompts}-prompt request", args.batch_clients,
                        streams, wall, extra_tokens=big.tokens, ttft_of=during)
        row.update(kind="batch", batch=big, during=len(during))
        rows.append(row)
        report(row)
        print(f"  the {args.batch_prompts}-prompt request ({args.batch_tokens} tokens each, greedy): "
              + (f"failed: {big.error}" if big.error else f"{big.latency:.1f} s, {big.tokens} tokens") +
              f"; {len(during)} streams started while it ran", file=sys.stderr)
    return rows


def report(row: dict) -> None:
    print(f"  {row['label']}: {row['tok_s']:.1f} tok/s, {row['requests']} requests, {row['tokens']} tokens in "
          f"{row['wall']:.1f} s, TTFT p50/p99 {cell(row['ttft_p50'])}/{cell(row['ttft_p99'])} ms, ITL p50/p99 "
          f"{cell(row['itl_p50'])}/{cell(row['itl_p99'])} ms, {row['errors']} errors"
          + (f" (first: {row['first_error']})" if row["first_error"] else ""), file=sys.stderr)


def token_count_note(rows: list[dict]) -> str:
    chunks = sum(r["chunks"] for r in rows)
    rejected = sum(r["usage_rejected"] for r in rows)
    missing = sum(r["usage_missing"] for r in rows)
    requests = sum(r["requests"] - r["errors"] for r in rows)
    tokens = sum(r["tokens"] - (r["batch"].tokens if r.get("batch") else 0) for r in rows)
    note = (f"tokens: {tokens} streamed tokens in {chunks} text chunks over {requests} requests; "
            f"{requests - rejected - missing} requests counted from their usage chunk's completion_tokens")
    if rejected:
        note += (f"; {rejected} requests from their text chunks, as their completion_tokens was outside [text chunks, "
                 f"max_tokens] (impossible for a count of generated tokens)")
    if missing:
        note += f"; {missing} requests from their text chunks, having no usage chunk"
    return note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="check every path: a 2-layer model, 1 and 4 clients, short requests (about a minute)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--baseline-requests", type=int, default=9,
                        help="requests of the one-at-a-time row (9: each max_tokens x temperature pair once)")
    parser.add_argument("--batch-prompts", type=int, default=32, help="prompts of the non-streamed request")
    parser.add_argument("--batch-tokens", type=int, default=32, help="max_tokens of the non-streamed request")
    parser.add_argument("--batch-clients", type=int, default=16, help="streaming clients while it runs")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: serve's own default)")
    parser.add_argument("--port", type=int, help="lightpipe's port (default: a free one); transformers serve: a free one")
    parser.add_argument("--device", help="the server's --device (default: cpu)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take, end to end")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers serve comparison")
    parser.add_argument("--transformers-python", default=sys.executable,
                        help="the Python that runs transformers serve (default: this one), e.g. a virtual environment "
                             "that has what its serve command needs (fastapi, accelerate)")
    args = parser.parse_args()
    args.max_tokens = MAX_TOKENS
    if args.quick:
        args.max_tokens = (4, 8, 16)
        args.clients = [1, 4] if "--clients" not in sys.argv else args.clients
        args.requests_per_client, args.baseline_requests = 2, 3
        args.batch_prompts, args.batch_tokens, args.batch_clients = 8, 8, 4
    for name in ("requests_per_client", "baseline_requests", "batch_prompts", "batch_tokens", "batch_clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(c < 1 for c in args.clients):
        parser.error("--clients must be at least 1")

    import torch

    from lightpipe.server.threads import default_threads, usable_cores

    threads = args.threads or default_threads()
    prompts = sentences(max(args.batch_prompts, 64))
    args.server_cpus = None  # start_server's field (serve.py's --server-cpus); args.model is set below
    load_before = os.getloadavg()
    theirs: dict[str, dict | None] = {}
    notes = ["transformers serve: skipped (--no-transformers)"] if args.no_transformers else []
    with tempfile.TemporaryDirectory(prefix="lp-bench-serve-gen-") as tmp:
        folder = streamable_checkpoint(Path(tmp) / "gpt2", args.quick)
        args.model = f"{NAME}={folder}"
        print(f"lightpipe serve ({'2-layer' if args.quick else 'GPT-2 small'} random checkpoint, {threads} threads):",
              file=sys.stderr)
        proc, url = start_server(args, 16384, extra=["--threads", str(threads)], port=args.port)
        try:
            rows = scenarios(url, lambda job: completions_request(job, NAME), args, prompts, batch=True)
        finally:
            stop(proc)
        if not args.no_transformers:
            theirs, notes = compare_transformers(args, folder, threads, prompts, Path(tmp))
    load_after = os.getloadavg()

    print(f"\n{'GPT-2 small (124M)' if not args.quick else 'GPT-2 width, 2 layers (--quick)'}, random weights, "
          f"served by `lightpipe serve --threads {threads}` on 127.0.0.1; streamed /v1/completions, max_tokens "
          f"cycling {'/'.join(map(str, args.max_tokens))}, temperature 0/0.7/1.0 (seeded); "
          f"{args.requests_per_client} requests per client back to back")
    print(f"machine: {os.cpu_count()} cores ({usable_cores()} usable, {platform.machine()}), torch {torch.__version__}, "
          f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print(markdown_table(rows, theirs))
    print()
    print(f"- {token_count_note(rows)}.")
    batch_row = next((r for r in rows if r.get("kind") == "batch"), None)
    if batch_row:
        big = batch_row["batch"]
        print(f"- the {args.batch_prompts}-prompt request ({args.batch_tokens} tokens each, greedy): "
              + (f"failed: {big.error}" if big.error else f"{big.latency:.1f} s, {big.tokens} tokens") +
              f"; its TTFT figures are those of the {batch_row['during']} streams started while it ran, its "
              f"tok/s counts the batch's tokens too.")
    for note in notes:
        print(f"- {note}.")


if __name__ == "__main__":
    main()
