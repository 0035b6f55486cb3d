"""Tiny random checkpoints of the issue-14 seq2seq families — NLLB-200 and M2M100 (m2m_100),
Pegasus, mT5 — with tokenizers shaped like the real repositories' (sentencepiece models trained
here on Python's docs text, tests/tiny.py), written by transformers 4.57.6's save_pretrained.

The tokenizer files a repository ships, as `form`:
  NLLB     "hub"    facebook/nllb-200-distilled-600M's: tokenizer.json + sentencepiece.bpe.model, a
                    tokenizer_config.json with src_lang/tgt_lang/additional_special_tokens null and
                    the codes in special_tokens_map.json
           "saved"  what NllbTokenizerFast.save_pretrained writes (a fine-tune)
           "slow"   the same without tokenizer.json: the sentencepiece model is converted
  M2M100   "hub"    facebook/m2m100_418M's: vocab.json + sentencepiece.bpe.model, the __xx__ codes
                    as special_tokens_map.json's additional special tokens (no tokenizer.json: there
                    is no fast M2M100 tokenizer)
           "saved"  the hub form loaded and saved again by 4.57.6 (a fine-tune)
  Pegasus  "hub"    google/pegasus-xsum's: tokenizer.json + spiece.model, a tokenizer_config naming
                    no class, special_tokens_map.json with <mask_1> and <unk_2>..<unk_102>
           "slow"   spiece.model saved by PegasusTokenizer (no tokenizer.json)
  mT5      "hub"    google/mt5-small's: spiece.model and a tokenizer_config with extra_ids 0
           "saved"  what T5TokenizerFast.save_pretrained writes (tokenizer.json too)
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from tiny import corpus, save_checkpoint, spm_model, write_generation_config

# small shapes shared by every family here
SMALL = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=48, decoder_ffn_dim=48)
SMALL_T5 = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                relative_attention_max_distance=16)
FORMS = {"nllb": ("hub", "saved", "slow"), "m2m100": ("hub", "saved"), "pegasus": ("hub", "slow"),
         "mt5": ("hub", "saved")}


def _check_form(family: str, form: str) -> None:
    if form not in FORMS[family]:
        raise ValueError(f"{family} form must be one of {FORMS[family]}, got {form!r}")


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))


def perturb(model, seed: int = 0, eos_boost: float = 1.0, scale: float = 0.3):
    """Move every weight off its init (norms at 1, biases at 0 and tiny weights would make greedy
    decoding repeat one token whatever the input) and make eos a contender (`eos_boost`), so rows
    end at different lengths. Pegasus's position tables are Parameters in transformers: they keep
    their sinusoidal values, as in every real checkpoint."""
    g = torch.Generator().manual_seed(seed)
    eos = model.config.eos_token_id
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.add_(torch.randn(p.shape, generator=g) * (scale if p.dim() > 1 else 0.1))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=g) * 0.3)
            model.final_logits_bias[0, eos] += eos_boost
        elif hasattr(model, "lm_head"):
            model.lm_head.weight[eos] *= 1.0 + eos_boost
    return model.eval()


# -- NLLB-200 ----------------------------------------------------------------------------------


def nllb_tokenizer(folder: Path, form: str = "hub", legacy_behaviour: bool = False, model_type: str = "bpe"):
    """An NLLB tokenizer: a sentencepiece model (BPE, as NLLB's sentencepiece.bpe.model; spm's own
    ids <unk> 0, <s> 1, </s> 2) with fairseq's ids and the 202 language codes."""
    from transformers import NllbTokenizerFast

    _check_form("nllb", form)
    folder = Path(folder)
    spm = spm_model(folder / "sentencepiece.bpe.model", corpus()[:1500], 300, model_type=model_type)
    tok = NllbTokenizerFast(str(spm), legacy_behaviour=legacy_behaviour, model_max_length=256)
    tok.save_pretrained(folder)
    (folder / "added_tokens.json").unlink(missing_ok=True)
    if form == "slow":
        (folder / "tokenizer.json").unlink()
    elif form == "hub":
        codes = tok.additional_special_tokens
        mask = {"content": "<mask>", "lstrip": True, "normalized": True, "rstrip": False, "single_word": False}
        _write_json(folder / "tokenizer_config.json", {
            "additional_special_tokens": None, "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
            "mask_token": {"__type": "AddedToken", **mask}, "model_max_length": 256, "pad_token": "<pad>",
            "sep_token": "</s>", "sp_model_kwargs": {}, "src_lang": None, "tgt_lang": None,
            "tokenizer_class": "NllbTokenizer", "unk_token": "<unk>",
            **({"legacy_behaviour": True} if legacy_behaviour else {})})
        _write_json(folder / "special_tokens_map.json", {
            "additional_special_tokens": codes, "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>",
            "mask_token": mask, "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"})
    return tok


