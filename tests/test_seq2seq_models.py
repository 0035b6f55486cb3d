"""bart / mbart / t5 / marian against transformers 4.57.6 on tiny random checkpoints written by
`save_pretrained`: encoder states, decoder logits, cached decoding, the MNLI-style classifier,
and loading Hub-style checkpoints that carry every tied alias."""

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from lightpipe.loading import load_model
from lightpipe.models.marian import sinusoidal_positions

pytestmark = pytest.mark.parity

TOL = dict(atol=1e-5, rtol=1e-5)
BART = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=48, decoder_ffn_dim=48, vocab_size=120, max_position_embeddings=64)
# T5Config() leaves decoder_start_token_id unset; every Hub T5 config sets it to the pad id 0
T5 = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, vocab_size=120, decoder_start_token_id=0,
          relative_attention_num_buckets=8, relative_attention_max_distance=16)
MARIAN = dict(BART, pad_token_id=119, decoder_start_token_id=119, eos_token_id=0, scale_embedding=True,
              activation_function="swish")

# name: (config class, model class, base class, config kwargs)
CASES = {
    "bart": ("BartConfig", "BartForConditionalGeneration", "BartModel", BART),
    "mbart": ("MBartConfig", "MBartForConditionalGeneration", "MBartModel", dict(BART, scale_embedding=True)),
    "t5-relu-tied": ("T5Config", "T5ForConditionalGeneration", "T5Model", T5),
    "t5-gated-untied": ("T5Config", "T5ForConditionalGeneration", "T5Model",
                        dict(T5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "t5-gated-tied": ("T5Config", "T5ForConditionalGeneration", "T5Model", dict(T5, feed_forward_proj="gated-gelu")),
    "t5-deeper-decoder": ("T5Config", "T5ForConditionalGeneration", "T5Model", dict(T5, num_decoder_layers=3)),
    "marian": ("MarianConfig", "MarianMTModel", "MarianModel", MARIAN),
    "marian-unshared": ("MarianConfig", "MarianMTModel", "MarianModel",
                        # transformers can only run unshared vocabularies of different sizes untied
                        dict(MARIAN, share_encoder_decoder_embeddings=False, decoder_vocab_size=90,
                             tie_word_embeddings=False, pad_token_id=89, decoder_start_token_id=89)),
}
MNLI = {"id2label": {0: "contradiction", 1: "neutral", 2: "entailment"},
        "label2id": {"contradiction": 0, "neutral": 1, "entailment": 2}}


def perturb(model, seed):
    """Random init leaves LayerNorms at 1/0, biases and final_logits_bias at 0 and weights tiny:
    a model that ignored them would still pass, and greedy decoding repeats one token whatever
    the input. Move every weight well off its init, and make eos a contender so that some rows
    finish early during generation (padding, finished beams) while others run to the limit."""
    g = torch.Generator().manual_seed(seed)
    eos = model.config.eos_token_id
    # T5's residual stream is never normalised: larger weights grow its activations until float32
    # rounding (SDPA here, eager matmuls there) exceeds the 1e-5 tolerance
    scale = 0.1 if model.config.model_type == "t5" else 0.3
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (scale if p.dim() > 1 else 0.1))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=g) * 0.3)
            model.final_logits_bias[0, eos] += 2.0
        elif hasattr(model, "lm_head"):
            model.lm_head.weight[eos] *= 2.0
    return model.eval()


def build(folder, name, head_class=None, seed=0, **extra):
    config_cls, model_cls, _, kwargs = CASES[name]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**kwargs, **extra)
    model = perturb(getattr(transformers, head_class or model_cls)(config), seed)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def batch(config, lengths=(11, 6, 8), dec_len=7, seed=1):
    """Right-padded encoder inputs ending in eos, and decoder inputs opening with the start token."""
    g = torch.Generator().manual_seed(seed)
    dec_vocab = getattr(config, "decoder_vocab_size", None) or config.vocab_size
    top = min(config.vocab_size, dec_vocab) - 1
    ids = torch.full((len(lengths), max(lengths)), config.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = torch.randint(3, top, (n - 1,), generator=g)
        ids[row, n - 1] = config.eos_token_id
        mask[row, :n] = 1
    dec = torch.randint(3, top, (len(lengths), dec_len), generator=g)
    start = config.decoder_start_token_id
    dec[:, 0] = config.eos_token_id if start is None else start  # mBART has no fixed start token
    return ids, mask, dec


_BUILT = {}


def built(name, tmp_path_factory):
    """(name, folder, transformers model, lightpipe model), built once per test session."""
    if name not in _BUILT:
        folder = build(tmp_path_factory.mktemp(name), name)
        reference = getattr(transformers, CASES[name][1]).from_pretrained(folder).eval()
        ours, _ = load_model(folder)
        _BUILT[name] = name, folder, reference, ours
    return _BUILT[name]


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    return built(request.param, tmp_path_factory)


@torch.inference_mode()
def test_encoder_states_match(case):
    _, _, reference, ours = case
    ids, mask, _ = batch(reference.config)
    theirs = reference.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours.encode(ids, mask), theirs, **TOL)


