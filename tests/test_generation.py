"""generate() against transformers 4.57.6 `model.generate()`, token for token, on tiny random checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from lightpipe.generation import GenerationConfig, generate
from lightpipe.loading import load_model

pytestmark = pytest.mark.parity

transformers.logging.set_verbosity_error()

VOCAB = 96
EOS, PAD = 1, 0
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
             initializer_range=0.3, bos_token_id=EOS, eos_token_id=EOS)

CASES = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=48,
                                            initializer_range=0.3, bos_token_id=EOS, eos_token_id=EOS),
    "llama": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2),
    "qwen2": lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True),
    "mistral-window": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=6),
    "llama3-rope": lambda: transformers.LlamaConfig(
        **SMALL, max_position_embeddings=64, rope_theta=50.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
    ),
    "llama-dynamic-rope": lambda: transformers.LlamaConfig(
        **SMALL, max_position_embeddings=12, rope_scaling={"type": "dynamic", "factor": 2.0}
    ),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name, make in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        ref = transformers.AutoModelForCausalLM.from_config(make()).eval()
        ref.save_pretrained(folder, safe_serialization=True)
        out[name] = (ref, load_model(folder)[0])
    return out


def prompts(batch=3, length=7, pads=(0, 2, 4), seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate(pads[:batch]):
        mask[row, :n] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def same(ref, ours, ids, mask, **kw):
    kw.setdefault("pad_token_id", PAD)
    expected = ref.generate(ids, attention_mask=mask, **kw)
    got = generate(ours, ids, mask, **kw)
    assert got.shape == expected.shape, (got, expected)
    assert torch.equal(got, expected), (got, expected)
    return got


def eos_that_fires(ref, ids, mask, step=3, row=0):
    """A token greedy decoding really produces (at `step` of `row`), to use as eos."""
    out = ref.generate(ids, attention_mask=mask, max_new_tokens=step + 1, eos_token_id=None, pad_token_id=PAD)
    return int(out[row, ids.shape[1] + step])


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_batched_left_padded(models, name):
    ref, ours = models[name]
    ids, mask = prompts()
    if name != "llama-dynamic-rope":
        same(ref, ours, ids, mask, max_new_tokens=10)
        return
    # dynamic NTK rope regrows its frequencies by the longest position in transformers' batch, so
    # there a row's tokens depend on its neighbours; lightpipe gives each row its own (README,
    # deviations): each prompt as transformers generates it alone
    for row, m in zip(ids, mask):
        real = row[m.bool()][None]
        same(ref, ours, real, torch.ones_like(real), max_new_tokens=10)


def test_greedy_single_prompt_and_default_length(models):
    ref, ours = models["gpt2"]
    ids, mask = prompts(batch=1)
    same(ref, ours, ids, mask, max_new_tokens=12)
    out = same(ref, ours, ids, mask)  # transformers' default: 20 new tokens
    assert out.shape[1] == 7 + 20
    long_ids = torch.randint(2, VOCAB, (1, 40))
    out = same(ref, ours, long_ids, torch.ones_like(long_ids))  # ... capped by n_positions=48
    assert out.shape[1] == 48


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_eos_stops_rows_and_pads_them(models, name):
    ref, ours = models[name]
    ids, mask = prompts()
    eos = eos_that_fires(ref, ids, mask)
    out = same(ref, ours, ids, mask, max_new_tokens=12, eos_token_id=eos)
    assert (out[0, 7:] == eos).any()
    out = same(ref, ours, ids, mask, max_new_tokens=12, eos_token_id=[EOS, eos], pad_token_id=5)


def test_min_new_tokens_suppresses_eos(models):
    ref, ours = models["gpt2"]
    ids, mask = prompts()
    eos = eos_that_fires(ref, ids, mask, step=1)
    plain = same(ref, ours, ids, mask, max_new_tokens=12, eos_token_id=eos)
    held = same(ref, ours, ids, mask, max_new_tokens=12, eos_token_id=eos, min_new_tokens=6)
    assert not torch.equal(plain, held)
    same(ref, ours, ids, mask, max_new_tokens=12, eos_token_id=eos, min_length=11)


@pytest.mark.parametrize(
    "kw",
    [
        dict(repetition_penalty=1.8),
        dict(repetition_penalty=0.7),
        dict(no_repeat_ngram_size=2),
        dict(no_repeat_ngram_size=1),
        dict(bad_words_ids=[[5], [7, 8], [EOS]]),
        dict(forced_eos_token_id=9, max_length=15),
    ],
)
def test_logits_processors(models, kw):
    ref, ours = models["gpt2"]
    ids, mask = prompts()
    kw.setdefault("max_new_tokens", 12) if "max_length" not in kw else None
    same(ref, ours, ids, mask, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_beams=3),
        dict(num_beams=4, num_return_sequences=3, length_penalty=2.0),
        dict(num_beams=3, early_stopping=True, length_penalty=0.5),
        dict(num_beams=3, early_stopping="never", length_penalty=1.5, num_return_sequences=2),
        dict(num_beams=4, early_stopping="never", length_penalty=-1.0),
        dict(num_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.3),
    ],
)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_beam_search(models, name, kw):
    ref, ours = models[name]
    ids, mask = prompts()
    eos = eos_that_fires(ref, ids, mask, step=2)
    same(ref, ours, ids, mask, max_new_tokens=10, eos_token_id=[eos, EOS], **kw)


def test_beam_search_finished_hypotheses_shorter_than_running(models):
    """eos at the first steps: finished beams compete with running ones under the length penalty."""
    ref, ours = models["qwen2"]
    ids, mask = prompts()
    for step in (0, 1):
        eos = eos_that_fires(ref, ids, mask, step=step, row=1)
        for es in (True, False, "never"):
            same(ref, ours, ids, mask, max_new_tokens=8, eos_token_id=eos, num_beams=4, early_stopping=es,
                 num_return_sequences=4)


def test_beam_search_early_stopping_never_looks_ahead(models):
    """With early_stopping="never" and a positive length penalty, transformers bounds the running
    beams' best score at max_length rather than the current length: here that changes the answer."""
    ref, ours = models["gpt2"]
    ids, mask = prompts()
    eos = eos_that_fires(ref, ids, mask, step=0, row=1)
    kw = dict(max_new_tokens=10, eos_token_id=eos, num_beams=3, length_penalty=2.0)
    heuristic = same(ref, ours, ids, mask, early_stopping=False, **kw)
    never = same(ref, ours, ids, mask, early_stopping="never", **kw)
    assert not torch.equal(heuristic, never)


