"""The pipelines a server serves, each under a public name: loading them in the background (so
/health can say 503 while they load), finding them by name, and choosing one when a client
names none.

A served model's name is what clients see and send: the one the operator gave
(`--model NAME=...`), else the Hub id, else a local folder's own name — never a path on the
server. One model (a Hub id at a revision, or a folder however spelled) is loaded once per
task. Loads asked for at run time (/api/load) are Hub ids unless local folders are allowed,
count against a cap, and a failed one is listed for a while (the playground shows why), then
cleared.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import errors
from .batcher import Batcher

log = logging.getLogger("lightpipe.server")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/\-]{0,127}")


@dataclass
class ModelSpec:
    model: str  # Hub id or local folder, as given
    task: str | None = None
    name: str | None = None  # the public name, if the operator gave one
    revision: str | None = None


def parse_model_spec(spec: str) -> ModelSpec:
    """`[NAME=][TASK=]MODEL[@REVISION]`. A spec that is an existing folder is that folder (so a
    `=` or `@` in a path stays in it); NAME is told from TASK by being no task name."""
    from ..tasks import normalize_task

    def is_task(text: str) -> bool:
        try:
            normalize_task(text)
            return True
        except ValueError:
            return False

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a model spec is [NAME=][TASK=]MODEL[@REVISION], got {spec!r}")
    spec = spec.strip()
    if Path(spec).expanduser().is_dir():
        return ModelSpec(spec)
    name = task = None
    head, sep, rest = spec.partition("=")
    second, sep2, last = rest.partition("=")
    if sep and sep2 and last and NAME.fullmatch(head) and is_task(second) and not Path(rest).expanduser().is_dir():
        name, task, spec = head, second, last  # NAME=TASK=MODEL, even where NAME is a task's name too (ner=ner=...)
    elif sep and rest and is_task(head):
        task, spec = head, rest
    elif sep and rest and NAME.fullmatch(head):
        name, spec = head, rest
    revision = None
    if not Path(spec).expanduser().is_dir() and spec.count("@") == 1 and not spec.startswith("@"):
        spec, revision = spec.split("@")
        if not revision:
            raise ValueError(f"{spec}@ names no revision; write MODEL@REVISION (a branch, tag or commit)")
    return ModelSpec(spec, task, name, revision)


def is_local(model: str) -> bool:
    """Whether `model` names a folder on this machine rather than a Hub id."""
    return Path(model).expanduser().is_dir() or not is_hub_id(model)


def is_hub_id(model: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
        return True
    except HFValidationError:
        return False


def default_name(model: str, local_folder: bool) -> str:
    """A Hub id is its own name; a folder is called by its last component (never by its path)."""
    if local_folder:
        return Path(model).expanduser().resolve().name or "model"
    return model  # a Hub id


def load_pipeline(task: str | None, model: str, **kwargs):
    """Seam for tests: how the registry builds a pipeline."""
    from .. import pipeline

    return pipeline(task, model=model, **kwargs)


@dataclass
class Served:
    id: str  # the public name clients use
    model: str  # Hub id or folder as given: never shown to clients
    task: str | None
    revision: str | None = None
    key: tuple = ()  # what makes two loads the same model (see Registry.key)
    status: str = "loading"  # loading | ready | error
    error: str | None = None
    pipeline: object = None
    batcher: Batcher | None = None
    startup: bool = True  # loaded at start-up: /health waits for it
    failed_at: float | None = None
    loaded: threading.Event = field(default_factory=threading.Event)

    @property
    def can_embed(self) -> bool:
        return self.pipeline is not None and hasattr(self.pipeline, "embed")

    def info(self) -> dict:
        out = {"id": self.id, "task": self.task, "status": self.status}
        if self.revision:
            out["revision"] = self.revision
        if self.error:
            out["error"] = self.error
        pipe = self.pipeline
        if pipe is not None:
            out["model_type"] = (getattr(pipe, "config", None) or {}).get("model_type")
            out["device"] = str(getattr(pipe, "device", "cpu"))
            out["dtype"] = _safe(lambda: str(next(p.dtype for p in pipe.model.parameters() if p.is_floating_point())))
            out["quantized"] = _safe(lambda: any(type(m).__name__.startswith("Int8") for m in pipe.model.modules()))
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
    def __init__(self, *, max_batch_tokens: int, device=None, metrics=None, pipeline_kwargs: dict | None = None,
                 max_models: int = 16, failed_ttl: float = 600.0):
        self.entries: dict[str, Served] = {}  # public name → entry, in the order given
        self.max_batch_tokens = max_batch_tokens
        self.device = device
        self.metrics = metrics
        self.pipeline_kwargs = pipeline_kwargs or {}  # dtype, quantize
        self.max_models = max_models
        self.failed_ttl = failed_ttl
        self._lock = threading.Lock()

    # -- adding --------------------------------------------------------------------------

    def add_pipeline(self, pipe, name: str | None = None) -> Served:
        """Serve an already built pipeline (tests, notebooks)."""
        name = name or getattr(pipe, "model_id", None) or type(pipe).__name__
        entry = Served(name, name, getattr(pipe, "task", None), key=("pipeline", name))
        self._ready(entry, pipe)
        with self._lock:
            self.entries[name] = entry
        return entry

    def load(self, spec: ModelSpec | str, *, startup: bool = True, local: bool = True,
             background: bool = True) -> tuple[Served, bool]:
        """Start loading a model; returns at once (background) its new entry, or the entry
        already serving (or loading) the same model for the same task, and whether this call
        started a load (a background load may already have failed when it returns). `local=False`:
        `spec.model` must be a Hub id (a client named it)."""
        if isinstance(spec, str):
            spec = parse_model_spec(spec)
        local_folder = local and Path(spec.model).expanduser().is_dir()
        path = local_folder or not is_hub_id(spec.model)  # meant as a folder (maybe a missing one)
        if path and not local:
            raise errors.validation("model must be a Hub model id (org/name); loading folders on the server needs "
                                    "--allow-load-local", param="model")
        name = spec.name or default_name(spec.model, path)
        if not NAME.fullmatch(name):
            raise errors.validation(f"model name {name!r} must be letters, digits and . _ : / - (at most 128)",
                                    param="name")
        if path:  # its path, however it was spelled, is shown as its name
            errors.hide(Path(spec.model).expanduser(), name)
            errors.hide(Path(spec.model).expanduser().resolve(), name)
        key = self.key(spec, path)
        with self._lock:
            self._prune()
            same = next((e for e in self.entries.values() if e.key == key and e.status != "error"), None)
            if same is not None:
                return same, False
            taken = self.entries.get(name)
            if taken is not None and taken.status != "error":
                raise errors.ApiError(409, f"another model is already served as {name!r}; give this one a name",
                                      "conflict", param="name")
            if taken is None and len(self.entries) >= self.max_models and not self._evict_failed():
                raise errors.ApiError(409, f"the server already holds {len(self.entries)} models, its maximum "
                                           "(--max-models)", "conflict")
            entry = self.entries[name] = Served(name, spec.model, spec.task, spec.revision, key, startup=startup)
        run = lambda: self._load(entry, local)  # noqa: E731
        if background:
            threading.Thread(target=run, name=f"lightpipe-load[{name}]", daemon=True).start()
        else:
            run()
        return entry, True

    @staticmethod
    def key(spec: ModelSpec, path: bool) -> tuple:
        """One model for one task: a folder by its real path, a Hub id case-insensitively (as the
        Hub treats it) at its revision."""
        from ..tasks import normalize_task

        task = None
        if spec.task is not None:
            known, extra = normalize_task(spec.task)
            task = (known.name, tuple(sorted(extra.items())))
        if path:
            return "folder", os.path.realpath(Path(spec.model).expanduser()), task
        return "hub", spec.model.lower(), spec.revision or "main", task

    def _load(self, entry: Served, local: bool) -> None:
        try:
            kwargs = dict(self.pipeline_kwargs)
            if self.device is not None:
                kwargs["device"] = self.device
            model = entry.model
            if not local:  # a Hub id only: never a folder of that name on the server
                from ..hub import resolve

                model = str(resolve(entry.model, entry.revision, local=False))
                errors.hide(model, entry.id)
            elif entry.revision is not None:
                kwargs["revision"] = entry.revision
            pipe = load_pipeline(entry.task, model, **kwargs)
            if getattr(pipe, "folder", None):
                errors.hide(pipe.folder, entry.id)
            pipe.model_id = entry.id  # the name its own messages use
            self._ready(entry, pipe)
            log.info("serving %s (%s)", entry.id, entry.task)
        except Exception as e:
            entry.status, entry.failed_at = "error", time.monotonic()
            entry.error = errors.scrub(f"{type(e).__name__}: {e}")
            log.error("could not load %s: %s", entry.id, entry.error)
        finally:
            entry.loaded.set()

    def _ready(self, entry: Served, pipe) -> None:
        entry.pipeline = pipe
        entry.task = getattr(pipe, "task", None) or entry.task
        entry.batcher = Batcher(pipe, entry.id, self.max_batch_tokens, self.metrics)
        entry.status = "ready"
        entry.loaded.set()

    def _prune(self) -> None:
        """Forget failed run-time loads older than failed_ttl (start-up failures stay: /health
        reports them until the operator acts)."""
        now = time.monotonic()
        for name, e in list(self.entries.items()):
            if e.status == "error" and not e.startup and now - (e.failed_at or now) > self.failed_ttl:
                del self.entries[name]

    def _evict_failed(self) -> bool:
        """Make room by forgetting the oldest failed run-time load."""
        failed = [e for e in self.entries.values() if e.status == "error" and not e.startup]
        if not failed:
            return False
        del self.entries[min(failed, key=lambda e: e.failed_at or 0).id]
        return True

    def close(self) -> None:
        for entry in list(self.entries.values()):
            if entry.batcher is not None:
                entry.batcher.close()

    # -- finding -------------------------------------------------------------------------

    def all(self) -> list[Served]:
        with self._lock:
            self._prune()
            return list(self.entries.values())

    def ready(self) -> list[Served]:
        return [e for e in self.all() if e.status == "ready"]

    def find(self, name: str) -> Served | None:
        """The model served as `name`, else the one loaded from the folder `name` (a client that
        knows the folder may use it, as before models had names; it is never shown), else the
        first one serving the task `name`."""
        entries = self.all()
        hit = next((e for e in entries if e.id == name), None)
        given = os.path.normpath(name)
        hit = hit or next((e for e in entries if os.path.normpath(e.model) == given and is_local(e.model)), None)
        return hit or next((e for e in entries if e.task == name), None)

    def get(self, name: str) -> Served:
        """The ready pipeline called `name` (its name or its task), or the error to send."""
        entry = self.find(name)
        if entry is None:
            raise errors.not_found(f"model {name!r} is not served here; served models: {self.listing()}",
                                   param="model", code="model_not_found")
        return check_ready(entry)

    def pick(self, name: str | None, fits, what: str) -> Served:
        """The model a request names, or — when it names none, or a name this server doesn't
        have (clients send "dummy", "tgi", "gpt-4o") while exactly one model fits — that one."""
        if name:
            entry = self.find(name)
            if entry is not None:
                return check_ready(entry)
            ready = [e for e in self.ready() if fits(e)]
            if len(ready) == 1:
                return ready[0]
            raise errors.not_found(f"model {name!r} is not served here; {what} models served: "
                                   f"{', '.join(e.id for e in ready) or 'none'}", param="model", code="model_not_found")
        return self.choose(fits, what)

    def listing(self) -> str:
        return ", ".join(f"{e.id} ({e.task})" for e in self.all()) or "none"

    def choose(self, want, what: str) -> Served:
        """The first ready pipeline (in the order given at start-up) for which `want(entry)`."""
        hits = [e for e in self.ready() if want(e)]
        if hits:
            return hits[0]
        loading = [e for e in self.all() if e.status == "loading"]
        if loading:
            raise errors.loading(f"no {what} model is ready yet; still loading: {', '.join(e.id for e in loading)}")
        raise errors.not_found(f"no {what} model is served here; served models: {self.listing()}")

    def health(self) -> tuple[bool, str]:
        startup = [e for e in self.all() if e.startup]
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