@torch.inference_mode()
@pytest.mark.parametrize("decoder_padding", [False, True])
def test_logits_match(case, decoder_padding):
    _, _, reference, ours = case
    ids, mask, dec = batch(reference.config)
    dec_mask = None
    if decoder_padding:  # right-padded decoder inputs of lengths 7, 4, 5
        dec_mask = torch.ones_like(dec)
        dec_mask[1, 4:] = 0
        dec_mask[2, 5:] = 0
    theirs = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask).logits
    torch.testing.assert_close(ours(ids, mask, dec, dec_mask), theirs, **TOL)


@torch.inference_mode()
@pytest.mark.parametrize("chunks", [(1,) * 7, (3, 1, 1, 1, 1), (2, 3, 2)], ids=["steps", "prefill3", "chunked"])
def test_cached_decoding_matches_full_pass(case, chunks):
    _, _, reference, ours = case
    ids, mask, dec = batch(reference.config)
    enc = ours.encode(ids, mask)
    full = ours.decode(dec, encoder_hidden=enc, encoder_mask=mask)
    cache = ours.new_cache()
    rows = cache.add_rows(dec.shape[0], dec.shape[1] + 2, cross=ids.shape[1])
    pieces, start = [], 0
    for n in chunks:  # the first pass stores the encoder keys (cross_mask), later ones read them
        cache.begin(rows, None, n, cross_mask=mask if start == 0 else None)
        pieces.append(ours.decode(dec[:, start : start + n], encoder_hidden=enc if start == 0 else None, cache=cache))
        start += n
    assert [cache.length(r) for r in rows] == [dec.shape[1]] * dec.shape[0]
    torch.testing.assert_close(torch.cat(pieces, 1), full, **TOL)
    # the cached run must also agree with transformers, not just with ourselves
    theirs = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(torch.cat(pieces, 1), theirs, **TOL)


@torch.inference_mode()
def test_base_model_matches(case):
    name, folder, reference, _ = case
    ours, _ = load_model(folder, "base")
    base = getattr(transformers, CASES[name][2]).from_pretrained(folder).eval()
    ids, mask, dec = batch(reference.config)
    theirs = base(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).last_hidden_state
    torch.testing.assert_close(ours(ids, mask, dec), theirs, **TOL)


@torch.inference_mode()
def test_hub_style_checkpoint_with_every_alias(case, tmp_path):
    """Hub checkpoints often store each tied alias (encoder/decoder embed_tokens, lm_head) and,
    for older Marian ones, the sinusoidal tables, which save_pretrained leaves out."""
    name, folder, reference, _ = case
    state = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    if name.startswith("marian"):
        assert any("embed_positions" in k for k in state)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    ours, _ = load_model(tmp_path)
    ids, mask, dec = batch(reference.config)
    theirs = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(ours(ids, mask, dec), theirs, **TOL)


