"""The server against clients that make mistakes or mean harm, on loopback: hostile bodies on
every route (always a 4xx JSON answer in the route's error shape, never a 5xx, and the server
serves on), limits checked before any allocation, slow senders (a connection, never an
in-flight slot; header and body deadlines), a client that leaves (its queued job dropped),
and SIGTERM with a stream open (exit within --shutdown-timeout)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from lightpipe import pipeline
from lightpipe.server import create_app, start_in_thread
from test_server import MINILM, SST2, Gated, decoder_checkpoint, seq2seq_checkpoint, wait_healthy
from tiny import causal_lm_checkpoint, encoder_checkpoint, llama3_tokenizer

pytestmark = pytest.mark.server

http = httpx.Client(timeout=60)  # patient: the test machine may be busy

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"cls": encoder_checkpoint(mk("cls"), "bert", "sequence-classification", **SST2),
                "gpt": decoder_checkpoint(mk("gpt")),
                "sum": seq2seq_checkpoint(mk("sum")),
                "llama": causal_lm_checkpoint(mk("llama"), "llama", llama3_tokenizer(mk("llama"))),}


@pytest.fixture(scope="module")
def server(folders):
    specs = [MINILM, f"cls=text-classification={folders['cls']}", f"gpt={folders['gpt']}",
             f"sum=summarization={folders['sum']}", f"llama={folders['llama']}"]
    app = create_app(specs, max_body_bytes=100_000, max_total_tokens=32)  # default lengths cut short: a quick test
    with start_in_thread(app) as running:
        running.app = app
        wait_healthy(running.url)
        yield running


# -- hostile bodies on every route ------------------------------------------------------------

GOOD = {  # a request each route answers 200
    "/": {"inputs": "hello"},
    "/models/gpt": {"inputs": "hello", "parameters": {"max_new_tokens": 2}},
    "/models/cls": {"inputs": "hello"},
    "/models/sum": {"inputs": "hello", "parameters": {"max_new_tokens": 2}},
    "/v1/embeddings": {"model": MINILM, "input": "hello"},
    "/v1/completions": {"model": "gpt", "prompt": "hello", "max_tokens": 2},
    "/v1/chat/completions": {"model": "gpt", "messages": CHAT, "max_tokens": 2},
    "/models/gpt/v1/chat/completions": {"messages": CHAT, "max_tokens": 2},
    "/embed": {"inputs": "hello"},
    "/embed_all": {"inputs": "hello"},
    "/predict": {"inputs": "hello"},
    "/rerank": {"query": "a question", "texts": ["an answer"]},
    "/tokenize": {"inputs": "hello"},
    "/decode": {"ids": [1, 2]},
}
DEEP = b'{"inputs": ' + b"[" * 40_000 + b"]" * 40_000 + b"}"
RAW = [b"", b"null", b"[]", b'"text"', b"{", b"\xff\xfe\x00", b'{"inputs": NaN}', b'{"inputs": 1e999}',
       b'{"inputs": "x", "parameters": {"top_k": Infinity}}', DEEP, b'{"a": ' * 50 + b"1" + b"}" * 50,
       b'{"inputs": "x", "max_tokens": ' + b"9" * 4000 + b"}"]
VALUES = [None, -1, 10**4000, 2**70, 1.5, True, "", [], [None], [[[["deep"]]]], {"a": {"b": 1}}]
KNOB_VALUES = [-1, 0, 10**4000, 2**70, "x", [], {"a": {}}]  # a generation knob's worst cases
GENERATION_PARAMS = ["max_new_tokens", "max_tokens", "max_completion_tokens", "n", "num_beams", "num_return_sequences",
                     "best_of", "temperature", "top_k", "top_p", "seed", "stop", "stop_sequence", "eos_token_id",
                     "stream_options", "repetition_penalty", "max_length", "min_new_tokens", "do_sample", "details",
                     "logprobs", "top_logprobs", "top_n_tokens", "chat_template_kwargs", "truncation", "return_full_text",
                     "generate_parameters", "echo"]


def hostile_requests():
    for path, good in GOOD.items():
        for raw in RAW:
            yield path, raw
        for key in good:  # every field of a good request, replaced by something wrong
            for value in VALUES:
                yield path, {**good, key: value}
        if path in ("/models/gpt", "/models/sum", "/v1/chat/completions"):  # TGI, text2text, OpenAI: every knob
            for param in GENERATION_PARAMS:
                for value in KNOB_VALUES:
                    if "parameters" in good:
                        yield path, {**good, "parameters": {**good["parameters"], param: value}}
                    else:
                        yield path, {**good, param: value}


def post_raw(url: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(url, content=content, headers={"content-type": "application/json"}, timeout=60)


def test_hostile_bodies_on_every_route_are_4xx_and_the_server_serves_on(server):
    """Every route, every good request's field replaced by a wrong value, every generation knob
    set wrong, and bodies that aren't plain JSON: answered 4xx (or 200 when the value happens to
    be acceptable) with the route family's error JSON — never a 5xx, which clients retry."""
    requests = list(hostile_requests())
    assert len(requests) > 800

    def check(job):
        path, body = job
        r = post_raw(server.url + path, body)
        problem = None
        if r.status_code >= 500:
            problem = f"{r.status_code}: {r.text[:300]}"
        elif r.status_code >= 400:
            error = r.json().get("error")
            openai_route = "/v1/" in path
            if openai_route and not (isinstance(error, dict) and error.get("message") and "type" in error):
                problem = f"not OpenAI's error shape: {r.text[:200]}"
            if not openai_route and not (isinstance(error, str) and r.json().get("error_type")):
                problem = f"not HF's error shape: {r.text[:200]}"
            if "Exception raised from" in r.text or "Traceback" in r.text:
                problem = f"a stack trace: {r.text[:200]}"
        return None if problem is None else (path, str(body)[:120], problem)

    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(check, requests) if p]
    assert not problems, f"{len(problems)} of {len(requests)}: {problems[:5]}"
    assert http.get(server.url + "/health").status_code == 200
    for path, good in GOOD.items():
        assert post_raw(server.url + path, good).status_code == 200, path


