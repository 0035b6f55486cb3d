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


# -- encoder-decoder checkpoints (BART, T5, Marian) for the text2text pipelines -----------------


def spm_model(path: Path, texts, vocab_size: int = 300, **options) -> Path:
    """A sentencepiece unigram model trained on `texts` (about 2 s on 1500 paragraphs)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", num_threads=2, minloglevel=2, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def perturb_seq2seq(model, seed: int = 0, eos_boost: float = 1.0):
    """Random init leaves norms at 1, biases at 0 and weights tiny, so greedy decoding repeats one
    token whatever the input. Move every weight off its init so outputs depend on the input, and
    make eos a contender (`eos_boost`) so rows finish at different lengths."""
    g = torch.Generator().manual_seed(seed)
    eos = model.config.eos_token_id
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=g) * 0.3)
            model.final_logits_bias[0, eos] += eos_boost
        elif model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr():
            model.lm_head.weight[eos] *= 1.0 + eos_boost
    return model.eval()


def write_generation_config(folder: Path, **values) -> None:
    """Add keys to the checkpoint's generation_config.json, as Hub checkpoints carry them."""
    import json

    path = Path(folder) / "generation_config.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(values)
    path.write_text(json.dumps(data, indent=2))


def bart_checkpoint(folder: Path, seed: int = 0, eos_boost: float = 1.0, generation: dict | None = None,
                    **overrides) -> Path:
    """A tiny random BART (2+2 layers, width 32) with a byte-level BPE BartTokenizerFast."""
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

    folder = Path(folder)
    bpe_tokenizer(folder, "roberta")
    tok = BartTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=256)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    kw = dict(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=512,
              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
              decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = perturb_seq2seq(BartForConditionalGeneration(BartConfig(**kw)), seed, eos_boost)
    save_checkpoint(folder, model, tok)
    if generation:
        write_generation_config(folder, **generation)
    return folder


def t5_tokenizer(folder: Path, extra_ids: int = 8, fast: bool = True, vocab_size: int = 300):
    """T5-style: spiece.model (pad 0, eos 1, unk 2) and, with `fast`, tokenizer.json."""
    from transformers import T5Tokenizer, T5TokenizerFast

    folder = Path(folder)
    spm_model(folder / "spiece.model", corpus()[:1500], vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    cls = T5TokenizerFast if fast else T5Tokenizer
    tok = cls(str(folder / "spiece.model"), extra_ids=extra_ids, model_max_length=256, legacy=True)
    tok.save_pretrained(folder)
    return tok


# t5-base's, with shorter lengths (200 and 300 there) to keep tests fast
T5_TASKS = {
    "summarization": {"early_stopping": True, "length_penalty": 2.0, "max_length": 16, "min_length": 3,
                      "no_repeat_ngram_size": 3, "num_beams": 4, "prefix": "summarize: "},
    "translation_en_to_de": {"early_stopping": True, "max_length": 12, "num_beams": 4,
                             "prefix": "translate English to German: "},
    "translation_en_to_fr": {"early_stopping": True, "max_length": 12, "num_beams": 4,
                             "prefix": "translate English to French: "},
}


def t5_checkpoint(folder: Path, gated: bool = False, seed: int = 0, eos_boost: float = 1.0, fast: bool = True,
                  task_specific_params: dict | None = None, **overrides) -> Path:
    """A tiny random T5 (relu, or gated-gelu as t5 v1.1 / flan-t5 with an untied head) whose
    config carries T5's task_specific_params (prefixes), and whose vocabulary is wider than the
    tokenizer's as t5-base's is."""
    from transformers import T5Config, T5ForConditionalGeneration

    folder = Path(folder)
    tok = t5_tokenizer(folder, fast=fast)
    kw = dict(vocab_size=len(tok) + 12, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=16, decoder_start_token_id=0,
              pad_token_id=0, eos_token_id=1, n_positions=256,
              task_specific_params=T5_TASKS if task_specific_params is None else task_specific_params)
    if gated:
        kw.update(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = perturb_seq2seq(T5ForConditionalGeneration(T5Config(**kw)), seed, eos_boost)
    return save_checkpoint(folder, model)


def marian_vocab(*spm_files) -> dict:
    """vocab.json as Marian conversions write it: </s> 0, <unk> 1, the pieces, <pad> last."""
    import sentencepiece as spm

    vocab = {"</s>": 0, "<unk>": 1}
    for path in spm_files:
        sp = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    return vocab


def marian_checkpoint(folder: Path, source_lang: str = "en", target_lang: str = "fr", seed: int = 0,
                      eos_boost: float = 1.0, separate_vocabs: bool = False, **overrides) -> Path:
    """A tiny random Marian (opus-mt style) with its MarianTokenizer files: source.spm and
    target.spm (two sentencepiece models trained here on different text) and vocab.json
    (+ target_vocab.json with `separate_vocabs`), and generation_config.json as Hub ones."""
    import json

    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = corpus()
    source = spm_model(folder / "source.spm", texts[:1200], 280)
    target = spm_model(folder / "target.spm", texts[1200:2300], 240)
    if separate_vocabs:
        (folder / "vocab.json").write_text(json.dumps(marian_vocab(source), indent=2))
        (folder / "target_vocab.json").write_text(json.dumps(marian_vocab(target), indent=2))
    else:
        (folder / "vocab.json").write_text(json.dumps(marian_vocab(source, target), indent=2))
    tok = MarianTokenizer(str(source), str(target), str(folder / "vocab.json"),
                          target_vocab_file=str(folder / "target_vocab.json") if separate_vocabs else None,
                          source_lang=source_lang, target_lang=target_lang, separate_vocabs=separate_vocabs)
    tok.save_pretrained(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    # the decoder's pad (its start token, and banned from the output): the target vocabulary's
    pad = json.loads((folder / ("target_vocab.json" if separate_vocabs else "vocab.json")).read_text())["<pad>"]
    kw = dict(vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=256,
              pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0,
              scale_embedding=True, activation_function="swish")
    if separate_vocabs:
        target_vocab = json.loads((folder / "target_vocab.json").read_text())
        kw.update(share_encoder_decoder_embeddings=False, tie_word_embeddings=False,
                  decoder_vocab_size=len(target_vocab))
    kw.update(overrides)
    torch.manual_seed(seed)
    model = perturb_seq2seq(MarianMTModel(MarianConfig(**kw)), seed, eos_boost)
    save_checkpoint(folder, model)
    write_generation_config(folder, bad_words_ids=[[pad]], max_length=256, num_beams=4)
    return folder


def mbart50_checkpoint(folder: Path, seed: int = 0, eos_boost: float = 1.0, **overrides) -> Path:
    """A tiny random mBART with an mBART-50 tokenizer (sentencepiece model trained here, the 52
    language codes): src_lang / tgt_lang translation as facebook/mbart-large-50-many-to-many-mmt."""
    from transformers import MBart50TokenizerFast, MBartConfig, MBartForConditionalGeneration

    folder = Path(folder)
    spm = spm_model(folder / "sentencepiece.bpe.model", corpus()[:1500], 300)
    tok = MBart50TokenizerFast(str(spm), src_lang="en_XX", tgt_lang="fr_XX", model_max_length=256)
    tok.save_pretrained(folder)
    spm.unlink()  # Hub repos have it too, but lightpipe must read tokenizer.json
    kw = dict(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=256,
              pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=tok.eos_token_id,
              decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id, scale_embedding=True)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = perturb_seq2seq(MBartForConditionalGeneration(MBartConfig(**kw)), seed, eos_boost)
    return save_checkpoint(folder, model)
