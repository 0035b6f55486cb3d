"""config.json → model class → weights from safetensors.

A model family lives in `models/<family>.py` and registers itself with a `Family` record in
the module's `FAMILIES` (models/base.py: the Hub model_types it builds, its Config, its head
classes, its `sanitize`); `FAMILIES` below maps each model_type to that module, imported only
when a checkpoint needs it. The hooks a head class may define (`base_model_prefix`,
`ignore_unexpected`, `tied_weights`, `tie_weights()`, `post_load()`) are documented, with their
defaults, on `models.base.Model`.

The model is built on the meta device (no memory, no random init), the checkpoint is
loaded memory-mapped and assigned in place, and only parameters that a checkpoint
legitimately lacks (a fresh head) are initialised — with a warning, as transformers does.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path

import torch

from . import repo_files
from .models.base import Family, Model

log = logging.getLogger(__name__)

# Hub model_type → the module in lightpipe.models whose FAMILIES record builds it
FAMILIES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "distilbert": "distilbert",
    "mpnet": "mpnet",
    "electra": "electra",
    "modernbert": "modernbert",
    "deberta-v2": "deberta_v2",
    "albert": "albert",
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "bart": "bart",
    "mbart": "bart",
    "t5": "t5",
    "marian": "marian",
}

# architectures[0] suffix → head, for choosing a head when the caller doesn't say
ARCHITECTURE_HEADS = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "masked-lm",
    "ForCausalLM": "causal-lm",
    "LMHeadModel": "causal-lm",
    "ForConditionalGeneration": "seq2seq-lm",
    "MTModel": "seq2seq-lm",
}

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    config = repo_files.read_json(path)
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ValueError(f"{path} has no model_type, so lightpipe can't tell which model it is; "
                         f"supported model types: {sorted(FAMILIES)}")
    return config


def family(config: dict) -> Family:
    """The registered Family record for `config`'s model_type."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"model_type {model_type!r} is not supported by lightpipe; supported: {sorted(FAMILIES)}"
        )
    name = f"lightpipe.models.{FAMILIES[model_type]}"
    module = importlib.import_module(name)
    try:
        records = module.FAMILIES
    except AttributeError:
        records = ()
    for record in records:
        if isinstance(record, Family) and model_type in record.model_types:
            return record
    raise TypeError(f"{name} is registered for model_type {model_type!r} but has no Family record for it "
                    "in its FAMILIES (see lightpipe/models/base.py)")


def checkpoint_head(config: dict) -> str:
    """The head the checkpoint was saved with, from `architectures`."""
    for arch in config.get("architectures") or []:
        for suffix, head in ARCHITECTURE_HEADS.items():
            if arch.endswith(suffix):
                return head
    return "base"


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return check_available(device, device)
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu") if device < 0 else check_available(torch.device("cuda", device), device)
    if isinstance(device, str):
        try:
            return check_available(torch.device(device), device)
        except RuntimeError:
            pass
    raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N', an int or a torch.device, got {device!r}")


def check_available(resolved: torch.device, device) -> torch.device:
    """`resolved`, or a ValueError naming `device` when this machine can't run on it (rather
    than torch's assertion deep inside the first `.to()`)."""
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device={device!r}: CUDA is not available ({why}); use device='cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device={device!r}: there is no CUDA device {resolved.index} "
                             f"({count} visible: cuda:0 to cuda:{count - 1})")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r}: MPS is not available on this machine; use device='cpu'")
    return resolved


def resolve_dtype(dtype, config: dict, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        saved = config.get("torch_dtype") or config.get("dtype") or "float32"
        chosen = DTYPES.get(saved, torch.float32)
        if device.type == "cpu" and chosen == torch.float16:
            return torch.float32  # half matmuls on CPU are slow and lossy; bf16 is fine
        return chosen
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be 'auto', one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}")


