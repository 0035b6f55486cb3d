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
    (`kind="distilbert"`: DistilBERT's, which gives no token_type_ids; `kind="electra"`: ELECTRA's).

    Not the same vocabulary in every process: tokenizers' WordPiece trainer numbers the "##x"
    pieces in its word map's (randomly seeded) order, and merges of equal count are then broken
    by those ids. So checks on how well a random model separates things need margins that hold
    for any vocabulary; comparisons with transformers are on the same files and unaffected."""
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertTokenizerFast, DistilBertTokenizerFast, ElectraTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=lowercase)
    trainer.train_from_iterator(corpus(), vocab_size=vocab_size, min_frequency=1)
    trainer.save_model(str(folder))
    cls = {"distilbert": DistilBertTokenizerFast, "electra": ElectraTokenizerFast}.get(kind, BertTokenizerFast)
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


def mpnet_tokenizer(folder: Path, vocab_size: int = 400, lowercase: bool = True):
    """MPNet-style, as microsoft/mpnet-base and all-mpnet-base-v2 ship it: a BERT WordPiece
    vocabulary with <s> <pad> </s> <unk> in front (pad id 1) and <mask> last, through
    MPNetTokenizerFast (tokenizer.json: <s> A </s> and <s> A </s></s> B </s>; unk [UNK]; <mask>
    strips the space before it)."""
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import MPNetTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=lowercase)
    trainer.train_from_iterator(corpus(), vocab_size=vocab_size, min_frequency=1)
    pieces = sorted(trainer.get_vocab().items(), key=lambda item: item[1])
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *(t for t, _ in pieces), "<mask>"]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tok = MPNetTokenizerFast(str(folder / "vocab.txt"), do_lower_case=lowercase, model_max_length=128)
    tok.save_pretrained(folder)
    return tok


def modernbert_tokenizer(folder: Path, vocab_size: int = 500):
    """ModernBERT-style, as answerdotai/ModernBERT-base ships it: a byte-level BPE tokenizer.json
    (NFC, ByteLevel pre-tokenizer and decoder) whose specials [UNK] [CLS] [SEP] [PAD] [MASK] come
    after the vocabulary, [MASK] stripping the space before it, a TemplateProcessing
    post-processor ([CLS] A [SEP], [CLS] A [SEP] B [SEP]), saved through PreTrainedTokenizerFast
    with no token_type_ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.add_special_tokens([AddedToken(t, lstrip=t == "[MASK]", normalized=False)
                                for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")])
    cls, sep = ("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=[cls, sep])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                  pad_token="[PAD]", mask_token="[MASK]", clean_up_tokenization_spaces=True,
                                  model_input_names=["input_ids", "attention_mask"], model_max_length=128)
    tok.save_pretrained(folder)
    return tok


def save_checkpoint(folder: Path, model, tokenizer=None) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def labels(names) -> dict:
    """config.json's id2label / label2id for a head with these label names."""
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


# ChatML, the template of Qwen's and many other chat checkpoints
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chatml_gpt2_checkpoint(folder: Path, chat_template: str = CHATML) -> Path:
    """A tiny GPT-2 with ChatML's special tokens and a chat template; its head sharpened so
    greedy paths have no near-ties."""
    import transformers

    tok = bpe_tokenizer(folder, "gpt2")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = chat_template
    config = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(8)
    return save_checkpoint(folder, model.eval(), tok)


def seeded(seed: int = 0):
    torch.manual_seed(seed)


ENCODER_HEADS = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
}


# the shapes of the issue-14 encoders: MPNet's positions start after pad id 1 as RoBERTa's; ELECTRA's
# embeddings narrower than its layers (embeddings_project); ModernBERT's 8-token window (4 each side)
# shorter than the test inputs, so local and global layers differ
SMALL_ENCODERS = {
    "mpnet": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=130),
    "electra": dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=128),
    "modernbert": dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                       max_position_embeddings=128, local_attention=8, global_attn_every_n_layers=3),
}


