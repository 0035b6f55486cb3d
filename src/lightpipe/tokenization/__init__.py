"""Tokenizers: one interface (base.Tokenizer) and `load(folder, model_type)`.

- base.py    the interface pipelines may call, and the helpers every tokenizer shares
- fast.py    FastTokenizer, over a `tokenizers.Tokenizer` (tokenizer.json, vocab.txt, BPE files)
- spiece.py  sentencepiece models (T5's, ALBERT's and Pegasus's spiece.model, DeBERTa's
             spm.model, NLLB's sentencepiece.bpe.model) → a `tokenizers.Tokenizer` (no
             sentencepiece needed), and those classes' default special tokens
- marian.py  MarianTokenizer: source.spm/target.spm + vocab.json (needs sentencepiece)
- m2m100.py  M2M100Tokenizer: vocab.json + sentencepiece.bpe.model (needs sentencepiece)
- languages.py  NLLB's and M2M100's language codes
- chat.py    chat templates, rendered as transformers renders them

Named `tokenization` so that it never shadows the `tokenizers` library.
"""

from __future__ import annotations

from pathlib import Path

from .base import Tokenizer, read_config
from .spiece import with_class_defaults

# the files a tokenizer is built from, in the order transformers prefers them
SOURCES = {
    "tokenizer.json": ("tokenizer.json",),
    "vocab.txt": ("vocab.txt",),  # WordPiece (BERT-style)
    "vocab.json + merges.txt": ("vocab.json", "merges.txt"),  # byte-level BPE
    "source.spm + vocab.json": ("source.spm", "vocab.json"),  # Marian
    "spiece.model": ("spiece.model",),  # T5 or ALBERT saved by the slow tokenizer
    "spm.model": ("spm.model",),  # DeBERTa-v2/v3
    "sentencepiece.bpe.model": ("sentencepiece.bpe.model",),  # NLLB saved by the slow tokenizer
}


def load(folder, model_type: str | None = None) -> Tokenizer:
    """The tokenizer saved in `folder`; `model_type` (config.json's) picks the post-processing
    transformers' class for it would apply when the files don't say."""
    folder = Path(folder)
    raw = read_config(folder)
    from .m2m100 import is_m2m100

    if is_m2m100(folder, raw, model_type):  # a slow-only class: checked before tokenizer.json
        from .m2m100 import M2M100Tokenizer

        return M2M100Tokenizer(folder, raw, model_type)
    source = next((name for name, files in SOURCES.items() if all((folder / f).is_file() for f in files)), None)
    if source is None:
        raise FileNotFoundError(
            f"no tokenizer in {folder}: expected tokenizer.json, vocab.txt, vocab.json + merges.txt, "
            "source.spm + vocab.json (Marian), vocab.json + sentencepiece.bpe.model (M2M100), spiece.model (T5, "
            "ALBERT, Pegasus), spm.model (DeBERTa) or sentencepiece.bpe.model (NLLB)"
        )
    # tokenizer_config.json as transformers' class completes it (albert-base-v2 ships none)
    config = with_class_defaults(raw, model_type)
    if source == "source.spm + vocab.json":
        from .marian import MarianTokenizer

        return MarianTokenizer(folder, config, model_type)
    from .fast import FastTokenizer, backend_from_files

    return FastTokenizer(backend_from_files(folder, source, config, model_type), config, model_type)


__all__ = ["Tokenizer", "load"]
