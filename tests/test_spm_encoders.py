"""DeBERTa-v2/v3 (deberta-v2) and ALBERT against transformers 4.57.6, computed live: every head on
tiny random checkpoints written by transformers' save_pretrained, in the config variants the Hub
has (DeBERTa-v3's relative-only attention, DeBERTa-v2-xlarge's convolution, separate position
projections, absolute positions with token types, both masked-LM layouts; ALBERT's shared layer
groups), and their sentencepiece tokenizers in every form real repos ship them."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from lightpipe import loading
from lightpipe.loading import load_model
from lightpipe.tokenization import load as load_tokenizer
from tiny import SPM_ENCODERS, SPM_FORMS, albert_tokenizer, corpus, deberta_tokenizer, sentences
from tiny import spm_model

pytestmark = pytest.mark.parity

HEADS = ["base", "sequence-classification", "token-classification", "question-answering", "masked-lm"]
HF_HEADS = {
    "base": transformers.AutoModel,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
    "masked-lm": transformers.AutoModelForMaskedLM,
}
VOCAB = 120
# name → (model_type, config overrides over tiny.SPM_ENCODERS); buckets 8 / 64 so the batch's 30
# tokens reach the log-bucketed distances
VARIANTS = {
    "deberta-v3": ("deberta-v2", dict(position_buckets=8, max_relative_positions=64)),
    "deberta-v2-xlarge": ("deberta-v2", dict(conv_kernel_size=3, conv_act="gelu", hidden_act="gelu_new")),
    "deberta-separate-keys": ("deberta-v2", dict(share_att_key=False, pos_att_type=["c2p"], position_buckets=-1,
                                                 max_relative_positions=12, position_biased_input=True,
                                                 type_vocab_size=2, embedding_size=24, norm_rel_ebd="none")),
    "deberta-p2c": ("deberta-v2", dict(share_att_key=False, pos_att_type="p2c", position_buckets=-1, conv_kernel_size=5,
                                       conv_groups=4)),
    "deberta-absolute": ("deberta-v2", dict(relative_attention=False, position_biased_input=True)),
    "albert": ("albert", {}),
    "albert-groups": ("albert", dict(num_hidden_layers=5, num_hidden_groups=2, inner_group_num=2, hidden_act="gelu")),
}


def tiny_config(variant: str, num_labels: int = 3, **extra):
    model_type, overrides = VARIANTS[variant]
    kw = SPM_ENCODERS[model_type] | dict(max_position_embeddings=64) | overrides | extra
    return transformers.AutoConfig.for_model(model_type, vocab_size=VOCAB, pad_token_id=0, num_labels=num_labels, **kw)


def perturb(model):
    """Move every parameter off its init (biases 0, LayerNorms identity), so a forgotten bias, a
    wrong LayerNorm or an untied decoder shows up in the outputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(variant, head) → (folder, transformers model that wrote it); built once per module."""
    cache = {}

    def get(variant: str, head: str, **extra):
        key = (variant, head, *sorted(extra.items()))
        if key not in cache:
            torch.manual_seed(0)
            config = tiny_config(variant, num_labels=2 if head == "question-answering" else 3, **extra)
            model = perturb(HF_HEADS[head].from_config(config))
            folder = tmp_path_factory.mktemp(f"{variant}-{head}")
            model.save_pretrained(folder, safe_serialization=True)
            cache[key] = folder, model
        return cache[key]

    return get


def batch(lengths=(9, 30, 4), types: bool = False, seed: int = 1):
    """A right-padded batch of different lengths (+ token types 0/1 when the model has them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    token_types = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
        if types:
            token_types[i, n // 2:n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types}


def reference(model, head: str, inputs):
    with torch.no_grad():
        out = model(**inputs)
    if head == "base":
        return out.last_hidden_state
    if head == "question-answering":
        return out.start_logits, out.end_logits
    return out.logits


def run(model, inputs):
    with torch.inference_mode():
        return model(inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids"))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_head_matches_transformers(checkpoint, variant, head):
    folder, ref = checkpoint(variant, head)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete checkpoint must load without fresh weights
        model, config = load_model(folder, head)
    assert config["model_type"] == VARIANTS[variant][0]
    # the Hub's names, so checkpoints load one to one (transformers' AlbertModel also has a pooler)
    extra = set(ref.state_dict()) - set(model.state_dict())
    assert set(model.state_dict()) <= set(ref.state_dict()) and all("pooler" in k for k in extra), extra
    types = ref.config.type_vocab_size > 0
    inputs = batch(types=types)
    # every position, padding included: DeBERTa masks padding rows whole, as transformers does
    torch.testing.assert_close(run(model, inputs), reference(ref, head, inputs), atol=1e-5, rtol=1e-5)
    # nothing padded and no mask at all
    unpadded = batch((11, 11), types=types)
    expected = reference(ref, head, unpadded)
    torch.testing.assert_close(run(model, unpadded), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(model, unpadded | {"attention_mask": None}), expected, atol=1e-5, rtol=1e-5)


def test_relative_buckets_are_exercised(checkpoint):
    """The batch is longer than the exact-distance window, so log buckets are in play (and a
    model without them would differ)."""
    from lightpipe.models.deberta_v2 import Config, relative_positions

    config = Config.from_dict(tiny_config("deberta-v3").to_dict())
    buckets = relative_positions(30, config, "cpu")
    assert buckets.abs().max() < 29 and (buckets != relative_positions(30, Config.from_dict(
        tiny_config("deberta-v3", position_buckets=-1).to_dict()), "cpu")).any()


@pytest.mark.parametrize(("length", "buckets", "max_position"), [(600, 256, 512), (3000, 256, 512), (1100, 256, 1024)])
def test_relative_buckets_of_real_checkpoints(length, buckets, max_position):
    """DeBERTa-v3's 256 buckets over 512 positions (mDeBERTa's too), at lengths past the table:
    the same bucket for every distance as transformers computes."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    from lightpipe.models.deberta_v2 import log_bucket_position

    ids = torch.arange(length)
    relative = ids[:, None] - ids[None, :]
    ours = log_bucket_position(relative, buckets, max_position)
    assert torch.equal(ours, make_log_bucket_position(relative, buckets, max_position))
    assert ours.abs().max() < max_position  # far distances share buckets: no hard length limit


@pytest.mark.parametrize("variant", ["deberta-v3", "albert"])
def test_masked_lm_decoder_is_tied_to_embeddings(checkpoint, variant):
    model, _ = load_model(checkpoint(variant, "masked-lm")[0])
    prefix, decoder = ("deberta", "cls.predictions.decoder") if variant.startswith("deberta") else (
        "albert", "predictions.decoder")
    embeddings = model.get_submodule(f"{prefix}.embeddings.word_embeddings").weight
    assert model.get_submodule(decoder).weight.data_ptr() == embeddings.data_ptr()


@pytest.mark.parametrize("variant", ["deberta-v3", "albert"])
def test_masked_lm_checkpoint_loads_as_base(checkpoint, variant):
    folder, _ = checkpoint(variant, "masked-lm")
    model, _ = load_model(folder, "base")
    assert not any(k.startswith(("cls.", "predictions.")) for k in model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' AlbertModel gets a fresh pooler; irrelevant here
        ref = transformers.AutoModel.from_pretrained(folder).eval()
    inputs = batch()
    torch.testing.assert_close(run(model, inputs), reference(ref, "base", inputs), atol=1e-5, rtol=1e-5)


def test_masked_lm_untied_legacy_head(checkpoint):
    folder, ref = checkpoint("deberta-v3", "masked-lm", tie_word_embeddings=False)
    assert "cls.predictions.decoder.weight" in load_file(folder / "model.safetensors")
    model, _ = load_model(folder)
    assert model.cls.predictions.decoder.weight.data_ptr() != model.deberta.embeddings.word_embeddings.weight.data_ptr()
    inputs = batch()
    torch.testing.assert_close(run(model, inputs), reference(ref, "masked-lm", inputs), atol=1e-5, rtol=1e-5)


def test_original_deberta_masked_lm_head(checkpoint, tmp_path):
    """DeBERTa's own MLM layout (lm_predictions.lm_head.*, transformers' legacy=False; it runs
    only untied in 4.57.6) matches transformers. Microsoft's checkpoints store that layout with a
    config that doesn't say legacy=False: transformers then ignores those weights and predicts
    with a random head, lightpipe uses them (docs/deviations.md)."""
    folder, ref = checkpoint("deberta-v3", "masked-lm", legacy=False, tie_word_embeddings=False)
    saved = load_file(folder / "model.safetensors")
    assert any(k.startswith("lm_predictions.lm_head.") for k in saved) and not any(k.startswith("cls.") for k in saved)
    inputs = batch()
    expected = reference(ref, "masked-lm", inputs)
    model, _ = load_model(folder)
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)

    # as Microsoft ships it: no `legacy` in config.json, and the RTD head and an unused absolute
    # position table beside the weights
    config = json.loads((folder / "config.json").read_text())
    config.pop("legacy")
    config.pop("tie_word_embeddings")
    (tmp_path / "config.json").write_text(json.dumps(config))
    extra = {"mask_predictions.dense.weight": torch.zeros(32, 32), "mask_predictions.classifier.weight": torch.zeros(1, 32),
             "deberta.embeddings.position_embeddings.weight": torch.zeros(64, 32)}
    save_file(saved | extra, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = load_model(tmp_path, "masked-lm")
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert not torch.allclose(reference(theirs, "masked-lm", inputs), expected, atol=1e-3)  # its fresh head
    base, _ = load_model(tmp_path, "base")  # the extra weights are skipped for the encoder too
    torch.testing.assert_close(run(base, inputs), reference(ref.deberta, "base", inputs), atol=1e-5, rtol=1e-5)


def test_albert_pretraining_checkpoint(tmp_path):
    """AlbertForPreTraining saves (pooler, MLM head, sentence-order head) load as masked-lm and
    as the encoder, as transformers loads them."""
    torch.manual_seed(0)
    perturb(transformers.AlbertForPreTraining(tiny_config("albert"))).save_pretrained(tmp_path)
    inputs = batch()
    for head in ("masked-lm", "base", "token-classification"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fresh classifier weights on both sides
            model, _ = load_model(tmp_path, head)
            ref = HF_HEADS[head].from_pretrained(tmp_path).eval()
        if head == "token-classification":
            model.classifier.load_state_dict(ref.classifier.state_dict())
        torch.testing.assert_close(run(model, inputs), reference(ref, head, inputs), atol=1e-5, rtol=1e-5)


def test_albert_legacy_checkpoint_names(checkpoint, tmp_path):
    """Older saves: the position_ids / token_type_ids buffers, the MLM bias only under decoder.bias."""
    folder, ref = checkpoint("albert", "masked-lm")
    state = load_file(folder / "model.safetensors")
    state["predictions.decoder.bias"] = state.pop("predictions.bias")
    state["albert.embeddings.position_ids"] = torch.arange(64)[None]
    state["albert.embeddings.token_type_ids"] = torch.zeros(1, 64, dtype=torch.long)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    model, _ = load_model(tmp_path, "masked-lm")
    inputs = batch()
    torch.testing.assert_close(run(model, inputs), reference(ref, "masked-lm", inputs), atol=1e-5, rtol=1e-5)


def test_model_built_by_hand_matches_loaded(checkpoint):
    for variant in ("deberta-v3", "albert"):
        folder, _ = checkpoint(variant, "masked-lm")
        loaded, config = load_model(folder)
        fam = loading.family(config)
        by_hand = fam.heads["masked-lm"](fam.config.from_dict(config)).eval()
        by_hand.load_state_dict(loaded.state_dict())
        inputs = batch()
        torch.testing.assert_close(run(by_hand, inputs), run(loaded, inputs), atol=1e-6, rtol=1e-6)


def test_too_long_input_is_a_clear_error(checkpoint):
    """A position table (ALBERT, DeBERTa with absolute positions) is a hard limit; DeBERTa-v3 has none."""
    long = {"input_ids": torch.full((1, 65), 7), "attention_mask": torch.ones(1, 65, dtype=torch.long)}
    for variant in ("albert", "deberta-absolute"):
        model, _ = load_model(checkpoint(variant, "base")[0])
        with pytest.raises(ValueError, match="longer than the model's 64 positions"):
            run(model, long)
    model, _ = load_model(checkpoint("deberta-v3", "base")[0])
    assert run(model, long).shape == (1, 65, 32)


def test_config_errors():
    from lightpipe.models import albert, deberta_v2

    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        albert.Config.from_dict({"position_embedding_type": "relative_key", "hidden_size": 32, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="num_hidden_groups"):
        albert.Config.from_dict({"num_hidden_layers": 2, "num_hidden_groups": 3, "hidden_size": 32,
                                 "num_attention_heads": 4})
    with pytest.raises(ValueError, match="not a multiple of 5 heads"):
        deberta_v2.Config.from_dict({"hidden_size": 32, "num_attention_heads": 5})
    config = deberta_v2.Config.from_dict({"pos_att_type": "P2C| c2p", "max_relative_positions": -1})
    assert config.uses == (True, True) and config.max_relative_positions == 512
    with pytest.raises(ValueError, match="2 outputs"):
        deberta_v2.DebertaV2ForQuestionAnswering(deberta_v2.Config.from_dict(
            {"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 1, "num_labels": 3}))


# -- tokenizers: the converted sentencepiece models and tokenizer.json, against transformers' fast ones --

TEXTS = sentences(60, start=10) + [
    "", "   ", "  leading and trailing  ", "Two  spaces,   three,\tand a\ttab\nand a newline.",
    "Hello [MASK] world [UNK]  x [CLS] y[SEP]", "The [MASK] statement.", "A [MASK]",
    "``Quoted'' text, then 1, 2, 3, 4 and 3,5 and 7,25.", "(parenthesis) \"quotes\" -dash- £5 €6 – x",
    "Ünïcödé naïve café — Ελληνικά 日本語 ✓ “quotes” ﬁ ① ＦＵＬＬＷＩＤＴＨ", "MiXeD CaSe WoRdS", "don't can't it's",
]
PAIRS = list(zip(TEXTS[:12], [t for t in TEXTS[60:] if t.strip()]))  # transformers takes an empty pair as none

BUILDERS = {"deberta-v2": deberta_tokenizer, "albert": albert_tokenizer}
TOKENIZER_CASES = [(family, form, {}) for family in BUILDERS for form in SPM_FORMS] + [
    ("deberta-v2", "slow", {"do_lower_case": True}),
    ("deberta-v2", "slow", {"split_by_punct": True}),
    ("albert", "slow", {"do_lower_case": False, "keep_accents": True}),
    ("albert", "slow", {"keep_accents": True}),
]


def tokenizer_folder(tmp_path, family, form, options):
    BUILDERS[family](tmp_path, form, **options)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": family}))
    return tmp_path


def encoding(tok, text, pair=None):
    out = tok(text, pair, return_offsets_mapping=True, return_special_tokens_mask=True)
    return {"ids": out["input_ids"], "type_ids": out["token_type_ids"], "offsets": [tuple(o) for o in out["offset_mapping"]],
            "special": out["special_tokens_mask"], "tokens": out.tokens()}


def ours_encoding(tok, text, pair=None):
    enc = tok.encode(text, pair)
    return {"ids": enc.ids, "type_ids": enc.type_ids, "offsets": list(enc.offsets), "special": enc.special_tokens_mask,
            "tokens": enc.tokens}


@pytest.mark.parametrize(("family", "form", "options"), TOKENIZER_CASES,
                         ids=[f"{f}-{form}-{'-'.join(o) or 'default'}" for f, form, o in TOKENIZER_CASES])
def test_tokenizer_matches_transformers(tmp_path, family, form, options):
    folder = tokenizer_folder(tmp_path, family, form, options)
    assert (folder / "tokenizer.json").is_file() == (form in ("saved", "json-only"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sequence longer than the specified maximum"
        theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(theirs).__name__ == {"deberta-v2": "DebertaV2TokenizerFast", "albert": "AlbertTokenizerFast"}[family]
    ours = load_tokenizer(folder, family)
    for text in TEXTS:
        expected = encoding(theirs, text)
        assert ours_encoding(ours, text) == expected, text
        for skip in (False, True):
            assert ours.decode(expected["ids"], skip_special_tokens=skip) == theirs.decode(expected["ids"], skip_special_tokens=skip)
    for a, b in PAIRS:
        assert ours_encoding(ours, a, b) == encoding(theirs, a, b)
    for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(theirs, f"{name}_token")
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id")
    assert ours.get_vocab() == theirs.get_vocab()
    flags = lambda tok: {i: (t.content, t.lstrip, t.rstrip, t.normalized, t.special)  # noqa: E731
                         for i, t in tok.get_added_tokens_decoder().items()}
    assert flags(ours._backend) == flags(theirs.backend_tokenizer)
    assert ours.model_max_length == theirs.model_max_length
    assert ours.subword_prefix is None  # words by "▁", so token classification uses transformers' fallback


def test_albert_number_comma_pieces_are_demoted(tmp_path):
    """The texts above include "3," which the vocabulary has as a piece: without ALBERT's -100 on
    digit-comma pieces the conversion would keep them whole."""
    folder = tokenizer_folder(tmp_path, "albert", "slow", {})
    tokens = load_tokenizer(folder, "albert").encode("then 3, and 7, ok").tokens
    from lightpipe.tokenization.spiece import read_spm_model

    pieces = {p for p, _, _ in read_spm_model(folder / "spiece.model")["pieces"]}
    assert {"▁3,", "▁7,"} <= pieces and "▁3," not in tokens and "3" in tokens


def test_sentencepiece_model_of_an_unknown_class_is_refused(tmp_path):
    folder = tokenizer_folder(tmp_path, "deberta-v2", "bare", {})
    with pytest.raises(FileNotFoundError, match=r"only a sentencepiece model \(spm.model\).*'bert'"):
        load_tokenizer(folder, "bert")
    char = tmp_path / "char"
    spm_model(char / "spm.model", corpus()[:300], 60, model_type="char")
    with pytest.raises(ValueError, match="only unigram and BPE"):
        load_tokenizer(char, "deberta-v2")


def test_sentencepiece_bpe_model_converts_as_transformers(tmp_path):
    """transformers' converters read BPE-trained sentencepiece models too (merges derived from the
    pieces and their scores): a DeBERTa spm.model trained as BPE gives its ids."""
    bpe = tmp_path / "bpe"
    spm_model(bpe / "spm.model", corpus()[:300], 200, model_type="bpe", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
              pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]")
    (bpe / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
    reference, tok = transformers.AutoTokenizer.from_pretrained(str(bpe)), load_tokenizer(bpe, "deberta-v2")
    for text in sentences(30) + ["Ünïcödé ﬁ text", "  spaced   out  ", ""]:
        assert tok.encode(text).ids == reference(text)["input_ids"], text