def encoder_config(model_type: str, tokenizer, **overrides):
    """A tiny config (2 layers, width 32; ModernBERT 3: one global, two local) for bert /
    roberta / xlm-roberta / distilbert / mpnet / electra / modernbert."""
    from transformers import AutoConfig

    vocab = len(tokenizer)
    if model_type in SMALL_ENCODERS:
        kw = SMALL_ENCODERS[model_type] | dict(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)
        if model_type == "modernbert":
            kw.update(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                      bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    elif model_type == "distilbert":
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
    """A tiny random encoder checkpoint with its tokenizer (WordPiece for bert / distilbert /
    electra, MPNet's WordPiece for mpnet, byte-level BPE for roberta-style and modernbert), saved
    as transformers saves it."""
    import transformers

    folder = Path(folder)
    if model_type in ("roberta", "xlm-roberta", "camembert"):
        tokenizer = bpe_tokenizer(folder, "roberta")
    elif model_type == "mpnet":
        tokenizer = mpnet_tokenizer(folder, lowercase=overrides.pop("lowercase", True))
    elif model_type == "modernbert":
        tokenizer = modernbert_tokenizer(folder)
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


def spm_model(path: Path, texts, vocab_size: int = 300, model_type: str = "unigram", **options) -> Path:
    """A sentencepiece model (unigram, or `model_type="bpe"`) trained on `texts` (about 2 s on
    1500 paragraphs)."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size,
                                   model_type=model_type, num_threads=2, minloglevel=2, **options)
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


# -- decoder-only checkpoints with real tokenizers' conventions (BOS or not, chat templates) -------

# Mistral-Instruct v0.3's template: BOS written by the template, an optional system message folded
# into the last user turn, `trim` on answers, roles checked with raise_exception
MISTRAL_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Llama-3.1-Instruct's template without tools and dates; the system turn is skipped in the loop
# with `continue` (jinja's loopcontrols, which templates on the Hub use)
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" + system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- continue %}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Qwen2-Instruct's ChatML template, default system prompt included
QWEN2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                  "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# the pre-tokenizer regexes of Llama 3 and Qwen2 (their tokenizer.json)
LLAMA3_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def llama2_tokenizer(folder: Path, vocab_size: int = 1000, chat_template: str | None = MISTRAL_TEMPLATE):
    """Llama 2 / Mistral style: a sentencepiece BPE model with byte fallback (tokenizer.model),
    converted by LlamaTokenizerFast into tokenizer.json with the `<s> $A` TemplateProcessing
    (add_bos_token true, add_eos_token false) and the legacy Prepend("▁") normalizer, as
    meta-llama/Llama-2-7b-hf and mistralai/Mistral-7B-Instruct ship them."""
    import json

    from transformers import LlamaTokenizerFast

    folder = Path(folder)
    spm = spm_model(folder / "tokenizer.model", corpus()[:1500], vocab_size, model_type="bpe", byte_fallback=True,
                    split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
                    allow_whitespace_only_pieces=True)  # Llama's trainer options
    # add_prefix_space=True makes the converter write the dummy-prefix normalizer (and the decoder's
    # Strip) that Llama 2's tokenizer.json has; the Hub's tokenizer_config.json doesn't carry the key
    tok = LlamaTokenizerFast(vocab_file=str(spm), add_prefix_space=True, legacy=True, add_bos_token=True,
                             add_eos_token=False, chat_template=chat_template)
    tok.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("add_prefix_space", None)
    path.write_text(json.dumps(config, indent=2))
    return tok


def llama3_tokenizer(folder: Path, vocab_size: int = 600, chat_template: str | None = LLAMA3_TEMPLATE):
    """Llama 3 style: a byte-level BPE tokenizer.json whose post-processor is
    Sequence[ByteLevel, TemplateProcessing("<|begin_of_text|> $A")], saved through
    PreTrainedTokenizerFast (tokenizer_class as meta-llama/Meta-Llama-3-8B-Instruct has it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = specials[0]
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                      special_tokens=[(bos, backend.token_to_id(bos))])])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token="<|eot_id|>",
                                  clean_up_tokenization_spaces=True, chat_template=chat_template,
                                  model_input_names=["input_ids", "attention_mask"])
    tok.save_pretrained(folder)
    return tok