# ------------------------------------------------------------------------------------------ sampling


def test_sampling_is_seeded(models):
    _, ours = models["llama"]
    ids, mask = prompts()
    a = generate(ours, ids, mask, do_sample=True, seed=7, max_new_tokens=10, num_return_sequences=2)
    b = generate(ours, ids, mask, do_sample=True, seed=7, max_new_tokens=10, num_return_sequences=2)
    c = generate(ours, ids, mask, do_sample=True, seed=8, max_new_tokens=10, num_return_sequences=2)
    assert a.shape == (6, 17) and torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)  # no seed: the global generator, as transformers
    d = generate(ours, ids, mask, do_sample=True, max_new_tokens=10)
    torch.manual_seed(3)
    assert torch.equal(d, generate(ours, ids, mask, do_sample=True, max_new_tokens=10))


def test_top_k_1_is_greedy(models):
    ref, ours = models["gpt2"]
    ids, mask = prompts()
    greedy = same(ref, ours, ids, mask, max_new_tokens=10)
    assert torch.equal(generate(ours, ids, mask, do_sample=True, top_k=1, seed=0, max_new_tokens=10, pad_token_id=PAD), greedy)


@pytest.mark.parametrize("top_k", [0, 20])
def test_top_p_samples_only_the_nucleus(models, top_k):
    _, ours = models["gpt2"]
    ids, mask = prompts(batch=1)
    with torch.no_grad():
        probs = (ours(ids)[0, -1] / 0.7).softmax(-1)
    order = probs.argsort(descending=True)
    mass_before = probs[order].cumsum(0) - probs[order]
    top_p = 0.6
    nucleus = set(order[mass_before < top_p].tolist())
    assert 1 < len(nucleus) < VOCAB // 2
    out = generate(ours, ids, mask, do_sample=True, temperature=0.7, top_p=top_p, top_k=top_k, seed=0,
                   max_new_tokens=1, num_return_sequences=80)
    seen = set(out[:, -1].tolist())
    assert seen <= nucleus and len(seen) > 1


def test_beam_sampling_runs(models):
    _, ours = models["gpt2"]
    ids, mask = prompts()
    out = generate(ours, ids, mask, do_sample=True, num_beams=3, num_return_sequences=2, seed=1, max_new_tokens=6)
    assert out.shape[0] == 6 and out.shape[1] <= 13


# ------------------------------------------------------------------------------------------ stop strings


