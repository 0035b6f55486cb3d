"""Dynamic batching: concurrent requests to one pipeline are coalesced into one pipeline call.

Each served pipeline has one worker thread; only it touches the model, so the event loop stays
free to accept, validate and answer while the model runs. Requests queue `Job`s. The worker
takes the oldest job, adds every waiting job with the same call and options (oldest first)
while the batch's input tokens stay under `max_batch_tokens`, runs the pipeline once on all
their inputs (the pipeline then length-sorts and pads per forward pass) and hands each job its
slice of the results. There is no waiting window: whatever queued while the previous batch ran
is the next batch, so a lone request is never delayed and a busy server batches more.

A failing batch is re-run one job at a time, so one bad input fails only its own request.

Generation (text generation, summarization, translation: streamed or not) runs in ONE
generation engine per pipeline (continuous batching), stepped by the worker between batches: a
request's sequences join the running ones at the next step, every running sequence gets a token
per step, a non-streamed request is answered when its sequences are done, and a request whose
client has gone (a stream, or a non-streamed request: `cancel`) is cancelled and leaves the
engine at the next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("lightpipe.server")


@dataclass
class Done:
    results: list  # one result per input of the job, in order
    tokens: int  # input tokens the job's inputs count (for usage fields)


@dataclass(eq=False)
class Job:
    # "run": pipeline.batch(items, **options) | "embed": pipeline.embed(items, **options) |
    # "generate": `start(engine)` on the worker submits the request's sequences to the pipeline's
    # engine and returns (handles, collect); `collect(tops)` makes the results once they are done
    fn: str
    items: list
    options: dict
    seed: int | None = None  # sampling seed: the job gets its own torch.Generator (generation's `seed=`)
    tokens: int | None = None  # input tokens, when the route counted them already
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)
    # set when the client has gone: a job not started yet is dropped; one that is running may
    # watch it to stop early (the hook the generation engine uses to end a sequence within a step)
    cancelled: threading.Event = field(default_factory=threading.Event)
    start: Callable | None = None  # "generate" only

    @property
    def key(self) -> tuple:
        """Jobs coalesce only with jobs making the same call with the same options. A seeded job
        coalesces with none: its prompts draw from one generator, so sharing it with another
        request's prompts would change what the seed gives."""
        if self.seed is not None:
            return self.fn, "seeded", id(self)
        return self.fn, json.dumps(self.options, sort_keys=True, default=repr)


@dataclass
class Token:
    """One generated token of a stream: its id, log-probability and best alternatives (when
    asked: [(id, logprob)]), the text it releases (may be "": text is held back until it can't
    change, and the last token carries the rest), and why the sequence ended, on its last token
    ("stop": an end-of-sequence token, "length")."""
    id: int
    logprob: float | None
    top: list | None
    text: str
    finish_reason: str | None


@dataclass
class Generating:
    """A non-streamed generation job on the engine: its handles, what makes its results, and
    each handle's per-token alternatives (collected from the events, when asked)."""
    handles: list
    collect: Callable
    tops: dict


