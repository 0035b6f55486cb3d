"""Tiny random checkpoints for tests, built with transformers 4.57.6 exactly as a user's
`save_pretrained` would write them, with tokenizers trained on Python's own docs text."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    """Paragraphs of real English text from Python's bundled documentation."""
    from pydoc_data.topics import topics

    paragraphs = []
    for text in topics.values():
        paragraphs += [re.sub(r"\s+", " ", p).strip() for p in text.split("\n\n")]
    return tuple(p for p in paragraphs if 20 < len(p) < 2000)


def sentences(n: int, start: int = 0) -> list[str]:
    """`n` real sentences of varied length."""
    out = []
    for p in corpus()[start:]:
        out += [s.strip() for s in re.split(r"(?<=[.!?]) ", p) if len(s.split()) >= 3]
        if len(out) >= n:
            return out[:n]
    return out


def wordpiece_tokenizer(folder: Path, vocab_size: int = 400, lowercase: bool = True, kind: str = "bert"):
    """BERT-style WordPiece: vocab.txt + tokenizer.json + tokenizer_config.json
    (`kind="distilbert"`: DistilBERT's, which gives no token_type_ids)."""
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertTokenizerFast, DistilBertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=lowercase)
    trainer.train_from_iterator(corpus(), vocab_size=vocab_size, min_frequency=1)
    trainer.save_model(str(folder))
    cls = DistilBertTokenizerFast if kind == "distilbert" else BertTokenizerFast
    tok = cls(str(folder / "vocab.txt"), do_lower_case=lowercase, model_max_length=128)
    tok.save_pretrained(folder)
    return tok


def bpe_tokenizer(folder: Path, kind: str = "roberta", vocab_size: int = 500):
    """Byte-level BPE: vocab.json + merges.txt + tokenizer.json (RoBERTa- or GPT-2-style)."""
    from tokenizers.implementations import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast, RobertaTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if kind == "roberta" else ["<|endoftext|>"]
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    trainer.save_model(str(folder))
    cls = RobertaTokenizerFast if kind == "roberta" else GPT2TokenizerFast
    tok = cls(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=128)
    tok.save_pretrained(folder)
    return tok


def save_checkpoint(folder: Path, model, tokenizer=None) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def seeded(seed: int = 0):
    torch.manual_seed(seed)


ENCODER_HEADS = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
}


def encoder_config(model_type: str, tokenizer, **overrides):
    """A tiny config (2 layers, width 32) for bert / roberta / xlm-roberta / distilbert."""
    from transformers import AutoConfig

    vocab = len(tokenizer)
    if model_type == "distilbert":
        kw = dict(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128,
                  pad_token_id=tokenizer.pad_token_id)
    else:
        kw = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
        if model_type in ("roberta", "xlm-roberta", "camembert"):
            kw.update(max_position_embeddings=128 + tokenizer.pad_token_id + 1, type_vocab_size=1,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def encoder_checkpoint(folder: Path, model_type: str = "bert", head: str = "sequence-classification",
                       seed: int = 0, **overrides) -> Path:
    """A tiny random encoder checkpoint with its tokenizer (WordPiece for bert/distilbert,
    byte-level BPE for roberta-style), saved as transformers saves it."""
    import transformers

    folder = Path(folder)
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        tokenizer = bpe_tokenizer(folder, "roberta")
    else:
        tokenizer = wordpiece_tokenizer(folder, lowercase=overrides.pop("lowercase", True), kind=model_type)
    config = encoder_config(model_type, tokenizer, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, ENCODER_HEADS[head]).from_config(config)
    # random init leaves classifier outputs near-uniform; widen them so labels and ties are decisive
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "classifier" in name or "qa_outputs" in name:
                p.normal_(0, 0.5)
    return save_checkpoint(folder, model.eval(), tokenizer)
