"""Hub model search that offers what lightpipe loads (`lightpipe models`, the playground's search).

One listing request carries what decides whether a model loads — its config's `model_type` and
`auto_map`, its file list, tags and gate — so there is no request per model. Each model found is
marked `loads` (bool) with a `reason`: why it doesn't load, or what it needs (a gated model).
"""

from __future__ import annotations

import re

from . import hub, repo_files
from .tasks import normalize_task

# With `expand`, the Hub returns the id and only these properties (huggingface_hub's
# ExpandModelProperty_T names them); `config` is a digest of config.json, `siblings` the file list.
EXPAND = ["downloads", "likes", "pipeline_tag", "tags", "library_name", "gated", "config", "siblings"]
MAX_SCAN = 1000  # the most models the Hub lists in one page
# tags the Hub puts on checkpoints whose weights are quantized into another layout
QUANTIZED_TAGS = ("gptq", "awq", "bitsandbytes", "4-bit", "8-bit", "fp8", "compressed-tensors", "exl2", "gguf")
GATED_NOTE = "gated: accept its terms on the model page, then log in (`huggingface-cli login`)"


def supported_model_types() -> set[str]:
    """The config `model_type`s lightpipe's loader builds (the one place that says so)."""
    from .loading import FAMILIES

    return set(FAMILIES)


def hub_filters(task: str | None, language: str | None) -> tuple[str | None, list[str]]:
    """A lightpipe task name or alias → the Hub's pipeline tag and the language tags to require.
    lightpipe's canonical task names are the Hub's tags; `translation_en_to_fr` is `translation`
    with both languages (the Hub's language tags say which languages, not which direction)."""
    languages = [language] if language else []
    if task is None:
        return None, languages
    spec, extra = normalize_task(task)
    pair = [extra[k] for k in ("src_lang", "tgt_lang") if k in extra]
    return spec.name, languages + [code for code in pair if code not in languages]


def list_models(task: str | None = None, language: str | None = None, search: str | None = None,
                limit: int = 20, *, include_unloadable: bool = False, endpoint: str | None = None) -> list[dict]:
    """The Hub's most downloaded models matching the filters, each marked `loads` and `reason`.
    By default only those lightpipe loads: the first `limit` of them among the most downloaded
    matches. `include_unloadable`: the `limit` most downloaded, the loadable ones first."""
    found = scan(task, language, search, scan_size(limit, include_unloadable), endpoint=endpoint)
    return select(found, limit, include_unloadable)


def scan_size(limit: int, include_unloadable: bool) -> int:
    """How many of the most downloaded matches to look at for `limit` answers: more than asked
    when the unloadable ones are left out, so a page of them doesn't leave the answer short."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return min(limit, MAX_SCAN) if include_unloadable else min(max(5 * limit, 100), MAX_SCAN)


def select(found: list[dict], limit: int, include_unloadable: bool) -> list[dict]:
    if include_unloadable:
        return sorted(found[:limit], key=lambda m: not m["loads"])  # stable: downloads order within each
    return [m for m in found if m["loads"]][:limit]


def scan(task: str | None = None, language: str | None = None, search: str | None = None, count: int = 100,
         *, endpoint: str | None = None) -> list[dict]:
    """The `count` most downloaded Hub models matching the filters, marked, in one request."""
    pipeline_tag, tags = hub_filters(task, language)
    if hub.is_offline():
        raise ConnectionError("cannot search the Hub: offline mode is on (HF_HUB_OFFLINE=1); "
                              "`lightpipe run` still finds models already in the cache")
    from huggingface_hub import HfApi, constants

    endpoint = hub._endpoint(endpoint)
    api = HfApi(endpoint=endpoint)
    supported = supported_model_types()
    try:
        # a language is a model tag (`language=` is deprecated in huggingface_hub 0.36 for this reason)
        listing = api.list_models(pipeline_tag=pipeline_tag, filter=tags or None, search=search, sort="downloads",
                                  limit=count, expand=EXPAND)
        return [marked(m, supported) for m in listing]
    except OSError as e:  # refused, timed out, DNS, or the Hub's own error status
        raise ConnectionError(f"cannot search the Hub at {endpoint or constants.ENDPOINT}: {_short(e)}") from e


def marked(info, supported: set[str]) -> dict:
    """A listed model (huggingface_hub's ModelInfo) as the search shows it."""
    config = info.config or {}
    files = None if info.siblings is None else {s.rfilename for s in info.siblings}
    loads, reason = verdict(config, info.tags or [], files, info.gated, supported)
    return {"id": info.id, "downloads": info.downloads, "likes": info.likes, "pipeline_tag": info.pipeline_tag,
            "model_type": config.get("model_type"), "loads": loads, "reason": reason}


def verdict(config: dict, tags: list[str], files: set[str] | None, gated, supported: set[str]) -> tuple[bool, str | None]:
    """(loads, reason) for a model, by the loader's rules: a model type it builds, with its own
    code (it never runs a repository's), from safetensors weights (pickles only when allowed).
    `files` None: the Hub didn't list them, so the weights go unchecked."""
    model_type = config.get("model_type")
    remote = "auto_map" in config or "custom_code" in tags
    if not isinstance(model_type, str) or not model_type:
        return False, "no model_type in its config.json: not a transformers checkpoint lightpipe can read"
    if model_type not in supported:
        if remote:
            return False, f"needs trust_remote_code: model type {model_type!r} is defined by the repository's own code"
        return False, f"model type {model_type!r} is not supported"
    if (own := own_code_class(config)) is not None:
        return False, f"needs trust_remote_code: its model class {own} is the repository's own code, not {model_type}'s"
    quantization = config.get("quantization_config")
    quantized = (quantization.get("quant_method") if isinstance(quantization, dict) else None) or next(
        (t for t in tags if t in QUANTIZED_TAGS), None)
    if quantized:
        return False, f"quantized checkpoint ({quantized}): lightpipe reads unquantized weights only"
    if files is not None and not _has_weights(files, safe=True):
        if _has_weights(files, safe=False):
            return False, "pickle weights only (pytorch_model.bin, no safetensors): refused unless allow_pickle=True"
        return False, "no weights lightpipe reads (model.safetensors)"
    if gated:
        return True, GATED_NOTE
    return True, None


def own_code_class(config: dict) -> str | None:
    """The class an `auto_map` entry for a model points at when it isn't the library's own class
    for the config's model type — the repository's code defines the network, so the weights
    don't fit lightpipe's family. Repos that once shipped code later upstreamed map to the
    library's class name (Phi-3: model_type phi3, Phi3ForCausalLM), which lightpipe builds itself."""
    model_type = _squash(config["model_type"].removesuffix("_text"))  # gemma3_text → Gemma3ForCausalLM
    for key, target in (config.get("auto_map") or {}).items():
        if not key.startswith("AutoModel") or not isinstance(target, str):
            continue
        cls = target.rsplit(".", 1)[-1]
        stem = re.sub(r"(For[A-Z]\w*|LMHeadModel|MTModel|Model)$", "", cls)
        if _squash(stem) != model_type:
            return cls
    return None


def _has_weights(files: set[str], safe: bool) -> bool:
    """Whether the repo's top level holds a checkpoint the loader reads (repo_files' names)."""
    return any((single in files or index in files) and single.endswith(repo_files.SAFE_SUFFIX) == safe
               for single, index in repo_files.WEIGHTS)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _short(error: OSError) -> str:
    """The cause of a failed request in a few words (requests nests urllib3's reason in its message)."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    text = str(reason or error)
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*", "", text)  # urllib3's object reprs
    return " ".join(text.split()) or type(error).__name__