@torch.inference_mode()
def test_bart_embedding_only_under_decoder_and_no_final_logits_bias(tmp_path):
    """facebook/bart-large-cnn keeps its embedding under model.decoder.embed_tokens only; a missing
    final_logits_bias means zeros (transformers ignores its absence), never a random init."""
    folder = build(tmp_path / "src", "bart")
    reference = transformers.BartForConditionalGeneration.from_pretrained(folder).eval()
    dropped = ("model.shared.weight", "model.encoder.embed_tokens.weight", "lm_head.weight", "final_logits_bias")
    state = {k: v.clone() for k, v in reference.state_dict().items() if k not in dropped}
    (tmp_path / "dst").mkdir()
    save_file(state, str(tmp_path / "dst" / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "dst" / "config.json").write_text((folder / "config.json").read_text())
    ours, _ = load_model(tmp_path / "dst")
    assert not ours.final_logits_bias.any()
    with torch.no_grad():
        reference.final_logits_bias.zero_()
    ids, mask, dec = batch(reference.config)
    theirs = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(ours(ids, mask, dec), theirs, **TOL)


def nli_batch(config, seed=2, suffix=()):
    """`<s> premise </s></s> hypothesis </s>` rows of different lengths (three eos each), right-padded;
    mBART rows end with a language id after the last eos (`suffix`)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for a, b in [(7, 4), (3, 2), (5, 6)]:
        premise = torch.randint(4, config.vocab_size - 10, (a,), generator=g)
        hypothesis = torch.randint(4, config.vocab_size - 10, (b,), generator=g)
        bos, eos = torch.tensor([config.bos_token_id]), torch.tensor([config.eos_token_id])
        rows.append(torch.cat([bos, premise, eos, eos, hypothesis, eos, torch.tensor(suffix, dtype=torch.long)]))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), config.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return ids, mask


@torch.inference_mode()
@pytest.mark.parametrize("name", ["bart", "mbart"])
def test_sequence_classification_matches(name, tmp_path):
    head = {"bart": "BartForSequenceClassification", "mbart": "MBartForSequenceClassification"}[name]
    folder = build(tmp_path, name, head_class=head, **MNLI)
    reference = getattr(transformers, head).from_pretrained(folder).eval()
    ours, config = load_model(folder)
    assert config["id2label"] == {"0": "contradiction", "1": "neutral", "2": "entailment"}
    # mBART's decoder starts with each row's last token (the language id), not decoder_start_token_id
    ids, mask = nli_batch(reference.config, suffix=(110,) if name == "mbart" else ())
    theirs = reference(input_ids=ids, attention_mask=mask).logits
    logits = ours(ids, mask)
    assert logits.shape == (3, 3)
    torch.testing.assert_close(logits, theirs, **TOL)
    with pytest.raises(ValueError, match="eos"):
        ours(torch.tensor([[0, 5, 6, 7]]), torch.ones(1, 4, dtype=torch.long))


@pytest.mark.parametrize("n_positions, dim", [(512, 32), (300, 33)])
def test_marian_sinusoidal_table_is_transformers_exactly(n_positions, dim):
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    theirs = MarianSinusoidalPositionalEmbedding(n_positions, dim)
    theirs._init_weight()
    assert torch.equal(sinusoidal_positions(n_positions, dim), theirs.weight.detach())


def test_config_keeps_only_declared_keys(case):
    _, folder, reference, ours = case
    raw = json.loads((folder / "config.json").read_text())
    assert "architectures" in raw and not hasattr(ours.config, "architectures")
    assert ours.is_encoder_decoder and ours.config.vocab_size == reference.config.vocab_size


# -- generation through lightpipe.generation, token for token against model.generate() ----------

GENERATE = {
    "greedy": dict(max_new_tokens=10),
    "beam4": dict(max_new_tokens=10, num_beams=4),
    "beam4-return2-early": dict(max_new_tokens=8, num_beams=4, num_return_sequences=2, early_stopping=True,
                                length_penalty=0.8),
}


@torch.inference_mode()
@pytest.mark.parametrize("kwargs", list(GENERATE.values()), ids=list(GENERATE))
@pytest.mark.parametrize("name", ["bart", "mbart", "t5-relu-tied", "t5-gated-untied", "marian"])
def test_generate_matches_transformers(name, kwargs, tmp_path_factory):
    from lightpipe.generation import GenerationConfig, generate

    _, folder, reference, ours = built(name, tmp_path_factory)
    ids, mask, _ = batch(reference.config, lengths=(9, 4, 6, 7))
    gen_file = folder / "generation_config.json"
    defaults = GenerationConfig.from_model(
        json.loads((folder / "config.json").read_text()),
        json.loads(gen_file.read_text()) if gen_file.is_file() else None,
    )
    theirs = reference.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(generate(ours, ids, mask, defaults, **kwargs), theirs)


@torch.inference_mode()
@pytest.mark.parametrize("name", ["bart", "t5-gated-untied", "marian"])
def test_int8_model_decodes_with_its_cache(name, tmp_path_factory):
    """quantize="int8" makes lm_head's weight an int8 buffer: the KV cache must still take the
    model's float dtype, and cached int8 decoding must give the int8 model's own full pass."""
    from lightpipe.quantize import quantize_int8

    _, folder, reference, _ = built(name, tmp_path_factory)
    ids, mask, dec = batch(reference.config)
    ours, _ = load_model(folder)
    quantize_int8(ours)
    assert ours.lm_head.weight.dtype == torch.int8
    full = ours(ids, mask, dec)
    enc = ours.encode(ids, mask)
    cache = ours.new_cache()
    rows = cache.add_rows(dec.shape[0], dec.shape[1], cross=ids.shape[1])
    assert cache.dtype == cache.k.dtype == torch.float32
    pieces = []
    for i in range(dec.shape[1]):  # the first pass stores the encoder keys, later ones read them
        cache.begin(rows, None, 1, cross_mask=mask if i == 0 else None)
        pieces.append(ours.decode(dec[:, i : i + 1], encoder_hidden=enc if i == 0 else None, cache=cache))
    steps = torch.cat(pieces, 1)
    # bfloat16 activations in the int8 kernel: one step at a time rounds differently from the full pass
    assert (steps - full).abs().max() / full.abs().max() < 2e-2