def qwen2_tokenizer(folder: Path, vocab_size: int = 600, chat_template: str | None = QWEN2_TEMPLATE):
    """Qwen2-Instruct style: byte-level BPE converted by Qwen2TokenizerFast (NFC, Qwen2's split
    regex, a ByteLevel post-processor that adds nothing), no BOS, eos <|im_end|>, pad
    <|endoftext|>, <|im_start|>/<|im_end|> as special tokens."""
    from tokenizers.implementations import ByteLevelBPETokenizer
    from transformers import Qwen2TokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    trainer.save_model(str(folder))
    tok = Qwen2TokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token=None,
                             eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
                             additional_special_tokens=specials[1:], chat_template=chat_template)
    tok.save_pretrained(folder)
    return tok


def causal_lm_checkpoint(folder: Path, model_type: str, tokenizer, seed: int = 0, sharpen: float = 8.0,
                         **overrides) -> Path:
    """A tiny random gpt2 / llama / mistral / qwen2 / qwen3 / gemma2 / gemma3_text / phi3 (2
    layers, width 32, 128 positions; the issue-14 families shaped by NEW_DECODERS, their norms
    and biases perturbed) sized for `tokenizer`, saved beside it. The head is untied (as
    Qwen2-7B's; pass tie_word_embeddings=True for the small ones') and scaled by `sharpen` so
    greedy paths have no near-ties: a tied random head mostly repeats the input token."""
    import transformers

    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if model_type == "gpt2":
        kw = dict(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=bos,
                  eos_token_id=eos)
    else:
        kw = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=bos,
                  eos_token_id=eos, tie_word_embeddings=False)
        if model_type in NEW_DECODERS:
            kw.update(NEW_DECODERS[model_type], pad_token_id=tokenizer.pad_token_id)
    kw.update(overrides)
    config = transformers.AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    if model_type in NEW_DECODERS:
        perturb_norms(model, seed)
    if not config.tie_word_embeddings:
        with torch.no_grad():
            model.lm_head.weight.mul_(sharpen)
    return save_checkpoint(folder, model.eval(), tokenizer)


# -- sentencepiece encoders: DeBERTa-v2/v3 and ALBERT ----------------------------------------------

# The files a real repo ships, as `form`:
#   "saved"      what save_pretrained writes: tokenizer.json, the sentencepiece model, tokenizer_config.json,
#                special_tokens_map.json (MoritzLaurer/DeBERTa-v3-*-mnli*, ALBERT fine-tunes)
#   "slow"       the same without tokenizer.json: lightpipe converts the sentencepiece model
#   "bare"       the sentencepiece model alone, with microsoft/deberta-v3-base's two-key tokenizer_config
#                for DeBERTa: the class defaults give every special token
#   "json-only"  tokenizer.json + the sentencepiece model, no tokenizer_config (albert-base-v2)
SPM_FORMS = ("saved", "slow", "bare", "json-only")
# "1, 2, 3," lines give the vocabulary digit-comma pieces, which ALBERT's converter demotes by 100
NUMBER_LINES = ("Counted 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 30, 40 and 50, then 3,5 and 7,25.",) * 40


def _spm_form(folder: Path, tok, form: str, model_file: str, bare_config: dict | None = None) -> None:
    import json

    if form not in SPM_FORMS:
        raise ValueError(f"form must be one of {SPM_FORMS}, got {form!r}")
    tok.save_pretrained(folder)
    drop = {"saved": [], "slow": ["tokenizer.json"], "json-only": ["tokenizer_config.json", "special_tokens_map.json",
                                                                   "added_tokens.json"],
            "bare": ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]}[form]
    for name in drop:
        (folder / name).unlink(missing_ok=True)
    if form == "bare" and bare_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(bare_config))
    assert (folder / model_file).is_file()


