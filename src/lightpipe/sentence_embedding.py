"""sentence-transformers checkpoints, run without sentence-transformers.

A checkpoint in its format lists its modules in modules.json; `encode()` runs them in order:
Transformer (tokenize: prompt prepended, lowercased if `do_lower_case`, cut at `max_seq_length`;
then the model's last hidden state) → Pooling → Dense… → Normalize, and then `truncate_dim`.
This file reads that chain and runs everything after the model, per text, with
sentence-transformers 5.x's semantics (read from its source, not imported).

Only the four modules above are understood, recognised by their class name in modules.json;
lightpipe never imports or runs a module's code. Any other module (CNN, LSTM, WordEmbeddings,
a custom class, ...) is an error naming it, never a silent fallback. Both of sentence-transformers'
on-disk formats are read: the classic one (`sentence_transformers.models.X`, `pooling_mode_*`
flags, max_seq_length / do_lower_case in sentence_bert_config.json) and v5's (full class paths,
`pooling_mode`, max_seq_length saved as the tokenizer's model_max_length and lowercasing as its
normalizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .repo_files import inside, read_json

MODULE_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")
# the classic flags, in the order sentence-transformers concatenates the modes they switch on
LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(LEGACY_POOLING_FLAGS.values())
# Dense's activation_function as saved (the class path) → the function; a missing one is Tanh
ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": torch.relu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
    "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.SiLU": F.silu,
}
# where the Transformer module's settings live (sentence-transformers tries these in order)
TRANSFORMER_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                       "sentence_camembert_config.json", "sentence_albert_config.json",
                       "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")
# encode_query / encode_document names that sentence-transformers 5 always knows (empty unless saved)
DEFAULT_PROMPTS = {"query": "", "document": ""}


def _read_json(path: Path) -> dict:
    return read_json(path, missing={})


def _module_folder(folder: Path, entry: dict) -> Path:
    """A module's folder, named by modules.json: it must stay inside the checkpoint."""
    return inside(folder, entry.get("path") or ".", folder / "modules.json")


class UnsupportedModuleError(ValueError):
    """A module in modules.json that lightpipe can't run."""


# -- the modules after the model ---------------------------------------------------------

