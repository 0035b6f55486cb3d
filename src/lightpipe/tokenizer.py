"""A thin wrapper over `tokenizers.Tokenizer` with what pipelines need from transformers' fast
tokenizers: special tokens, pairs, truncation with overflow, offsets, decoding, chat templates.

Sources, in transformers' order: tokenizer.json; else vocab.txt (WordPiece, BERT-style);
else vocab.json + merges.txt (byte-level BPE). Special tokens and model_max_length come from
tokenizer_config.json and special_tokens_map.json.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from tokenizers import Encoding
from tokenizers import Tokenizer as Backend

from .repo_files import read_json

VERY_LARGE = int(1e30)  # transformers' "no limit" model_max_length
MAX_TRUNCATING_COPIES = 16  # distinct (max_length, stride, strategy) settings kept ready; QA varies them per call
SPECIAL_NAMES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def _token_text(value) -> str | None:
    """Special tokens are saved either as a string or as an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def clean_up_tokenization(text: str) -> str:
    """transformers' cleanup of spaces before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class Tokenizer:
    def __init__(self, backend: Backend, config: dict, model_type: str | None = None):
        self.backend = backend
        self.config = config
        self.model_type = model_type
        # Truncation lives on a `tokenizers.Tokenizer`, and changing it while another thread encodes
        # fails ("Already borrowed") or cuts that thread's texts. So `backend` is never changed after
        # loading: each truncation setting gets its own copy, made once and then only read.
        self._truncating: dict[tuple, Backend] = {}
        self._copies_lock = threading.Lock()
        for name in SPECIAL_NAMES:
            token = _token_text(config.get(f"{name}_token"))
            setattr(self, f"{name}_token", token)
            setattr(self, f"{name}_token_id", backend.token_to_id(token) if token is not None else None)
        self.model_max_length = int(config.get("model_max_length") or VERY_LARGE)
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.padding_side = config.get("padding_side", "right")
        self.chat_template = config.get("chat_template")
        self.all_special_ids = set(self._special_added_ids()) | {
            i for name in SPECIAL_NAMES if (i := getattr(self, f"{name}_token_id")) is not None
        }

    # -- loading --------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder, model_type: str | None = None) -> "Tokenizer":
        folder = Path(folder)
        config = read_json(folder / "tokenizer_config.json", missing={})
        for key, value in read_json(folder / "special_tokens_map.json", missing={}).items():
            config.setdefault(key, value)
        if (folder / "chat_template.jinja").is_file():
            config.setdefault("chat_template", (folder / "chat_template.jinja").read_text(encoding="utf-8"))
        if (folder / "tokenizer.json").is_file():
            with _unreadable(folder / "tokenizer.json"):
                backend = Backend.from_file(str(folder / "tokenizer.json"))
            _bos_eos_post_processor(backend, config, model_type)
        elif (folder / "vocab.txt").is_file():
            with _unreadable(folder / "vocab.txt"):
                backend = _wordpiece(folder / "vocab.txt", config)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            with _unreadable(folder / "vocab.json", folder / "merges.txt"):
                backend = _byte_level_bpe(folder, config, model_type)
        elif (folder / "source.spm").is_file() and (folder / "vocab.json").is_file():
            from .spm_tokenizer import MarianTokenizer  # Marian: sentencepiece + vocab.json, own class

            return MarianTokenizer.from_folder(folder, config, model_type)
        elif (folder / "spiece.model").is_file():
            from .spm_tokenizer import spiece_backend  # T5 saved by the slow tokenizer

            backend = spiece_backend(folder / "spiece.model", config, model_type)
        else:
            raise FileNotFoundError(
                f"no tokenizer in {folder}: expected tokenizer.json, vocab.txt, vocab.json + merges.txt, "
                "source.spm + vocab.json (Marian) or spiece.model (T5)"
            )
        backend.no_padding()
        backend.no_truncation()
        return cls(backend, config, model_type)

    def _special_added_ids(self):
        return [i for i, t in self.backend.get_added_tokens_decoder().items() if t.special]

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
        """Encode texts (or text pairs). `truncation`: False, True/"longest_first",
        "only_first" or "only_second"; overflowing windows are in `encoding.overflowing`."""
        inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
        if not truncation:
            return self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        strategy = "longest_first" if truncation is True else truncation
        if strategy not in ("longest_first", "only_first", "only_second"):
            raise ValueError(f"truncation must be a bool, 'longest_first', 'only_first' or 'only_second', got {truncation!r}")
        limit = max_length or self.model_max_length
        backend = self._truncating_backend(limit, stride, strategy)
        return backend.encode_batch(inputs, add_special_tokens=add_special_tokens)

    def _truncating_backend(self, max_length: int, stride: int, strategy: str) -> Backend:
        """A copy of the backend with this truncation enabled, shared by every call that asks for it."""
        key = (max_length, stride, strategy)
        backend = self._truncating.get(key)
        if backend is not None:
            return backend
        with self._copies_lock:
            if (backend := self._truncating.get(key)) is None:
                backend = Backend.from_str(self.backend.to_str())
                backend.enable_truncation(max_length, stride=stride, strategy=strategy)
                if len(self._truncating) >= MAX_TRUNCATING_COPIES:  # drop the oldest; its users keep their reference
                    del self._truncating[next(iter(self._truncating))]
                self._truncating[key] = backend
        return backend

    def encode(self, text: str, pair: str | None = None, **kwargs) -> Encoding:
        return self.encode_batch([text], None if pair is None else [pair], **kwargs)[0]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self.backend.num_special_tokens_to_add(pair)

    # -- decoding -------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return [self.decode(ids, **kwargs) for ids in sequences]

    def convert_ids_to_tokens(self, ids):
        return [self.backend.id_to_token(int(i)) for i in ids]

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- chat -----------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **extra) -> str:
        """Render messages with the checkpoint's jinja chat template, as transformers does."""
        template = self.chat_template
        if isinstance(template, list):  # named templates: use "default"
            template = {t["name"]: t["template"] for t in template}.get("default")
        if not template:
            raise ValueError(
                "this model's tokenizer has no chat_template, so chat messages can't be rendered; "
                "pass a plain string prompt instead"
            )
        from .chat import render_chat

        # only the tokens this tokenizer has, as transformers' special_tokens_map: an unset one is
        # undefined in the template (renders ""), not None (renders "None")
        specials = {f"{n}_token": t for n in SPECIAL_NAMES if (t := getattr(self, f"{n}_token")) is not None}
        return render_chat(template, messages, add_generation_prompt=add_generation_prompt, **specials, **extra)


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
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    if (add_bos and bos is None) or (add_eos and eos is None):
        return  # transformers refuses these; keep tokenizer.json's own
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    specials = [(t, backend.token_to_id(t)) for t, add in ((bos, add_bos), (eos, add_eos)) if add]
    if any(i is None for _, i in specials):
        return  # a special token missing from the vocabulary: keep tokenizer.json's own
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


def _wordpiece(vocab: Path, config: dict) -> Backend:
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(
        str(vocab),
        lowercase=config.get("do_lower_case", True),
        strip_accents=config.get("strip_accents"),
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        unk_token=_token_text(config.get("unk_token")) or "[UNK]",
        sep_token=_token_text(config.get("sep_token")) or "[SEP]",
        cls_token=_token_text(config.get("cls_token")) or "[CLS]",
        pad_token=_token_text(config.get("pad_token")) or "[PAD]",
        mask_token=_token_text(config.get("mask_token")) or "[MASK]",
    )
    return tok._tokenizer


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
    specials = [t for n in SPECIAL_NAMES if (t := _token_text(config.get(f"{n}_token")))]
    backend.add_special_tokens(list(dict.fromkeys(specials)))
    if roberta_like:  # <s> A </s></s> B </s>
        bos, eos = _token_text(config.get("cls_token")) or "<s>", _token_text(config.get("sep_token")) or "</s>"
        backend.post_processor = processors.RobertaProcessing(
            (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)),
            add_prefix_space=config.get("add_prefix_space", False), trim_offsets=config.get("trim_offsets", True),
        )
    return backend