def deberta_tokenizer(folder: Path, form: str = "saved", vocab_size: int = 400, **options):
    """DeBERTa-v3 style: a unigram spm.model with [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3 ([MASK] comes
    after the pieces), saved through DebertaV2TokenizerFast (model_max_length 128 unless "bare")."""
    from transformers import DebertaV2TokenizerFast

    folder = Path(folder)
    spm = spm_model(folder / "spm.model", corpus()[:1500], vocab_size, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                    pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]")
    tok = DebertaV2TokenizerFast(str(spm), model_max_length=128, **options)
    _spm_form(folder, tok, form, "spm.model", {"do_lower_case": False, "vocab_type": "spm"})
    return tok


def albert_tokenizer(folder: Path, form: str = "saved", vocab_size: int = 400, **options):
    """ALBERT style: spiece.model trained with ALBERT's own spm_train options (<pad> 0, <unk> 1,
    [CLS] [SEP] [MASK] control symbols, punctuation user symbols), saved through AlbertTokenizerFast
    (lowercasing, accents stripped, model_max_length 128 unless "bare")."""
    from transformers import AlbertTokenizerFast

    folder = Path(folder)
    spm = spm_model(folder / "spiece.model", list(corpus()[:1500]) + list(NUMBER_LINES), vocab_size, pad_id=0,
                    unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"],
                    user_defined_symbols=["(", ")", '"', "-", ".", "–", "£", "€"])
    tok = AlbertTokenizerFast(str(spm), model_max_length=128, **options)
    _spm_form(folder, tok, form, "spiece.model")
    return tok


SPM_ENCODERS = {
    # DeBERTa-v3's shape: relative attention only, shared position keys, log buckets past 8 (real: 128)
    "deberta-v2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=128, relative_attention=True, position_buckets=16,
                       max_relative_positions=64, pos_att_type="p2c|c2p", share_att_key=True,
                       norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0,
                       layer_norm_eps=1e-7),
    # albert-base-v2's shape: one shared layer run num_hidden_layers times, narrow embeddings
    "albert": dict(embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=128),
}


def spm_encoder_checkpoint(folder: Path, model_type: str, head: str = "sequence-classification", seed: int = 0,
                           form: str = "saved", **overrides) -> Path:
    """A tiny random deberta-v2 or albert checkpoint with its sentencepiece tokenizer in `form`."""
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = (deberta_tokenizer if model_type == "deberta-v2" else albert_tokenizer)(folder, form)
    kw = SPM_ENCODERS[model_type] | dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    config = transformers.AutoConfig.for_model(model_type, **(kw | overrides))
    torch.manual_seed(seed)
    model = getattr(transformers, ENCODER_HEADS[head]).from_config(config)
    with torch.no_grad():  # outputs decisive, as encoder_checkpoint's
        for name, p in model.named_parameters():
            if "classifier" in name or "qa_outputs" in name:
                p.normal_(0, 0.5)
    model.eval().save_pretrained(folder, safe_serialization=True)
    return folder


# -- the issue-14 decoders: Qwen3, Gemma 2 / 3, Phi-3 with their real tokenizers' conventions -------

# Qwen3's template (Qwen/Qwen3-0.6B, tools included): reasoning kept only after the last user
# query, `enable_thinking=False` pre-fills an empty <think></think>, namespace() and slicing
QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# google/gemma-2-2b-it's: BOS written by the template, no system role, "model" for the assistant
GEMMA2_TEMPLATE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                   "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                   "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
                   "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
                   "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
                   "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")

# google/gemma-3-1b-it's: the system message folded into the first user turn, content as a string or parts
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

# microsoft/Phi-3.5-mini-instruct's: no BOS anywhere, eos after a finished conversation
PHI3_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
                 "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
                 "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
                 "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")


def qwen3_tokenizer(folder: Path, vocab_size: int = 600, chat_template: str | None = QWEN3_TEMPLATE,
                    embedding: bool = False):
    """Qwen3 style: Qwen2's byte-level BPE (nothing added, eos <|im_end|>, pad <|endoftext|>)
    with <think> and </think> as added, non-special tokens. `embedding`: Qwen3-Embedding's,
    whose post-processor appends <|endoftext|> (the token last-token pooling reads) and which
    pads on the left."""
    from tokenizers import AddedToken, processors

    tok = qwen2_tokenizer(folder, vocab_size, chat_template)
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    if embedding:
        end = "<|endoftext|>"
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {end}:0", pair=f"$A:0 {end}:0 $B:1 {end}:1", special_tokens=[(end, tok.convert_tokens_to_ids(end))])
        tok.padding_side = tok.init_kwargs["padding_side"] = "left"  # init_kwargs: what save_pretrained writes
    tok.save_pretrained(folder)
    return tok