@dataclass
class Pooling:
    modes: tuple[str, ...]
    include_prompt: bool = True

    @classmethod
    def from_config(cls, config: dict, where: str) -> "Pooling":
        modes = config.get("pooling_mode")
        if modes is None:  # classic flags; none set means mean, as sentence-transformers reads it
            modes = [mode for flag, mode in LEGACY_POOLING_FLAGS.items() if config.get(flag)] or ["mean"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown or not modes:
            raise UnsupportedModuleError(f"{where}: pooling mode(s) {unknown} unknown; known: {POOLING_MODES}")
        return cls(modes, bool(config.get("include_prompt", True)))

    def __call__(self, hidden: torch.Tensor, prompt_length: int | None = None) -> torch.Tensor:
        """(T, D) hidden states of one text's real tokens → (len(modes) * D,). The prompt's
        tokens (the first `prompt_length`) are left out when include_prompt is False."""
        first = prompt_length if prompt_length and not self.include_prompt else 0
        seen = hidden[first:] if first else hidden  # the tokens pooling sees, (n, D)
        n = seen.shape[0]
        # With no token left (a prompt filling the input) these give what sentence-transformers'
        # masked batch gives: cls the first token, max -inf, the means and lasttoken zeros.
        out = []
        for mode in self.modes:
            if mode == "cls":
                out.append(seen[0] if n else hidden[0])
            elif mode == "max":
                out.append(seen.max(0).values if n else torch.full_like(hidden[0], float("-inf")))
            elif mode == "mean":
                out.append(seen.mean(0) if n else torch.zeros_like(hidden[0]))
            elif mode == "mean_sqrt_len_tokens":
                out.append(seen.sum(0) / max(n, 1e-9) ** 0.5)
            elif mode == "weightedmean":  # position i of the input (from 1) weighs i
                weights = torch.arange(first + 1, hidden.shape[0] + 1, dtype=hidden.dtype)
                out.append((seen * weights[:, None]).sum(0) / max(float(weights.sum()), 1e-9))
            else:  # lasttoken
                out.append(seen[-1] if n else torch.zeros_like(hidden[0]))
        return out[0] if len(out) == 1 else torch.cat(out)


@dataclass
class Dense:
    weight: torch.Tensor  # (out_features, in_features)
    bias: torch.Tensor | None
    activation: object

    @classmethod
    def load(cls, folder: Path, where: str, allow_pickle: bool) -> "Dense":
        from .loading import read_weights, weight_files

        config = _read_json(folder / "config.json")
        if not config:
            raise FileNotFoundError(f"{where}: no config.json in {folder}")
        for key in ("module_input_name", "module_output_name"):
            if config.get(key, "sentence_embedding") not in ("sentence_embedding", None):
                raise UnsupportedModuleError(f"{where}: a Dense on {config[key]!r} is not supported "
                                             "(only on the sentence embedding, after Pooling)")
        name = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if name not in ACTIVATIONS:
            raise UnsupportedModuleError(f"{where}: activation_function {name!r} is not supported; "
                                         f"supported: {sorted(ACTIVATIONS)}")
        try:
            files = weight_files(folder, allow_pickle)
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no model.safetensors in {folder}; a pickled pytorch_model.bin is read "
                                    "only with allow_pickle=True, and fetched from the Hub only by a download with it "
                                    "(`lightpipe download MODEL --allow-pickle`)") from None
        state = read_weights(files)
        shape = (config["out_features"], config["in_features"])
        weight, bias = state.pop("linear.weight", None), state.pop("linear.bias", None)
        if weight is None or tuple(weight.shape) != shape:
            raise ValueError(f"{where}: expected linear.weight of shape {shape} in {folder}, "
                             f"got {None if weight is None else tuple(weight.shape)}")
        if config.get("bias", True) != (bias is not None) or state:
            raise ValueError(f"{where}: weights in {folder} don't match its config.json (bias={config.get('bias', True)}): "
                             f"bias {'present' if bias is not None else 'missing'}, unexpected {sorted(state)}")
        return cls(weight.float(), None if bias is None else bias.float(), ACTIVATIONS[name])

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(F.linear(x, self.weight, self.bias))


class Normalize:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1)


# -- the chain ---------------------------------------------------------------------------