def test_stop_strings_match_transformers(tmp_path):
    from tiny import bpe_tokenizer

    tok = bpe_tokenizer(tmp_path, kind="gpt2", vocab_size=300)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=64,
                                  initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ref.save_pretrained(tmp_path)
    ours, _ = load_model(tmp_path)
    tok.pad_token = tok.eos_token
    enc = tok(["The object is", "A list of the"], return_tensors="pt", padding=True, padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    free = ref.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0)
    text = tok.decode(free[0, ids.shape[1] + 3 :])
    stop = text[2:5]  # occurs in row 0's continuation, from its 4th new token on
    assert stop.strip()
    expected = ref.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0, stop_strings=[stop],
                            tokenizer=tok)
    got = generate(ours, ids, mask, max_new_tokens=12, pad_token_id=0, eos_token_id=0, stop=[stop],
                   decode=tok.decode)
    assert torch.equal(got, expected)
    assert got[0, -1] == 0 and stop in tok.decode(got[0, ids.shape[1] :])  # row 0 stopped, padded
    got = generate(ours, ids, mask, max_new_tokens=12, pad_token_id=0, eos_token_id=0, stop=stop, decode=tok.decode,
                   num_beams=2)
    assert got.shape[0] == 2


# ------------------------------------------------------------------------------------------ encoder-decoder


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bart")
    cfg = transformers.BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        init_std=0.3, forced_bos_token_id=0,
    )
    torch.manual_seed(0)
    ref = transformers.BartForConditionalGeneration(cfg).eval()
    ref.save_pretrained(folder, safe_serialization=True)
    ours, config = load_model(folder)
    defaults = GenerationConfig.from_model(config, json.loads((folder / "generation_config.json").read_text()))
    return ref, ours, defaults


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # the checkpoint's defaults: forced bos, forced eos at max_length, 20 new tokens
        dict(max_new_tokens=9, min_length=6),
        dict(num_beams=4, num_return_sequences=2, max_new_tokens=10),
        dict(num_beams=3, length_penalty=2.0, early_stopping=True, no_repeat_ngram_size=2, max_length=14),
        dict(num_beams=3, early_stopping="never", repetition_penalty=1.5, bad_words_ids=[[7]], max_new_tokens=8),
    ],
)
def test_encoder_decoder(bart, kw):
    ref, ours, defaults = bart
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    expected = ref.generate(ids, attention_mask=mask, **kw)
    got = generate(ours, ids, mask, defaults, **kw)
    assert torch.equal(got, expected), (got, expected)


# ------------------------------------------------------------------------------------------ config


def test_generation_config_precedence():
    model_config = {"model_type": "bart", "num_beams": 4, "max_length": 142, "eos_token_id": 2, "pad_token_id": 1,
                    "no_repeat_ngram_size": 3, "vocab_size": 10}
    from_model = GenerationConfig.from_model(model_config)
    assert (from_model.num_beams, from_model.max_length, from_model.no_repeat_ngram_size) == (4, 142, 3)
    from_file = GenerationConfig.from_model(model_config, {"num_beams": 2, "eos_token_id": [2, 3],
                                                           "stop_strings": ["\n"]})
    assert from_file.num_beams == 2 and from_file.max_length is None and from_file.eos_token_id == [2, 3]
    assert from_file.stop == ["\n"]
    merged = GenerationConfig(max_new_tokens=256, top_k=10).merge(max_length=30, top_k=None, num_beams=3)
    assert merged.max_length == 30 and merged.max_new_tokens is None and merged.top_k == 10 and merged.num_beams == 3
    with pytest.raises(ValueError, match="frobnicate"):
        GenerationConfig().merge(frobnicate=1)


def test_caller_max_length_20_is_total_length(models):
    ref, ours = models["gpt2"]
    ids, mask = prompts(batch=1)
    assert same(ref, ours, ids, mask, max_length=20).shape[1] == 20


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(do_sample=True, top_p=1.5), "top_p"),
        (dict(do_sample=True, top_p=0.0), "top_p"),
        (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
        (dict(num_return_sequences=2), "num_return_sequences"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(early_stopping="sometimes"), "early_stopping"),
        (dict(bad_words_ids=[3]), "bad_words_ids"),
        (dict(stop=["x"]), "decode"),
        (dict(max_length=5), "max_length"),
    ],
)
def test_bad_arguments_are_value_errors(models, kw, word):
    _, ours = models["gpt2"]
    ids, mask = prompts()
    with pytest.raises(ValueError, match=word):
        generate(ours, ids, mask, **kw)


def test_prompt_longer_than_the_context(models):
    _, ours = models["gpt2"]
    ids = torch.randint(2, VOCAB, (1, 48))
    with pytest.raises(ValueError, match="input_ids.*context"):
        generate(ours, ids, max_new_tokens=5)
    with pytest.warns(UserWarning, match="context ends at 48"):
        out = generate(ours, ids[:, :45], max_new_tokens=10)  # stops at the context's end
    assert out.shape[1] == 49  # 48 positions fed; the last token is predicted from position 47
