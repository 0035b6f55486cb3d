"""The pipelines a server serves, each named by its model id: loading them in the background
(so /health can say 503 while they load), finding them by name, and choosing one when a
client names none."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import PurePath

from . import errors
from .batcher import Batcher

log = logging.getLogger("lightpipe.server")


def parse_model_spec(spec: str) -> tuple[str | None, str]:
    """`[TASK=]MODEL` → (task or None, model). A `=` inside a path is kept when the part
    before it isn't a task name."""
    from ..tasks import normalize_task

    head, sep, tail = spec.partition("=")
    if sep and tail:
        try:
            normalize_task(head)
            return head, tail
        except ValueError:
            pass
    return None, spec


def load_pipeline(task: str | None, model: str, **kwargs):
    """Seam for tests: how the registry builds a pipeline."""
    from .. import pipeline

    return pipeline(task, model=model, **kwargs)


@dataclass
class Served:
    id: str  # the name clients use: the model id (or folder) as given
    model: str
    task: str | None
    status: str = "loading"  # loading | ready | error
    error: str | None = None
    pipeline: object = None
    batcher: Batcher | None = None
    startup: bool = True  # loaded at start-up: /health waits for it
    loaded: threading.Event = field(default_factory=threading.Event)

    @property
    def can_embed(self) -> bool:
        return self.pipeline is not None and hasattr(self.pipeline, "embed")

    @property
    def aliases(self) -> set[str]:
        names = {self.id, self.model}
        if "/" in self.id or "\\" in self.id:
            names.add(PurePath(self.id).name)
        return names

    def info(self) -> dict:
        out = {"id": self.id, "task": self.task, "status": self.status}
        if self.error:
            out["error"] = self.error
        pipe = self.pipeline
        if pipe is not None:
            out["model_type"] = (getattr(pipe, "config", None) or {}).get("model_type")
            out["device"] = str(getattr(pipe, "device", "cpu"))
            out["max_input_tokens"] = _safe(lambda: pipe.max_input_tokens)
            out.update(pipe.server_info())  # the task's own facts: labels, mask token
            out["streaming"] = has_token_stream(pipe)
            out["chat"] = takes_chat(pipe)
        return out


def has_token_stream(pipe) -> bool:
    """Whether the pipeline streams generated text: `stream(prompt, **kw)` (text-generation)."""
    return callable(getattr(pipe, "stream", None))


def takes_chat(pipe) -> bool:
    """Whether /v1/chat/completions can serve the pipeline: it takes messages and its tokenizer
    has a chat template to render them (the playground's chat mode)."""
    template = getattr(getattr(pipe, "tokenizer", None), "chat_template", None)
    return bool(getattr(pipe, "takes_chat", False) and template)


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None


class Registry:
    def __init__(self, *, max_batch_tokens: int, device=None, metrics=None, pipeline_kwargs: dict | None = None):
        self.entries: dict[str, Served] = {}
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.metrics = metrics
        self.pipeline_kwargs = pipeline_kwargs or {}
        self._lock = threading.Lock()

    # -- adding --------------------------------------------------------------------------

    def add_pipeline(self, pipe, name: str | None = None) -> Served:
        """Serve an already built pipeline (tests, notebooks)."""
        name = name or getattr(pipe, "model_id", None) or type(pipe).__name__
        entry = Served(name, name, getattr(pipe, "task", None))
        self._ready(entry, pipe)
        with self._lock:
            self.entries[name] = entry
        return entry

    def load(self, spec: str, *, task: str | None = None, startup: bool = True, background: bool = True) -> Served:
        """Start loading `[TASK=]MODEL`; returns at once (background) with status "loading"."""
        spec_task, model = parse_model_spec(spec)
        task = task or spec_task
        with self._lock:
            existing = self.entries.get(model)
            if existing is not None and existing.status != "error":
                return existing
            entry = self.entries[model] = Served(model, model, task, startup=startup)
        if background:
            threading.Thread(target=self._load, args=(entry,), name=f"lightpipe-load[{model}]", daemon=True).start()
        else:
            self._load(entry)
        return entry

    def _load(self, entry: Served) -> None:
        try:
            kwargs = dict(self.pipeline_kwargs)
            if self.device is not None:
                kwargs["device"] = self.device
            pipe = load_pipeline(entry.task, entry.model, **kwargs)
            self._ready(entry, pipe)
            log.info("serving %s (%s)", entry.id, entry.task)
        except Exception as e:
            entry.status, entry.error = "error", f"{type(e).__name__}: {e}"
            log.error("could not load %s: %s", entry.model, entry.error)
        finally:
            entry.loaded.set()

    def _ready(self, entry: Served, pipe) -> None:
        entry.pipeline = pipe
        entry.task = getattr(pipe, "task", None) or entry.task
        entry.batcher = Batcher(pipe, entry.id, self.max_batch_tokens, self.metrics)
        entry.status = "ready"
        entry.loaded.set()

    def close(self) -> None:
        for entry in list(self.entries.values()):
            if entry.batcher is not None:
                entry.batcher.close()

    # -- finding -------------------------------------------------------------------------

    def all(self) -> list[Served]:
        return list(self.entries.values())

    def ready(self) -> list[Served]:
        return [e for e in self.entries.values() if e.status == "ready"]

    def find(self, name: str) -> Served | None:
        if name in self.entries:
            return self.entries[name]
        hits = [e for e in self.entries.values() if name in e.aliases]
        if len(hits) == 1:
            return hits[0]
        by_task = [e for e in self.entries.values() if e.task == name]
        return by_task[0] if by_task else None

    def get(self, name: str) -> Served:
        """The ready pipeline called `name` (model id, folder name or task), or the error to send."""
        entry = self.find(name)
        if entry is None:
            known = ", ".join(e.id for e in self.entries.values()) or "none"
            raise errors.not_found(f"model {name!r} is not served here; served models: {known}")
        return check_ready(entry)

    def choose(self, want, what: str) -> Served:
        """The first ready pipeline (in the order given at start-up) for which `want(entry)`."""
        hits = [e for e in self.ready() if want(e)]
        if hits:
            return hits[0]
        loading = [e for e in self.entries.values() if e.status == "loading"]
        if loading:
            raise errors.loading(f"no {what} model is ready yet; still loading: {', '.join(e.id for e in loading)}")
        served = ", ".join(f"{e.id} ({e.task})" for e in self.entries.values()) or "none"
        raise errors.not_found(f"no {what} model is served here; served models: {served}")

    def health(self) -> tuple[bool, str]:
        startup = [e for e in self.entries.values() if e.startup]
        failed = [e for e in startup if e.status == "error"]
        if failed:
            return False, "; ".join(f"{e.id} failed to load: {e.error}" for e in failed)
        loading = [e for e in startup if e.status == "loading"]
        if loading:
            return False, "loading " + ", ".join(e.id for e in loading)
        return True, "ok"


def check_ready(entry: Served) -> Served:
    if entry.status == "loading":
        raise errors.loading(f"model {entry.id} is loading; retry shortly")
    if entry.status == "error":
        raise errors.ApiError(503, f"model {entry.id} failed to load: {entry.error}", "unavailable")
    return entry