@dataclass
class SentenceModel:
    tokenizer: object  # the pipeline's, or a copy that lowercases first (do_lower_case)
    max_seq_length: int
    pooling: Pooling
    steps: list = field(default_factory=list)  # Dense / Normalize, in modules.json order
    dimension: int = 0  # of the chain's output
    prompts: dict = field(default_factory=dict)
    default_prompt_name: str | None = None
    truncate_dim: int | None = None  # the checkpoint's default
    name: str = "the model"
    _prompt_lengths: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, folder, tokenizer, config: dict, *, max_positions: int | None, name: str = "",
             allow_pickle: bool = False) -> "SentenceModel":
        """The chain of the checkpoint in `folder`; without modules.json, what
        sentence-transformers builds for a plain checkpoint (mean pooling; last-token for a causal LM)."""
        folder = Path(folder)
        name = name or str(folder)
        hidden = next((config[k] for k in ("hidden_size", "dim", "d_model", "n_embd") if config.get(k)), None)
        limit = max_positions or 10**9
        st_config = _read_json(folder / "config_sentence_transformers.json")
        kind = st_config.get("model_type", "SentenceTransformer")
        if kind != "SentenceTransformer":
            raise UnsupportedModuleError(f"{name} is a sentence-transformers {kind}, not a SentenceTransformer "
                                         "(embedding) model; lightpipe can't run it as feature-extraction")
        prompts = {**DEFAULT_PROMPTS, **{k: v or "" for k, v in (st_config.get("prompts") or {}).items()}}
        default_prompt = st_config.get("default_prompt_name")
        if default_prompt is not None and default_prompt not in prompts:
            raise ValueError(f"{name}: default_prompt_name {default_prompt!r} is not one of its prompts {sorted(prompts)}")
        common = dict(prompts=prompts, default_prompt_name=default_prompt, truncate_dim=st_config.get("truncate_dim"),
                      name=name)

        modules_path = folder / "modules.json"
        if not modules_path.is_file():
            causal = any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in config.get("architectures") or [])
            pooling = Pooling(("lasttoken",) if causal else ("mean",))
            return cls(tokenizer, min(tokenizer.model_max_length, limit), pooling, dimension=hidden or 0, **common)

        entries = read_json(modules_path, expect=list)
        if not all(isinstance(m, dict) for m in entries):
            raise ValueError(f"{modules_path} must list its modules as JSON objects")
        entries = sorted(entries, key=lambda m: m.get("idx", 0))
        kinds = [_module_kind(m, name) for m in entries]
        if not kinds or kinds[0] != "Transformer":
            raise UnsupportedModuleError(f"{name}: modules.json must start with a Transformer module, got {kinds}")
        if kinds.count("Pooling") != 1 or kinds[1] != "Pooling" or "Transformer" in kinds[1:]:
            raise UnsupportedModuleError(f"{name}: lightpipe runs Transformer → Pooling → (Dense | Normalize)*, "
                                         f"but modules.json has {kinds}")
        tokenizer, max_seq_length = _transformer(folder, entries[0], tokenizer, limit, name)
        where = f"{name}: module {entries[1].get('path')!r}"
        pool_folder = _module_folder(folder, entries[1])
        pool_config = _read_json(pool_folder / "config.json")
        if not pool_config:
            raise FileNotFoundError(f"{where}: no config.json in {pool_folder}")
        pooling = Pooling.from_config(pool_config, where)
        width = pool_config.get("embedding_dimension", pool_config.get("word_embedding_dimension", hidden))
        if hidden and width != hidden:
            raise ValueError(f"{where}: pools {width}-dimensional token embeddings but the model makes {hidden}")
        dimension = (width or 0) * len(pooling.modes)
        steps = []
        for entry, kind in zip(entries[2:], kinds[2:]):
            where = f"{name}: module {entry.get('path')!r}"
            if kind == "Normalize":
                steps.append(Normalize())
                continue
            dense = Dense.load(_module_folder(folder, entry), where, allow_pickle)
            if dimension and dense.in_features != dimension:
                raise ValueError(f"{where}: Dense takes {dense.in_features} inputs but gets {dimension}")
            steps.append(dense)
            dimension = dense.weight.shape[0]
        return cls(tokenizer, max_seq_length, pooling, steps, dimension, **common)

    # -- the Transformer module's input side ------------------------------------------------

    def resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str:
        """The prompt to prepend: `prompt`, else `prompt_name`'s, else the checkpoint's default."""
        if prompt is not None and prompt_name is not None:
            raise ValueError("pass prompt or prompt_name, not both")
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt_name {prompt_name!r} is not one of {self.name}'s prompts: {sorted(self.prompts)}")
            return self.prompts[prompt_name]
        return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""

    def prompt_length(self, prompt: str) -> int:
        """Tokens of the prompt at the start of each input, its leading special token
        included and a trailing one not (how sentence-transformers counts them)."""
        if prompt not in self._prompt_lengths:
            if len(self._prompt_lengths) >= 1024:  # callers' own prompts: keep the cache bounded
                self._prompt_lengths.clear()
            ids = self.tokenizer.encode_batch([prompt], truncation=True, max_length=self.max_seq_length)[0].ids
            self._prompt_lengths[prompt] = len(ids) - (1 if ids and ids[-1] in self.tokenizer.all_special_ids else 0)
        return self._prompt_lengths[prompt]

    def encode(self, texts: list[str], prompt: str = "", truncation=True) -> list:
        """Tokenize as the Transformer module does: the prompt prepended to each text, cut at
        max_seq_length — or, with truncation=False, refused when longer."""
        texts = [prompt + t for t in texts] if prompt else list(texts)
        if truncation:
            return self.tokenizer.encode_batch(texts, truncation=True, max_length=self.max_seq_length)
        encodings = self.tokenizer.encode_batch(texts)
        for text, enc in zip(texts, encodings):
            if len(enc.ids) > self.max_seq_length:
                raise ValueError(
                    f"input has {len(enc.ids)} tokens{' (prompt included)' if prompt else ''} but {self.name} "
                    f"embeds at most max_seq_length={self.max_seq_length}; pass truncation=True to cut it as "
                    f"sentence-transformers does (input starts {text[:40]!r})")
        return encodings

    # -- after the model -------------------------------------------------------------------

    def embed(self, hidden: torch.Tensor, prompt_length: int | None = None) -> torch.Tensor:
        """(T, D) last hidden states of one input's tokens → its sentence embedding."""
        vector = self.pooling(hidden, prompt_length)
        for step in self.steps:
            vector = step(vector)
        return vector