def gemma_tokenizer(folder: Path, vocab_size: int = 800, chat_template: str | None = GEMMA3_TEMPLATE,
                    add_eos_token: bool = False):
    """Gemma style: a sentencepiece BPE model with byte fallback and no dummy prefix (<pad> 0,
    <eos> 1, <bos> 2, <unk> 3, <start_of_turn> / <end_of_turn> as special pieces), converted by
    GemmaTokenizerFast: <bos> added by the post-processor (EmbeddingGemma's adds <eos> too:
    `add_eos_token`), padding on the left."""
    from transformers import GemmaTokenizerFast

    folder = Path(folder)
    spm = spm_model(folder / "tokenizer.model", corpus()[:1500], vocab_size, model_type="bpe", byte_fallback=True,
                    split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
                    allow_whitespace_only_pieces=True, add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2,
                    unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                    user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    tok = GemmaTokenizerFast(vocab_file=str(spm), add_bos_token=True, add_eos_token=add_eos_token,
                             chat_template=chat_template)
    tok.save_pretrained(folder)
    return tok


def phi3_tokenizer(folder: Path, vocab_size: int = 800, chat_template: str | None = PHI3_TEMPLATE):
    """Phi-3.5-mini style: Llama 2's sentencepiece BPE (byte fallback, <s> <unk> </s>) through
    LlamaTokenizerFast with add_bos_token false (nothing added), eos and pad <|endoftext|>, and
    the chat tokens <|assistant|> <|system|> <|end|> <|user|> added as special tokens."""
    import json

    from transformers import LlamaTokenizerFast

    folder = Path(folder)
    spm = spm_model(folder / "tokenizer.model", corpus()[:1500], vocab_size, model_type="bpe", byte_fallback=True,
                    split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
                    allow_whitespace_only_pieces=True)
    tok = LlamaTokenizerFast(vocab_file=str(spm), add_prefix_space=True, legacy=False, add_bos_token=False,
                             add_eos_token=False, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                             additional_special_tokens=["<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
                             chat_template=chat_template, padding_side="left")
    tok.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("add_prefix_space", None)  # not in the Hub's file either
    path.write_text(json.dumps(config, indent=2))
    return tok


def _longrope(rotary_dim: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    short = (1.0 + torch.rand(rotary_dim // 2, generator=g)).tolist()
    long = (2.0 + 8.0 * torch.rand(rotary_dim // 2, generator=g)).tolist()
    return {"type": "longrope", "short_factor": short, "long_factor": long}


# shapes for causal_lm_checkpoint (2-3 layers, width 32): head sizes set (their defaults are
# 128-256), windows and soft-caps small enough to act on the tests' inputs, query_pre_attn_scalar
# not head_dim, Gemma 3's two rope tables, Phi-4-mini's 3/4 rotary with LongRoPE (the long
# factors past 128 tokens, which the pipeline tests don't reach) and a window on every layer
NEW_DECODERS = {
    "qwen3": dict(head_dim=8),
    "gemma2": dict(num_hidden_layers=3, head_dim=8, query_pre_attn_scalar=12, sliding_window=6,
                   attn_logit_softcapping=4.0, final_logit_softcapping=6.0),
    "gemma3_text": dict(num_hidden_layers=3, head_dim=8, query_pre_attn_scalar=12, sliding_window=6,
                        sliding_window_pattern=3, rope_theta=1000.0, rope_local_base_freq=100.0,
                        rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "phi3": dict(partial_rotary_factor=0.75, rope_scaling=_longrope(6), max_position_embeddings=256,
                 original_max_position_embeddings=128, sliding_window=12),
}


def perturb_norms(model, seed: int = 0, scale: float = 0.3):
    """Move norm weights and biases off their init (ones / zeros): a norm or a bias the code
    forgot then changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model
