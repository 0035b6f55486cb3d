"""The server's generation requests, streamed or not, run in one generation engine per
pipeline, stepped by the worker thread: concurrent streams progress together, a stream
progresses while a long non-streamed request runs (they share steps), only the worker runs the
model, and a client that goes away (streamed or not) has its sequences cancelled. Driven with the
real openai client and plain HTTP."""

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from lightpipe import pipeline
from lightpipe.server import create_app, start_in_thread
from test_server import decoder_checkpoint, wait_healthy

pytestmark = pytest.mark.server

NEVER_ENDS = {"eos_token_id": -1}  # every stream runs its full length


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A gpt pipeline whose forward passes record their thread and time, served by name."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = pipeline("text-generation", model=decoder_checkpoint(tmp_path_factory.mktemp("gpt")))
    calls: list[tuple[int, float]] = []

    def record(module, args):
        calls.append((threading.get_ident(), time.perf_counter()))
        time.sleep(0.01)  # a step long enough that streams overlap on a busy machine

    pipe.model.register_forward_pre_hook(record)
    request = pipe.stream_request
    pipe.stream_request = lambda prompt, **options: request(prompt, **{**options, **NEVER_ENDS})
    app = create_app(pipelines={"gpt": pipe})
    with start_in_thread(app) as running:
        wait_healthy(running.url)
        yield running, app.state.lightpipe.registry.get("gpt").batcher, calls


def arrivals(client, prompt: str, n: int) -> list[float]:
    """When each streamed chunk with text arrived."""
    times = []
    for chunk in client.completions.create(model="gpt", prompt=prompt, max_tokens=n, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
    return times


def test_concurrent_streams_progress_together_on_the_worker_thread(served):
    running, batcher, calls = served
    client = OpenAI(base_url=running.url + "/v1", api_key="-", max_retries=0)
    calls.clear()
    n = 24
    with ThreadPoolExecutor(4) as pool:
        streams = list(pool.map(lambda p: arrivals(client, p, n), ["alpha", "beta gamma", "delta", "epsilon zeta"]))
    assert all(len(s) >= n // 2 for s in streams)  # pieces: a token each, but for held-back text
    # interleaved, not one after another: every stream had text before any other finished
    first_end = min(s[-1] for s in streams)
    assert all(s[0] < first_end for s in streams)
    # one forward pass a step for all of them, far fewer than a pass per token per stream
    assert len(calls) < 4 * n
    workers = {ident for ident, _ in calls}
    assert len(workers) == 1 and threading.get_ident() not in workers
    batcher_threads = [t for t in threading.enumerate() if t.name == "lightpipe-batcher[gpt]"]
    assert [t.ident for t in batcher_threads] == list(workers)


def test_a_disconnected_stream_leaves_the_engine(served):
    running, batcher, calls = served
    client = OpenAI(base_url=running.url + "/v1", api_key="-", max_retries=0)
    stream = client.completions.create(model="gpt", prompt="hello", max_tokens=60, temperature=0, stream=True)
    next(iter(stream))
    stream.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 30
    before = len(calls)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if not any_work(batcher):
            break
    assert not any_work(batcher)
    settled = len(calls)
    time.sleep(0.5)
    assert len(calls) == settled  # nothing left running: the sequence did not run to its 60 tokens
    assert settled - before < 20  # left within a few steps of the disconnect, not after its 60 tokens


def any_work(batcher) -> bool:
    """Whether the served pipeline's engine still holds a sequence."""
    return batcher._engine is not None and batcher._engine.has_work()


LONG = {"max_new_tokens": 120, "eos_token_id": -1}  # a non-streamed request of 120 steps


def test_a_disconnected_non_streamed_request_leaves_the_engine_at_the_next_step(served, monkeypatch):
    """The client of a long non-streamed request gives up: its sequence is cancelled in the
    engine, which runs no forward pass for it after the cancellation (one may be under way)."""
    running, batcher, calls = served
    cancelled_at = []
    cancel = batcher.cancel

    def recorded(job):
        cancelled_at.append(len(calls))
        cancel(job)

    monkeypatch.setattr(batcher, "cancel", recorded)
    before = len(calls)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(running.url + "/models/gpt", json={"inputs": "hello", "parameters": LONG},
                   timeout=httpx.Timeout(30, read=0.5))
    deadline = time.monotonic() + 30
    while (not cancelled_at or any_work(batcher)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_at and not any_work(batcher)
    settled = len(calls)
    time.sleep(0.3)
    assert len(calls) == settled
    assert cancelled_at[0] > before  # it was running when its client went
    assert settled - cancelled_at[0] <= 1  # no step for it after the cancel, but the one under way
    assert settled - before < 100  # far from its 120 steps


def test_a_stream_progresses_while_a_long_non_streamed_request_runs(served):
    """Streams and non-streamed requests share engine steps: a stream started while a long
    non-streamed request runs ends first, and the two took far fewer forward passes than one
    after the other (a pass per token each)."""
    running, batcher, calls = served
    client = OpenAI(base_url=running.url + "/v1", api_key="-", max_retries=0)
    calls.clear()
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 80, "eos_token_id": -1, "details": True}}
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(lambda: (httpx.post(running.url + "/models/gpt", json=body, timeout=60),
                                    time.perf_counter()))
        deadline = time.monotonic() + 30
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        stream = arrivals(client, "alpha beta", 20)
        response, long_done = long.result()
    assert response.status_code == 200 and response.json()[0]["details"]["generated_tokens"] == 80
    assert len(stream) >= 10 and stream[-1] < long_done  # the stream did not wait for the long request
    assert len(calls) < 80 + 20 - 10  # shared steps: well under a pass per token of each


def test_a_request_larger_than_the_engine_budget_runs_alone(tmp_path):
    """A request needing more key/value positions than the engine's whole budget is not refused
    (limits.check refuses only what the model can't take): it waits for the running sequences,
    runs alone, and gives the text it gives anywhere; requests around it are answered too."""
    from lightpipe.generation import Engine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = decoder_checkpoint(tmp_path / "gpt")
        pipe, reference = pipeline("text-generation", model=folder), pipeline("text-generation", model=folder)
    made = []

    def small_engine(batch_size=None, config=None):  # a 48-position budget: 60 new tokens don't fit
        made.append(Engine(pipe.model, kv_budget_tokens=48, max_rows=8, oversized="alone"))
        return made[-1]

    pipe.engine = small_engine
    requests = [("The assert statement", 60)] + [(p, 8) for p in ("alpha", "beta gamma", "delta")]
    expected = [reference(p, do_sample=False, max_new_tokens=n, return_full_text=False)[0]["generated_text"]
                for p, n in requests]
    app = create_app(pipelines={"gpt": pipe})
    with start_in_thread(app) as running, ThreadPoolExecutor(len(requests)) as pool:
        wait_healthy(running.url)

        def ask(request):
            prompt, n = request
            r = httpx.post(running.url + "/models/gpt", json={"inputs": prompt, "parameters": {"max_new_tokens": n}},
                           timeout=60)
            assert r.status_code == 200, r.text
            return r.json()[0]["generated_text"]

        got = list(pool.map(ask, requests))
    assert got == expected
    assert [e.kv_budget_tokens for e in made] == [48]  # the one engine, its budget smaller than the request