def _module_kind(entry: dict, name: str) -> str:
    """"Transformer" | "Pooling" | "Dense" | "Normalize" from a modules.json entry's class path."""
    path = str(entry.get("type", ""))
    kind = path.rsplit(".", 1)[-1]
    if path.startswith("sentence_transformers.") and kind in MODULE_KINDS:
        return kind
    where = f"module {entry.get('path', entry.get('name'))!r}"
    if not path.startswith("sentence_transformers."):
        raise UnsupportedModuleError(f"{name}: {where} is custom code ({path}); lightpipe never runs a "
                                     f"repository's code and can run only sentence-transformers' {', '.join(MODULE_KINDS)}")
    raise UnsupportedModuleError(f"{name}: {where} is {path}, which lightpipe can't run; "
                                 f"it runs only sentence-transformers' {', '.join(MODULE_KINDS)}")


def _transformer(folder: Path, entry: dict, tokenizer, limit: int, name: str):
    """The Transformer module's settings → (tokenizer to use, max_seq_length)."""
    if entry.get("path", ""):
        raise UnsupportedModuleError(f"{name}: its Transformer module lives in {entry['path']!r}; lightpipe loads "
                                     "the model from the repository root (sentence-transformers' layout since v1)")
    config = next((c for f in TRANSFORMER_CONFIGS if (c := _read_json(folder / f))), {})
    task = config.get("transformer_task", "feature-extraction")
    modality = config.get("modality_config", {"text": {"method": "forward", "method_output_name": "last_hidden_state"}})
    output = config.get("module_output_name", "token_embeddings")
    if task != "feature-extraction" or set(modality) != {"text"} or output != "token_embeddings" \
            or modality["text"].get("method_output_name") != "last_hidden_state":
        raise UnsupportedModuleError(f"{name}: a Transformer module with transformer_task={task!r}, "
                                     f"modality_config={modality}, module_output_name={output!r} is not supported "
                                     "(only text → last_hidden_state)")
    if config.get("processing_kwargs"):
        raise UnsupportedModuleError(f"{name}: the Transformer module's processing_kwargs "
                                     f"{config['processing_kwargs']} are not supported")
    # classic: max_seq_length here overrides the tokenizer's model_max_length; v5 saved it there
    max_seq_length = config.get("max_seq_length") or tokenizer.model_max_length
    if config.get("do_lower_case"):
        tokenizer = _lowercasing(tokenizer, name)
    return tokenizer, min(max_seq_length, limit)


def _lowercasing(tokenizer, name: str):
    """A copy of `tokenizer` that lowercases before its own normalizer, as sentence-transformers
    sets it up for do_lower_case."""
    try:
        return tokenizer.lowercased()
    except NotImplementedError as e:
        raise UnsupportedModuleError(f"{name}: do_lower_case: {e}") from None