def weight_files(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """The checkpoint's weight files: safetensors (single or sharded); pickle only if allowed."""
    files = repo_files.weight_files(folder, allow_pickle)
    if files is None:
        raise FileNotFoundError(f"no model.safetensors (or complete sharded index) in {folder}")
    return files


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Tensors by name from safetensors files, and (when `weight_files` allowed them) from
    pickles that torch.load(weights_only=True) accepts: tensors and plain containers, nothing
    that runs code."""
    import pickle
    import zipfile

    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                state.update(load_file(str(f), device="cpu"))
            except Exception as e:  # SafetensorError: the Rust reader's, naming no file
                if type(e).__name__ != "SafetensorError":
                    raise
                raise ValueError(f"{f} is not a readable safetensors file ({e}); it is corrupt or truncated") from None
            continue
        try:
            # mmap needs torch's zip format; files saved by torch < 1.6 are read into memory
            loaded = torch.load(f, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f))
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise ValueError(
                f"{f} is not a weights-only pickle: torch.load(weights_only=True) refused it (objects other than "
                "tensors, which could run code when loaded, or a corrupt file); convert the checkpoint to safetensors"
            ) from e
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ValueError(f"{f} holds {type(loaded).__name__}, not a dict of tensors (a state dict)")
        state.update(loaded)
    return state


def match_prefix(state: dict, expected: set[str], prefix: str) -> dict:
    """Add or strip the base-model prefix so checkpoint keys line up with the model's."""
    if not prefix:
        return state
    dotted = prefix + "."
    has_prefix = any(k.startswith(dotted) for k in state)
    wants_prefix = any(k.startswith(dotted) for k in expected)
    if has_prefix and not wants_prefix:  # a head checkpoint loaded as a base model
        return {k[len(dotted):]: v for k, v in state.items() if k.startswith(dotted)} | {
            k: v for k, v in state.items() if not k.startswith(dotted) and k in expected
        }
    if wants_prefix and not has_prefix:  # a base checkpoint loaded under a head
        return {(k if k in expected else dotted + k): v for k, v in state.items()}
    return state


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Random init of meta tensors: skipped. It is wasted work there, and the first `normal_`
    on a meta tensor imports torch._dynamo — seconds of every fresh process's start-up.
    (A function mode, not a patched `torch.nn.init`: it is local to the loading thread.)"""

    RANDOM = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.exponential_, torch.Tensor.erfinv_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        in_place_init = getattr(func, "__module__", None) == "torch.nn.init" and func.__name__.endswith("_")
        if func in self.RANDOM or in_place_init:
            tensor = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by name
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def load_model(folder, head: str | None = None, *, dtype=None, device=None, allow_pickle: bool = False):
    """Build the model of the checkpoint in `folder` with `head` and fill it with its weights.

    Returns (model, config dict). The model is in eval mode on `device` in `dtype`.
    """
    folder = Path(folder)
    config = read_config(folder)
    fam = family(config)
    head = head or checkpoint_head(config)
    if head not in fam.heads:
        raise ValueError(
            f"{config['model_type']} models have no {head!r} head in lightpipe; available: {sorted(fam.heads)}"
        )
    cls = fam.heads[head]
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, config, device)

    with torch.device("meta"), _SkipRandomInit():
        model: Model = cls(fam.config.from_dict(config))
    expected = set(model.state_dict())

    state = fam.sanitize(read_weights(weight_files(folder, allow_pickle)))
    saved_head = checkpoint_head(config)
    state = match_prefix(state, expected, cls.base_model_prefix)
    # weights a checkpoint may carry that this class never uses (e.g. BERT's pooler): skip silently
    ignored = cls.ignore_unexpected
    if ignored:
        state = {k: v for k, v in state.items() if k in expected or not any(p in k for p in ignored)}

    unexpected = sorted(set(state) - expected)
    if unexpected:
        if head != saved_head:
            # e.g. the MLM head of a checkpoint loaded as a base model for embeddings
            log.info("ignoring %d weights of the checkpoint's %s head", len(unexpected), saved_head)
            state = {k: v for k, v in state.items() if k in expected}
        else:
            raise ValueError(f"checkpoint in {folder} has weights the model doesn't use: {unexpected[:10]}")

    tied = set(model.tied_weights)
    missing = sorted(expected - set(state) - tied)
    # Only a head on top of a base model may be fresh; a missing base weight is an error.
    dotted = cls.base_model_prefix + "."
    has_head = dotted != "." and any(k.startswith(dotted) for k in expected)
    base_missing = [k for k in missing if k.startswith(dotted)] if has_head else missing
    if base_missing:
        raise ValueError(f"checkpoint in {folder} lacks weights the model needs: {base_missing[:10]}")
    model.load_state_dict(state, strict=False, assign=True)
    if missing:
        warnings.warn(
            f"Some weights of {cls.__name__} were not in the checkpoint at {folder} and are newly initialized: "
            f"{missing}. You should probably fine-tune this model before using it for predictions.",
            stacklevel=2,
        )
        init_fresh(model, missing, config.get("initializer_range", 0.02))
    model.tie_weights()

    model = model.to(device=device, dtype=dtype)
    model.post_load()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, config


def init_fresh(model: torch.nn.Module, names: list[str], std: float) -> None:
    """Give parameters the checkpoint lacked real storage: normal(0, std) weights, zero biases."""
    for name in names:
        module_name, _, param_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        old = getattr(module, param_name)
        fresh = torch.empty(old.shape, dtype=torch.float32)
        if param_name == "bias" or old.dim() == 1 and "norm" not in module_name.lower():
            fresh.zero_()
        elif "norm" in module_name.lower():
            fresh.fill_(1.0)
        else:
            fresh.normal_(0.0, std)
        setattr(module, param_name, torch.nn.Parameter(fresh, requires_grad=False))