class Stream:
    """The consuming side of a token stream: `async for token in stream` (`Token`s). They cross
    from the worker thread to the event loop through `call_soon_threadsafe`."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False

    def push(self, kind: str, value=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled = True

    async def __aiter__(self):
        try:
            while True:
                kind, value = await self.queue.get()
                if kind == "token":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise value
        finally:
            self.cancelled = True  # consumer gone (finished, failed or disconnected): stop generating


class Batcher:
    def __init__(self, pipe, name: str, max_batch_tokens: int = 16384, metrics=None):
        self.pipe = pipe
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.metrics = metrics
        self._pending: deque[Job] = deque()
        self._new_streams: list[tuple[Callable, Stream]] = []
        self._streams: dict = {}  # engine handle -> (its Stream, its PieceDecoder)
        self._generating: dict[Job, Generating] = {}  # non-streamed generation jobs on the engine
        self._engine = None  # made on the first stream, by the worker
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"lightpipe-batcher[{name}]", daemon=True)
        self._thread.start()

    # -- the event loop's side -------------------------------------------------------------

    def submit(self, fn: str, items: list, options: dict | None = None, seed: int | None = None,
               tokens: int | None = None) -> Job:
        return self._enqueue(Job(fn, list(items), dict(options or {}), seed, tokens))

    async def __call__(self, fn: str, items: list, options: dict | None = None, seed: int | None = None) -> Done:
        return await asyncio.wrap_future(self.submit(fn, items, options, seed).future)

    def generate(self, start: Callable, tokens: int) -> Job:
        """Queue a non-streamed generation: `start(engine)` runs on the worker (see Job)."""
        return self._enqueue(Job("generate", [], {}, tokens=tokens, start=start))

    def _enqueue(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The job's client has gone: drop the job if it hasn't started; flag it if it has (a
        generation's sequences are then cancelled in the engine before its next step)."""
        job.cancelled.set()
        if job.future.cancel() and self.metrics is not None:
            self.metrics.cancelled.inc(self.name)

    def stream(self, make: Callable) -> Stream:
        """Run `make(engine)` on the worker — it submits one request to the pipeline's engine and
        returns (handle, piece decoder) — and iterate the text pieces of its tokens."""
        stream = Stream(asyncio.get_running_loop())
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._new_streams.append((make, stream))
            self._cond.notify()
        return stream

    @property
    def depth(self) -> int:
        return len(self._pending) + len(self._new_streams)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    # -- the worker's side -----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._new_streams or self._streams or self._generating or self._closed):
                    self._cond.wait()
                if self._closed:
                    break
                pending = list(self._pending)
                self._pending.clear()
                new_streams, self._new_streams = self._new_streams, []
            try:
                generations = [j for j in pending if j.fn == "generate"]
                pending = [j for j in pending if j.fn != "generate"]
                batch, rest = self._form_batch(pending)
                if rest:
                    with self._cond:
                        self._pending.extendleft(reversed(rest))
                if batch:
                    self._run(batch)
                self._start_streams(new_streams)
                self._start_generations(generations)
                self._step_engine()
            except Exception:  # never let the worker die: that would hang every later request
                log.exception("batcher %s: unexpected error", self.name)
        for job in list(self._pending):
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        for stream, _ in self._streams.values():
            stream.push("error", RuntimeError("the server is shutting down"))
        for job in self._generating:
            job.future.set_exception(RuntimeError("the server is shutting down"))

    def _form_batch(self, pending: list[Job]) -> tuple[list[Job], list[Job]]:
        pending = [j for j in pending if not (j.future.cancelled() or j.cancelled.is_set())]  # their clients went away
        if not pending:
            return [], []
        first = pending[0]
        batch, rest, budget = [first], [], self._tokens(first)
        for job in pending[1:]:
            if job.key == first.key and budget + self._tokens(job) <= self.max_batch_tokens:
                batch.append(job)
                budget += job.tokens
            else:
                rest.append(job)
        return [j for j in batch if j.future.set_running_or_notify_cancel()], rest

    def _tokens(self, job: Job) -> int:
        if job.tokens is None:
            job.tokens = count_tokens(self.pipe, job.items, job.options)
        return job.tokens

    def _run(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        items = [item for job in batch for item in job.items]
        try:
            outputs = self._call(batch[0], items)
        except Exception as e:
            if len(batch) == 1:
                batch[0].future.set_exception(e)
            else:  # isolate the culprit: every other request still gets its own answer
                for job in batch:
                    try:
                        self._finish([job], self._call(job, job.items), start)
                    except Exception as e:
                        job.future.set_exception(e)
            return
        self._finish(batch, outputs, start)

    def _finish(self, batch: list[Job], outputs: list, start: float) -> None:
        end = time.perf_counter()
        i = 0
        for job in batch:
            job.future.set_result(Done(outputs[i:i + len(job.items)], job.tokens or 0))
            i += len(job.items)
        if self.metrics is not None:
            m, name = self.metrics, self.name
            m.inference_time.observe(end - start, name)
            m.batch_inputs.observe(i, name)
            m.batch_requests.observe(len(batch), name)
            m.batch_tokens.observe(sum(job.tokens or 0 for job in batch), name)
            for job in batch:
                m.queue_time.observe(start - job.enqueued, name)

    def _call(self, job: Job, items: list) -> list:
        pipe = self.pipe
        if job.fn == "embed":
            outputs = list(pipe.embed(items, **job.options))
        elif job.fn == "run":
            # the seed goes into the call (a per-call torch.Generator), never into torch's global RNG,
            # which a stream generating in another thread draws from at the same time
            options = job.options if job.seed is None else {**job.options, "seed": job.seed}
            outputs = pipe.batch(items, **options)
        else:
            raise ValueError(f"unknown batch call {job.fn!r}")
        if len(outputs) != len(items):
            raise RuntimeError(f"{type(pipe).__name__} returned {len(outputs)} results for {len(items)} inputs")
        return outputs

    @property
    def engine(self):
        """The pipeline's generation engine, made on the worker at the first generation request."""
        if self._engine is None:
            self._engine = self.pipe.engine(STREAM_ROWS)
        return self._engine

    def _start_streams(self, new: list) -> None:
        for make, stream in new:
            if stream.cancelled:
                continue
            try:
                handle, pieces = make(self.engine)
            except Exception as e:
                stream.push("error", e)
                continue
            self._streams[handle] = (stream, pieces)

    def _start_generations(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.cancelled.is_set() or not job.future.set_running_or_notify_cancel():
                continue  # its client went away before it started
            try:
                handles, collect = job.start(self.engine)
            except Exception as e:
                job.future.set_exception(e)
                continue
            tops = {h: [[] for _ in h.tokens] for h in handles if h.top_logprobs}
            self._generating[job] = Generating(handles, collect, tops)
            if self.metrics is not None:
                self.metrics.queue_time.observe(time.perf_counter() - job.enqueued, self.name)

    def _step_engine(self) -> None:
        """Cancel the requests whose clients went, step the engine once, push each stream's new
        tokens (the end, or the error, of those that finished) and answer the non-streamed
        requests whose sequences are all done."""
        if not (self._streams or self._generating):
            return
        engine = self._engine
        for handle, (stream, _) in list(self._streams.items()):
            if stream.cancelled:
                engine.cancel(handle)
                del self._streams[handle]
                self._count_cancel()
        for job, run in list(self._generating.items()):
            if job.cancelled.is_set():
                for handle in run.handles:
                    engine.cancel(handle)
                del self._generating[job]
                self._count_cancel()
                job.future.set_exception(RuntimeError("the client went away"))
        try:
            events = engine.step() if engine.has_work() else []
        except Exception as e:  # every admitted request failed with it; the engine stays usable
            log.debug("engine step on %s failed: %s", self.name, e)
            events = []
        tops = {h: run.tops[h] for run in self._generating.values() for h in run.tops} if self._generating else {}
        for event in events:
            if event.token is None:
                continue
            entry = self._streams.get(event.handle)
            if entry is None:
                if event.handle in tops:
                    tops[event.handle][event.index].append(event.top_logprobs or [])
                continue
            stream, pieces = entry
            text = "".join(pieces.push(event.token))
            if event.finish_reason is not None:
                text += "".join(pieces.end())
            stream.push("token", Token(event.token, event.logprob, event.top_logprobs, text, event.finish_reason))
            if self.metrics is not None:
                self.metrics.stream_tokens.inc(self.name)
        for handle, (stream, pieces) in list(self._streams.items()):
            if not handle.done:
                continue
            del self._streams[handle]
            if handle.error is not None:
                stream.push("error", handle.error)
                continue
            stream.push("end")
        for job, run in list(self._generating.items()):
            if not all(h.done for h in run.handles):
                continue
            del self._generating[job]
            failed = next((h.error for h in run.handles if h.error is not None), None)
            if failed is not None:
                for handle in run.handles:
                    engine.cancel(handle)  # the others may still be waiting
                job.future.set_exception(failed)
                continue
            try:
                job.future.set_result(Done(run.collect(run.tops), job.tokens or 0))
            except Exception as e:
                job.future.set_exception(e)

    def _count_cancel(self) -> None:
        if self.metrics is not None:
            self.metrics.cancelled.inc(self.name)


STREAM_ROWS = 64  # sequences (streamed or not) one engine steps together, within its KV budget


def strings_of(item, out: list) -> list:
    """Every string inside an input (a text, a QA dict, chat messages, a text pair)."""
    if isinstance(item, str):
        out.append(item)
    elif isinstance(item, dict):
        for value in item.values():
            strings_of(value, out)
    elif isinstance(item, (list, tuple)):
        for value in item:
            strings_of(value, out)
    return out


def count_tokens(pipe, items: list, options: dict | None = None) -> int:
    """Input tokens of `items` as the pipeline's tokenizer counts them (zero-shot runs each text
    once per candidate label, so it counts that many times; text-generation counts its prompts as
    the model gets them: chat template, prefix, BOS)."""
    counter = getattr(pipe, "count_prompt_tokens", None)
    if counter is not None:
        try:
            return counter(items, options or {})
        except Exception:
            pass  # a bad input: the run itself reports it; count roughly meanwhile
    texts = strings_of(items, [])
    if not texts:
        return 0
    try:
        n = sum(len(e.ids) for e in pipe.tokenizer.encode_batch(texts))
    except Exception:
        n = sum(len(t) for t in texts) // 4 + len(texts)
    labels = (options or {}).get("candidate_labels")
    if isinstance(labels, str):
        labels = [x for x in labels.split(",") if x.strip()]
    if isinstance(labels, list) and labels:
        n *= len(labels)
    return n
