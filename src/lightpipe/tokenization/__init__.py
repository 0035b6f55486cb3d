"""Tokenizers: one interface (base.Tokenizer) and `load(folder, model_type)`.

- base.py    the interface pipelines may call, and the helpers every tokenizer shares
- fast.py    FastTokenizer, over a `tokenizers.Tokenizer` (tokenizer.json, vocab.txt, BPE files)
- spiece.py  sentencepiece models (T5's and ALBERT's spiece.model, DeBERTa's spm.model) → a
             `tokenizers.Tokenizer` (no sentencepiece needed), and those classes' default
             special tokens
- marian.py  MarianTokenizer: source.spm/target.spm + vocab.json (needs sentencepiece)
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
}


def load(folder, model_type: str | None = None) -> Tokenizer:
    """The tokenizer saved in `folder`; `model_type` (config.json's) picks the post-processing
    transformers' class for it would apply when the files don't say."""
    folder = Path(folder)
    source = next((name for name, files in SOURCES.items() if all((folder / f).is_file() for f in files)), None)
    if source is None:
        raise FileNotFoundError(
            f"no tokenizer in {folder}: expected tokenizer.json, vocab.txt, vocab.json + merges.txt, "
            "source.spm + vocab.json (Marian), spiece.model (T5, ALBERT) or spm.model (DeBERTa)"
        )
    # tokenizer_config.json as transformers' class completes it (albert-base-v2 ships none)
    config = with_class_defaults(read_config(folder), model_type)
    if source == "source.spm + vocab.json":
        from .marian import MarianTokenizer

        return MarianTokenizer(folder, config, model_type)
    from .fast import FastTokenizer, backend_from_files

    return FastTokenizer(backend_from_files(folder, source, config, model_type), config, model_type)


__all__ = ["Tokenizer", "load"]
