"""lightpipe's tokenizer over a `tokenizers.Tokenizer`, with what pipelines need from
transformers' fast tokenizers: special tokens, pairs, truncation with overflow, offsets, decoding.

`backend_from_files` builds the `tokenizers.Tokenizer` from a folder's files, as transformers
does: tokenizer.json; else vocab.txt (WordPiece, BERT-style); else vocab.json + merges.txt
(byte-level BPE); else a sentencepiece model (T5's or ALBERT's spiece.model, DeBERTa's spm.model),
converted (spiece.py).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from tokenizers import Encoding
from tokenizers import Tokenizer as Backend

from .base import SPECIAL_NAMES, VERY_LARGE, Tokenizer, token_text, truncation_strategy

MAX_TRUNCATING_COPIES = 16  # distinct (max_length, stride, strategy) settings kept ready; QA varies them per call


class FastTokenizer(Tokenizer):
    def __init__(self, backend: Backend, config: dict, model_type: str | None = None):
        # only this package reaches the backend: pipelines use the Tokenizer interface
        self._backend = backend
        self.config = config
        self.model_type = model_type
        # Truncation lives on a `tokenizers.Tokenizer`, and changing it while another thread encodes
        # fails ("Already borrowed") or cuts that thread's texts. So the backend is never changed after
        # loading: each truncation setting gets its own copy, made once and then only read.
        self._truncating: dict[tuple, Backend] = {}
        self._copies_lock = threading.Lock()
        for name in SPECIAL_NAMES:
            token = token_text(config.get(f"{name}_token"))
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", backend.token_to_id(token) if token is not None else None)
        self.model_max_length = int(config.get("model_max_length") or VERY_LARGE)
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.padding_side = config.get("padding_side", "right")
        self.chat_template = config.get("chat_template")
        special_added = [i for i, t in backend.get_added_tokens_decoder().items() if t.special]
        self.all_special_ids = set(special_added) | {
            i for name in SPECIAL_NAMES if (i := getattr(self, f"{name}_token_id")) is not None
        }

    # -- encoding -------------------------------------------------------------------------

    def encode_batch(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: bool | str = False,
        max_length: int | None = None,
        stride: int = 0,
    ) -> list[Encoding]:
        inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
        strategy = truncation_strategy(truncation)
        if strategy is None:
            return self._backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        backend = self._truncating_backend(max_length or self.model_max_length, stride, strategy)
        return backend.encode_batch(inputs, add_special_tokens=add_special_tokens)

    def _truncating_backend(self, max_length: int, stride: int, strategy: str) -> Backend:
        """A copy of the backend with this truncation enabled, shared by every call that asks for it."""
        key = (max_length, stride, strategy)
        backend = self._truncating.get(key)
        if backend is not None:
            return backend
        with self._copies_lock:
            if (backend := self._truncating.get(key)) is None:
                backend = Backend.from_str(self._backend.to_str())
                backend.enable_truncation(max_length, stride=stride, strategy=strategy)
                if len(self._truncating) >= MAX_TRUNCATING_COPIES:  # drop the oldest; its users keep their reference
                    del self._truncating[next(iter(self._truncating))]
                self._truncating[key] = backend
        return backend

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._backend.num_special_tokens_to_add(pair)

    # -- vocabulary and words -------------------------------------------------------------

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self._backend.id_to_token(int(index))

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def subword_prefix(self) -> str | None:
        return getattr(self._backend.model, "continuing_subword_prefix", None) or None

    def tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def lowercased(self) -> "FastTokenizer":
        """A copy whose normalizer lowercases first (this one, when it already lowercases)."""
        from tokenizers import normalizers

        current = self._backend.normalizer
        parts = list(current) if isinstance(current, normalizers.Sequence) else [] if current is None else [current]
        if any(isinstance(p, normalizers.Lowercase) for p in parts):
            return self
        backend = Backend.from_str(self._backend.to_str())
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *parts])
        return FastTokenizer(backend, self.config, self.model_type)

    # -- decoding -------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._cleaned(self._backend.decode(ids, skip_special_tokens=skip_special_tokens),
                             clean_up_tokenization_spaces)


def backend_from_files(folder: Path, source: str, config: dict, model_type: str | None) -> Backend:
    """The `tokenizers.Tokenizer` of `folder` from its `source` files (see load())."""
    if source == "tokenizer.json":
        with _unreadable(folder / "tokenizer.json"):
            backend = Backend.from_file(str(folder / "tokenizer.json"))
        _bos_eos_post_processor(backend, config, model_type)
    elif source == "vocab.txt":
        with _unreadable(folder / "vocab.txt"):
            backend = _wordpiece(folder / "vocab.txt", config, model_type)
    elif source == "vocab.json + merges.txt":
        with _unreadable(folder / "vocab.json", folder / "merges.txt"):
            backend = _byte_level_bpe(folder, config, model_type)
    elif source in ("spiece.model", "spm.model"):
        from .spiece import sentencepiece_backend  # T5 / ALBERT / DeBERTa saved by the slow tokenizer

        backend = sentencepiece_backend(folder / source, config, model_type)
    else:
        raise ValueError(f"unknown tokenizer source {source!r}")
    backend.no_padding()
    backend.no_truncation()
    return backend


@contextlib.contextmanager
def _unreadable(*paths: Path):
    """The tokenizers library's errors on a corrupt file (a bare Rust `Exception`) → a ValueError
    naming the file."""
    try:
        yield
    except Exception as e:
        if type(e) is not Exception:  # ours, or Python's: already clear
            raise
        names = " / ".join(str(p) for p in paths)
        raise ValueError(f"{names} could not be read as a tokenizer ({e}); the file is corrupt, truncated "
                         "or from an unsupported tokenizers version") from None


# transformers' tokenizer classes that rebuild tokenizer.json's post-processor when they load, from
# tokenizer_config's add_bos_token / add_eos_token (defaults here), and the model types that get
# them when tokenizer_config names no class
BOS_EOS_CLASSES = {"LlamaTokenizer": (True, False), "CodeLlamaTokenizer": (True, False),
                   "GemmaTokenizer": (True, False), "CohereTokenizer": (True, False),
                   "GPTNeoXTokenizer": (False, False)}
BOS_EOS_MODEL_TYPES = {"llama": "LlamaTokenizer", "mistral": "LlamaTokenizer", "mixtral": "LlamaTokenizer",
                       "gemma": "GemmaTokenizer", "cohere": "CohereTokenizer", "gpt_neox": "GPTNeoXTokenizer"}


def _bos_eos_post_processor(backend: Backend, config: dict, model_type: str | None) -> None:
    """BOS/EOS as transformers' Llama-family classes add them ("<s> $A" for Llama 2 and
    Mistral), which may differ from tokenizer.json's when only one of the two files was edited."""
    from tokenizers import processors

    name = (config.get("tokenizer_class") or BOS_EOS_MODEL_TYPES.get(model_type) or "").removesuffix("Fast")
    if name not in BOS_EOS_CLASSES:
        return
    add_bos = config.get("add_bos_token", BOS_EOS_CLASSES[name][0])
    add_eos = config.get("add_eos_token", BOS_EOS_CLASSES[name][1])
    bos, eos = token_text(config.get("bos_token")), token_text(config.get("eos_token"))
    if (add_bos and bos is None) or (add_eos and eos is None):
        return  # transformers refuses these; keep tokenizer.json's own
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    specials = [(t, backend.token_to_id(t)) for t, add in ((bos, add_bos), (eos, add_eos)) if add]
    if any(i is None for _, i in specials):
        return  # a special token missing from the vocabulary: keep tokenizer.json's own
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _wordpiece(vocab: Path, config: dict, model_type: str | None = None) -> Backend:
    from tokenizers import processors
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(
        str(vocab),
        lowercase=config.get("do_lower_case", True),
        strip_accents=config.get("strip_accents"),
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        unk_token=token_text(config.get("unk_token")) or "[UNK]",
        sep_token=token_text(config.get("sep_token")) or "[SEP]",
        cls_token=token_text(config.get("cls_token")) or "[CLS]",
        pad_token=token_text(config.get("pad_token")) or "[PAD]",
        mask_token=token_text(config.get("mask_token")) or "[MASK]",
    )
    backend = tok._tokenizer
    if model_type == "mpnet" or config.get("tokenizer_class", "").removesuffix("Fast") == "MPNetTokenizer":
        # MPNet's pairs have two separators between the texts, as RoBERTa's: <s> A </s></s> B </s>
        cls, sep = token_text(config.get("cls_token")) or "<s>", token_text(config.get("sep_token")) or "</s>"
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))])
    return backend


def _byte_level_bpe(folder: Path, config: dict, model_type: str | None) -> Backend:
    from tokenizers import processors
    from tokenizers.implementations import ByteLevelBPETokenizer

    roberta_like = model_type in ("roberta", "bart", "longformer")
    tok = ByteLevelBPETokenizer.from_file(
        str(folder / "vocab.json"), str(folder / "merges.txt"),
        add_prefix_space=config.get("add_prefix_space", False),
        # transformers' GPT-2 converter keeps the space in offsets; RoBERTa's trims it
        trim_offsets=config.get("trim_offsets", roberta_like),
    )
    backend = tok._tokenizer
    specials = [t for n in SPECIAL_NAMES if (t := token_text(config.get(f"{n}_token")))]
    backend.add_special_tokens(list(dict.fromkeys(specials)))
    if roberta_like:  # <s> A </s></s> B </s>
        bos, eos = token_text(config.get("cls_token")) or "<s>", token_text(config.get("sep_token")) or "</s>"
        backend.post_processor = processors.RobertaProcessing(
            (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)),
            add_prefix_space=config.get("add_prefix_space", False), trim_offsets=config.get("trim_offsets", True),
        )
    return backend