@pytest.mark.parametrize("path, body, status, says", [
    ("/models/gpt", {"inputs": "x", "parameters": {"stop_sequence": ""}}, 422, "stop_sequence must be a non-empty"),
    ("/models/gpt", {"inputs": "x", "parameters": {"eos_token_id": []}}, 422, "eos_token_id"),
    ("/v1/chat/completions", {"model": "gpt", "messages": CHAT, "stream": True, "stream_options": "x"}, 422,
     "stream_options must be an object"),
    ("/models/gpt", {"inputs": "x", "parameters": {"max_new_tokens": 10**9}}, 422, "--max-total-tokens"),
    ("/v1/completions", {"model": "gpt", "prompt": "x", "max_tokens": 10**3999}, 422, "beyond 64-bit integers"),
    ("/v1/completions", {"model": "llama", "prompt": "x", "max_tokens": 5_000_000}, 422, "--max-total-tokens"),
    ("/models/gpt", {"inputs": "x", "parameters": {"num_beams": 64}}, 422, "num_beams=64 is more than the 8"),
    ("/models/gpt", {"inputs": "x", "parameters": {"do_sample": True, "num_return_sequences": 9}}, 422,
     "num_return_sequences=9"),
    ("/models/sum", {"inputs": "x", "parameters": {"num_beams": 20}}, 422, "--max-sequences"),
    ("/", b'{"inputs": ' + b"[" * 40 + b"]" * 40 + b"}", 422, "nested deeper than 32"),
    ("/v1/chat/completions", b'{"model": "gpt", "messages": ' + b"[" * 40_000 + b"]" * 40_000 + b"}", 422,
     "nested deeper"),
])
def test_the_issues_500s_are_4xx_with_a_clear_message(server, path, body, status, says):
    r = post_raw(server.url + path, body)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"] if "/v1/" in path else r.json()["error"]
    assert says in message


def test_limits_come_before_any_allocation(server, folders):
    """max_tokens=5,000,000 on a Llama-type model (rotary positions: no table to stop at) is
    refused at once, by the server and by the pipeline itself, without allocating the cache."""
    start = time.perf_counter()
    r = post_raw(server.url + "/v1/completions", {"model": "llama", "prompt": "x", "max_tokens": 5_000_000})
    assert r.status_code == 422 and time.perf_counter() - start < 5
    assert r.json()["error"]["code"] == "context_length_exceeded" and r.json()["error"]["param"] == "max_tokens"
    pipe = pipeline("text-generation", model=folders["llama"])
    with pytest.raises(ValueError, match=r"max_new_tokens=1000000000000 needs about .* GiB of key/value cache"):
        pipe("x", max_new_tokens=10**12)