def nllb_checkpoint(folder: Path, form: str = "hub", seed: int = 0, eos_boost: float = 1.0,
                    legacy_behaviour: bool = False, generation: dict | None = None, **overrides) -> Path:
    """A tiny random NLLB-200 (M2M100ForConditionalGeneration, pre-norm, scaled embeddings) with
    its tokenizer in `form`, config.json naming NllbTokenizer and a vocabulary two wider than the
    tokenizer's, and generation_config.json as facebook/nllb-200-distilled-600M's (max_length
    shortened)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = nllb_tokenizer(folder, form, legacy_behaviour)
    kw = dict(SMALL, vocab_size=len(tok) + 2, max_position_embeddings=256, activation_function="relu",
              scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
              tokenizer_class="NllbTokenizer")
    kw.update(overrides)
    torch.manual_seed(seed)
    model = perturb(M2M100ForConditionalGeneration(M2M100Config(**kw)), seed, eos_boost)
    save_checkpoint(folder, model)
    (folder / "generation_config.json").unlink(missing_ok=True)
    write_generation_config(folder, **{"bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2,
                                       "max_length": 24, "pad_token_id": 1, **(generation or {})})
    return folder


# -- M2M100 ------------------------------------------------------------------------------------


def m2m100_tokenizer(folder: Path, form: str = "hub"):
    """An M2M100 tokenizer: vocab.json (fairseq's <s> <pad> </s> <unk>, then the pieces in an order
    of their own, as fairseq's dictionary is not the sentencepiece model's) + sentencepiece.bpe.model."""
    from transformers import AutoTokenizer
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    import sentencepiece

    _check_form("m2m100", form)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm = spm_model(folder / "sentencepiece.bpe.model", corpus()[:1500], 300, model_type="bpe")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    random.Random(0).shuffle(pieces)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3} | {p: i + 4 for i, p in enumerate(pieces)}
    _write_json(folder / "vocab.json", vocab)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    _write_json(folder / "tokenizer_config.json", {
        "src_lang": None, "tgt_lang": None, **specials, "language_codes": "m2m100", "num_madeup_words": 8,
        "model_max_length": 256, "tokenizer_class": "M2M100Tokenizer"})
    _write_json(folder / "special_tokens_map.json", {
        **specials, "additional_special_tokens": [f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]]})
    tok = AutoTokenizer.from_pretrained(str(folder))
    if form == "saved":
        saved = folder / "resaved"
        tok.save_pretrained(saved)
        for path in saved.iterdir():
            shutil.move(str(path), folder / path.name)
        saved.rmdir()
    return tok


def m2m100_checkpoint(folder: Path, form: str = "hub", seed: int = 0, eos_boost: float = 1.0,
                      generation: dict | None = None, **overrides) -> Path:
    """A tiny random M2M100 with its tokenizer in `form`: vocabulary = vocab.json + 100 language
    codes + 8 made-up words, as facebook/m2m100_418M's 128112; its generation settings (5 beams,
    early stopping, max_length shortened)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    folder = Path(folder)
    tok = m2m100_tokenizer(folder, form)
    kw = dict(SMALL, vocab_size=tok.vocab_size + 100 + 8, max_position_embeddings=256, activation_function="relu",
              scale_embedding=True, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = perturb(M2M100ForConditionalGeneration(M2M100Config(**kw)), seed, eos_boost)
    save_checkpoint(folder, model)
    (folder / "generation_config.json").unlink(missing_ok=True)
    write_generation_config(folder, **{"bos_token_id": 0, "decoder_start_token_id": 2, "eos_token_id": 2,
                                       "pad_token_id": 1, "early_stopping": True, "max_length": 24, "num_beams": 5,
                                       **(generation or {})})
    return folder


# -- Pegasus -----------------------------------------------------------------------------------


def pegasus_tokenizer(folder: Path, form: str = "hub"):
    """A Pegasus tokenizer: spiece.model (<pad> 0, </s> 1, <unk> 2, no <s>) shifted by offset 103
    behind <pad> </s> <mask_1> <mask_2> <unk_2>..<unk_102>."""
    from transformers import PegasusTokenizer, PegasusTokenizerFast

    _check_form("pegasus", form)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm = spm_model(folder / "spiece.model", corpus()[:1500], 300, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    if form == "slow":
        tok = PegasusTokenizer(str(spm), model_max_length=256)
        tok.save_pretrained(folder)
        return tok
    tok = PegasusTokenizerFast(str(spm), model_max_length=256)
    tok.save_pretrained(folder)
    _write_json(folder / "tokenizer_config.json", {"model_max_length": 256, "special_tokens_map_file": None,
                                                   "full_tokenizer_file": None})
    _write_json(folder / "special_tokens_map.json", {
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask_2>",
        "additional_special_tokens": ["<mask_1>"] + [f"<unk_{i}>" for i in range(2, 103)]})
    return tok


def pegasus_checkpoint(folder: Path, form: str = "hub", seed: int = 0, eos_boost: float = 1.0,
                       generation: dict | None = None, **overrides) -> Path:
    """A tiny random Pegasus (pre-norm, sinusoidal positions, scaled embeddings, as
    google/pegasus-xsum) with its tokenizer in `form` and pegasus-xsum's generation settings
    (8 beams, length_penalty 0.6; max_length shortened)."""
    from transformers import PegasusConfig, PegasusForConditionalGeneration

    folder = Path(folder)
    tok = pegasus_tokenizer(folder, form)
    kw = dict(SMALL, vocab_size=len(tok), max_position_embeddings=128, scale_embedding=True, pad_token_id=0,
              eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = perturb(PegasusForConditionalGeneration(PegasusConfig(**kw)), seed, eos_boost)
    save_checkpoint(folder, model)
    write_generation_config(folder, **{"length_penalty": 0.6, "max_length": 18, "num_beams": 8,
                                       **(generation or {})})
    return folder


# -- mT5 ---------------------------------------------------------------------------------------


def mt5_tokenizer(folder: Path, form: str = "hub"):
    """An mT5 tokenizer: T5's spiece.model layout (<pad> 0, </s> 1, <unk> 2) with no sentinel tokens
    added (extra_ids 0, as google/mt5-*)."""
    from transformers import T5TokenizerFast

    _check_form("mt5", form)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spm = spm_model(folder / "spiece.model", corpus()[:1500], 300, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    tok = T5TokenizerFast(str(spm), extra_ids=0, model_max_length=256, legacy=True)
    if form == "saved":
        tok.save_pretrained(folder)
    else:
        _write_json(folder / "tokenizer_config.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                                                       "extra_ids": 0, "additional_special_tokens": None})
        _write_json(folder / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>",
                                                         "pad_token": "<pad>"})
    return tok


def mt5_checkpoint(folder: Path, form: str = "hub", seed: int = 0, eos_boost: float = 1.0, tied: bool = False,
                   **overrides) -> Path:
    """A tiny random mT5 (T5 v1.1: gated-gelu, lm_head untied unless `tied`) with config.json naming
    T5Tokenizer as google/mt5-small's, and a vocabulary wider than the tokenizer's as there."""
    from transformers import MT5Config, MT5ForConditionalGeneration

    folder = Path(folder)
    tok = mt5_tokenizer(folder, form)
    kw = dict(SMALL_T5, vocab_size=len(tok) + 12, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
              tie_word_embeddings=tied, tokenizer_class="T5Tokenizer")
    kw.update(overrides)
    torch.manual_seed(seed)
    # T5's residual stream is never normalised: smaller weights keep float32 rounding within 1e-5
    model = perturb(MT5ForConditionalGeneration(MT5Config(**kw)), seed, eos_boost, scale=0.1)
    return save_checkpoint(folder, model)


BUILDERS = {"nllb": nllb_checkpoint, "m2m100": m2m100_checkpoint, "pegasus": pegasus_checkpoint,
            "mt5": mt5_checkpoint}