def prompt_of(pipe, tokens: int) -> str:
    """A prompt the pipeline encodes to exactly `tokens` tokens (BOS included)."""
    for word in ("the", "a", "is", "x"):
        for k in range(1, 4 * tokens):
            text = " ".join([word] * k)
            n = len(pipe.tokenizer.encode(text).ids)
            if n == tokens:
                return text
            if n > tokens:
                break
    raise AssertionError(f"no prompt of {tokens} tokens")


def test_input_and_total_token_limits(folders):
    """--max-input-tokens and --max-total-tokens (never past the model's 128 positions): a length
    the client gave that doesn't fit is 422 naming it; the default length is cut to fit."""
    pipe = pipeline("text-generation", model=folders["llama"])
    app = create_app([f"llama={folders['llama']}"], max_input_tokens=40, max_total_tokens=1000)
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        over = post_raw(srv.url + "/models/llama", {"inputs": prompt_of(pipe, 41)})
        assert over.status_code == 422 and over.json()["error"] == (
            "the prompt has 41 tokens, more than the 40 this model accepts (--max-input-tokens)")
        chat = post_raw(srv.url + "/v1/completions", {"model": "llama", "prompt": prompt_of(pipe, 41)})
        assert chat.json()["error"]["param"] == "prompt"
        prompt = prompt_of(pipe, 40)
        given = post_raw(srv.url + "/models/llama", {"inputs": prompt, "parameters": {"max_new_tokens": 89}})
        assert given.status_code == 422
        assert given.json()["error"] == ("max_new_tokens=89: the prompt's 40 tokens + 89 new tokens is more than the "
                                         "128 tokens in all this model allows (--max-total-tokens)")
        fits = post_raw(srv.url + "/models/llama", {"inputs": prompt, "parameters": {"max_new_tokens": 88}})
        assert fits.status_code == 200
        default = post_raw(srv.url + "/v1/chat/completions", {"model": "llama", "messages": CHAT, "temperature": 0})
        assert default.status_code == 200  # the pipeline's 256 new tokens, cut to the room left
    from lightpipe.server import ServerConfig, limits

    options = {"do_sample": False}  # no length: the pipeline's default (256 new tokens) applies ...
    assert limits.check(pipe, ServerConfig(), [prompt], options) == [40]
    assert options == {"do_sample": False, "max_new_tokens": 128 - 40}  # ... cut to the room the context leaves
    options = {"max_new_tokens": 100}  # the route's own default (OpenAI completions' 16 is one) is cut too
    limits.check(pipe, ServerConfig(), [prompt], options, defaults={"max_new_tokens"})
    assert options == {"max_new_tokens": 88}


# -- slow clients and deadlines ----------------------------------------------------------------

def half_request(url: str, path: str = "/embed", declared: int = 200, sent: bytes = b'{"inputs": "he') -> socket.socket:
    """A raw connection that sends a request's headers and part of its body, then waits."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    return s


def test_slow_bodies_hold_connections_not_inference_slots(folders):
    """40 connections sending headers and half a body, with 10 in-flight slots: inference still
    answers 200 (a slot is taken once a body is whole), /health too; then each slow sender gets
    408 at --body-timeout."""
    app = create_app([MINILM], max_concurrent_requests=10, body_timeout=3.0)
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        slow = [half_request(srv.url) for _ in range(40)]
        time.sleep(0.3)
        for _ in range(3):
            r = http.post(srv.url + "/embed", json={"inputs": "hello"}, timeout=30)
            assert r.status_code == 200, r.text
        assert http.get(srv.url + "/health").status_code == 200
        assert app.state.lightpipe.in_flight == 0
        time.sleep(3.5)
        answers = []
        for s in slow:
            s.settimeout(5)
            answers.append(s.recv(4096))
            s.close()
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:2]
        assert b"--body-timeout" in answers[0]


def test_slow_headers_are_cut_at_the_header_timeout(folders):
    app = create_app([MINILM], header_timeout=1.0)
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        host, port = srv.url.removeprefix("http://").split(":")
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Le")  # and nothing more
        s.settimeout(10)
        start = time.monotonic()
        assert s.recv(100) == b""  # closed by the server
        assert 0.8 < time.monotonic() - start < 5
        s.close()
        # a kept-alive connection that starts a next request and stalls is cut too
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /health HTTP/1.1\r\nHo")
        start = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - start < 4  # the header deadline, not the 30 s keep-alive
        s.close()
        assert http.get(srv.url + "/health").status_code == 200


def test_idle_connections_outlive_the_clients_own_keep_alive():
    """The server keeps an idle connection longer than httpx and the openai client keep theirs,
    so a client never sends a request on a connection the server is closing at that moment."""
    import openai._constants

    from lightpipe.server.protocol import uvicorn_config

    config = uvicorn_config(create_app([]), "127.0.0.1", 0, "warning")
    clients = (httpx.Limits().keepalive_expiry, openai._constants.DEFAULT_CONNECTION_LIMITS.keepalive_expiry)
    assert config.timeout_keep_alive >= 2 * max(clients)


def test_oversized_bodies_are_413_before_and_while_reading(folders):
    app = create_app([MINILM], max_body_bytes=1000)
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        r = http.post(srv.url + "/v1/embeddings", json={"input": "x" * 2000})
        assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit is counted while reading
            for _ in range(10):
                yield b" " * 500

        r = http.post(srv.url + "/embed", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
        assert http.post(srv.url + "/api/load", json={"model": "x" * 2000}).status_code == 413  # /api/load too


# -- a client that leaves ------------------------------------------------------------------------

def test_a_client_that_leaves_has_its_queued_job_dropped(folders):
    """While the model is busy, a queued request whose client gives up is dropped before it runs:
    the pipeline never sees its input, and /metrics counts it."""
    gated = Gated(pipeline("text-classification", model=folders["cls"]))
    app = create_app(pipelines={"cls": gated})
    with start_in_thread(app) as srv, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, srv.url + "/models/cls", json={"inputs": "first"}, timeout=30)
        deadline = time.monotonic() + 10
        while not gated.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(httpx.ReadTimeout):  # queued behind the first; the client gives up
            http.post(srv.url + "/models/cls", json={"inputs": "impatient"}, timeout=1.0)
        batcher = app.state.lightpipe.registry.get("cls").batcher
        while app.state.lightpipe.metrics.cancelled.get("cls") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        gated.gate.set()
        assert first.result().status_code == 200
        assert http.post(srv.url + "/models/cls", json={"inputs": "later"}, timeout=30).status_code == 200
        assert [c for c in gated.calls] == [["first"], ["later"]]
        assert batcher.depth == 0
        text = http.get(srv.url + "/metrics").text
        assert 'lightpipe_cancelled_jobs_total{model="cls"} 1' in text
        assert 'lightpipe_requests_total{route="/models/{model_id}",status="499"} 1' in text


SLOW_STREAM_SERVER = textwrap.dedent("""
    import sys, time
    from lightpipe import pipeline
    from lightpipe.server import serve

    pipe = pipeline("text-generation", model=sys.argv[1])

    # a stream that outlasts the shutdown timeout: every step slow, no end-of-sequence token
    pipe.model.register_forward_pre_hook(lambda module, args: time.sleep(0.2))
    request = pipe.stream_request
    pipe.stream_request = lambda prompt, **options: request(prompt, **{**options, "eos_token_id": -1,
                                                                      "max_new_tokens": 50})
    serve([], port=int(sys.argv[2]), pipelines={"gpt": pipe}, shutdown_timeout=float(sys.argv[3]), log_level="info")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_with_a_stream_open_exits_within_the_shutdown_timeout(folders, tmp_path):
    script = tmp_path / "serve_slow.py"
    script.write_text(SLOW_STREAM_SERVER)
    port, timeout = free_port(), 2.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(folders["gpt"]), str(port), str(timeout)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
            try:
                if http.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        received = []

        def read_stream():
            try:
                with httpx.stream("POST", url + "/models/gpt", json={"inputs": "x", "stream": True}, timeout=60) as r:
                    for line in r.iter_lines():
                        received.append(line)
            except httpx.HTTPError:
                pass

        reader = threading.Thread(target=read_stream, daemon=True)
        reader.start()
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received, "the stream never started"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout + 15)
        took = time.monotonic() - start
        assert took < timeout + 8, took
        assert took > timeout * 0.8  # it waited for the stream, up to the timeout
        reader.join(timeout=5)
        assert not reader.is_alive()  # the client's stream ended with the server
        log = proc.stdout.read().decode()
        assert "graceful shutdown exceeded" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
