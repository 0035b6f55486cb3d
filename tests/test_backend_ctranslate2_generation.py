"""backend="ctranslate2" generation against the torch backend, live.

Tiny random checkpoints (tests/tiny.py: GPT-2, Llama with Llama 3's BOS post-processor,
Mistral, Qwen2 with its q/k/v biases, BART, Marian) generate the same tokens through
CTranslate2 as through lightpipe's torch engine — greedy and beam search, on prompts of
different lengths batched together (padding), with the length, penalty and end options — and
their first-step logits agree within float32 rounding; seeded sampling repeats; int8 agrees
top-1 with float32 on most steps; what CTranslate2 can't honour is a ValueError naming it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightpipe import pipeline
from test_text_generation import PROMPTS, gpt2_tokenizer
from tiny import (bart_checkpoint, causal_lm_checkpoint, llama2_tokenizer, llama3_tokenizer, marian_checkpoint,
                  qwen2_tokenizer, sentences)

pytestmark = pytest.mark.parity

DECODERS = {
    "gpt2": gpt2_tokenizer,       # byte-level BPE, nothing added, learned positions
    "llama": llama3_tokenizer,    # <|begin_of_text|> added by the post-processor; GQA, rotary
    "mistral": llama2_tokenizer,  # sentencepiece BPE, <s> added
    "qwen2": qwen2_tokenizer,     # q/k/v biases
}
TEXTS = [s for s in sentences(30, start=60) if 40 < len(s) < 220][:5]
GREEDY = {"do_sample": False, "max_new_tokens": 12}
DECODER_OPTIONS = [
    GREEDY,
    {"do_sample": False, "max_new_tokens": 10, "return_full_text": False},
    {"do_sample": False, "max_new_tokens": 10, "num_beams": 3, "num_return_sequences": 2},
    {"do_sample": False, "max_new_tokens": 10, "num_beams": 4, "length_penalty": 0.5, "early_stopping": True},
    {"do_sample": False, "max_new_tokens": 10, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
    {"do_sample": False, "max_new_tokens": 9, "min_new_tokens": 9},
    {"do_sample": False, "max_length": 36},  # counted with the prompt: each prompt its own length
]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    cache = {}

    def get(family: str, **overrides):
        key = (family, *sorted(overrides.items()))
        if key not in cache:
            folder = tmp_path_factory.mktemp(family)
            cache[key] = causal_lm_checkpoint(folder, family, DECODERS[family](folder), **overrides)
        return cache[key]

    return get


def both(task: str, folder, **kwargs):
    return (pipeline(task, model=folder, **kwargs),
            pipeline(task, model=folder, backend="ctranslate2", **kwargs))


def token_ids(records) -> list:
    """Records with tensors (return_tensors=True) as plain lists, for ==."""
    if isinstance(records, list):
        return [token_ids(r) for r in records]
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in records.items()}


# -- decoder-only -------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(DECODERS))
@pytest.mark.parametrize("kwargs", DECODER_OPTIONS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_decoder_generates_the_torch_backends_tokens(family, kwargs, decoder):
    ours, ct2 = both("text-generation", decoder(family))
    want = ours(PROMPTS, **kwargs)
    assert ct2(PROMPTS, batch_size=4, **kwargs) == want  # one batch, padded to the longest prompt
    assert ct2(PROMPTS[1], **kwargs) == want[1]  # alone


@pytest.mark.parametrize("family", list(DECODERS))
def test_first_step_logits_agree(family, decoder):
    """Not just the same argmax: the distributions agree within float32 rounding."""
    ours, ct2 = both("text-generation", decoder(family))
    ids = [ours.tokenizer.encode(p).ids for p in PROMPTS]
    engine = ct2.model.generation_backend.engine
    for prompt in ids:
        got = torch.from_numpy(__import__("numpy").asarray(
            engine.forward_batch([[f"<{t}>" for t in prompt]]))).float()[0, -1]
        want = ours.model(torch.tensor([prompt]))[0, -1].float()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_return_tensors_and_an_empty_prompt(decoder):
    ours, ct2 = both("text-generation", decoder("llama"))
    kwargs = {"do_sample": False, "max_new_tokens": 6, "return_tensors": True}
    assert token_ids(ct2(PROMPTS, **kwargs)) == token_ids(ours(PROMPTS, **kwargs))
    # an empty prompt starts from BOS, which transformers returns
    assert ct2("", **GREEDY) == ours("", **GREEDY)


def test_tied_embeddings_and_plain_attention(decoder):
    """Qwen2's small models tie the LM head to the embeddings; Llama with as many kv heads as heads."""
    for folder in (decoder("qwen2", tie_word_embeddings=True), decoder("llama", num_key_value_heads=4)):
        ours, ct2 = both("text-generation", folder)
        assert ct2(PROMPTS, **GREEDY) == ours(PROMPTS, **GREEDY)


def unique_weight_bytes(model) -> int:
    """The bytes of a torch model's weights and tables (Marian's sinusoidal positions), each
    shared tensor counted once."""
    tensors = {(t.data_ptr(), t.shape): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("family", ["gpt2", "qwen2-tied", "qwen2", "bart", "marian"])
def test_shared_weights_are_saved_once(family, decoder, seq2seq):
    """A tied LM head and BART's / Marian's shared embeddings are aliases in CTranslate2's
    model.bin, not copies: the file is no larger than the torch model's distinct weights."""
    if family in seq2seq:
        task, folder = ("summarization" if family == "bart" else "translation"), seq2seq[family]
    else:
        task, folder = "text-generation", decoder("qwen2", tie_word_embeddings=True) if family == "qwen2-tied" \
            else decoder(family)
    ours, ct2 = both(task, folder)
    saved = Path(ct2.model.generation_backend.files.name, "model.bin").stat().st_size
    assert saved <= unique_weight_bytes(ours.model) + 64_000  # names, shapes and small scalars


def test_eos_ends_rows_at_different_lengths(decoder):
    """Rows end on an eos token of several (each row at its own length, the eos returned as the
    torch backend returns it): eos ids picked from the torch backend's own outputs."""
    ours, ct2 = both("text-generation", decoder("gpt2"))
    free = ours(PROMPTS, return_tensors=True, **GREEDY)
    eos = [r[0]["generated_token_ids"][-5].item() for r in free[:2]]
    kwargs = {**GREEDY, "eos_token_id": eos, "return_tensors": True}
    want = token_ids(ours(PROMPTS, **kwargs))
    assert len({len(r[0]["generated_token_ids"]) for r in want}) > 1
    assert token_ids(ct2(PROMPTS, **kwargs)) == want


def test_stop_strings_and_stop_sequence(decoder):
    ours, ct2 = both("text-generation", decoder("gpt2"))
    text = ours(PROMPTS[0], return_full_text=False, **GREEDY)[0]["generated_text"]
    stop = text[len(text) // 2:len(text) // 2 + 3]
    for kwargs in ({"stop_strings": stop}, {"stop_sequence": stop}):
        want = ours(PROMPTS, **GREEDY, **kwargs)
        assert ct2(PROMPTS, **GREEDY, **kwargs) == want
    assert len(want[0][0]["generated_text"]) < len(PROMPTS[0] + text)  # the stop did cut


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_stream_yields_the_calls_text(family, decoder):
    ours, ct2 = both("text-generation", decoder(family))
    for kwargs in (GREEDY, {**GREEDY, "stop_strings": "e"}):
        whole = ct2(PROMPTS[1], return_full_text=False, **kwargs)[0]["generated_text"]
        pieces = list(ct2.stream(PROMPTS[1], **kwargs))
        assert "".join(pieces) == whole == "".join(ours.stream(PROMPTS[1], **kwargs))
        assert len(pieces) > 1 or "stop_strings" in kwargs  # pieces as tokens come
    stream = ct2.stream(PROMPTS[1], do_sample=False, max_new_tokens=60)
    next(stream)
    stream.close()  # stops CTranslate2's decoding: no hang, no error


def test_seeded_sampling_repeats(decoder):
    _, ct2 = both("text-generation", decoder("llama"))
    kwargs = {"do_sample": True, "max_new_tokens": 12, "temperature": 1.5, "top_k": 0, "top_p": 0.95}
    first = ct2(PROMPTS, seed=7, **kwargs)
    assert ct2(PROMPTS, seed=7, **kwargs) == first
    assert ct2(PROMPTS, seed=8, **kwargs) != first  # the seed matters: the check can fail
    several = ct2(PROMPTS[0], seed=7, num_return_sequences=3, **kwargs)
    assert len(several) == 3 and ct2(PROMPTS[0], seed=7, num_return_sequences=3, **kwargs) == several
    streamed = "".join(ct2.stream(PROMPTS[0], seed=7, **kwargs))
    assert "".join(ct2.stream(PROMPTS[0], seed=7, **kwargs)) == streamed


def test_int8(decoder):
    """quantize="int8": CTranslate2's int8 weights; top-1 agrees with float32 on most steps of
    the float32 continuations (teacher-forced), and the logits do change."""
    folder = decoder("gpt2")
    fp32 = pipeline("text-generation", model=folder, backend="ctranslate2")
    int8 = pipeline("text-generation", model=folder, backend="ctranslate2", quantize="int8")
    assert int8.model.generation_backend.compute_type == "int8"
    rows = fp32(PROMPTS, do_sample=False, max_new_tokens=24, return_tensors=True)
    same = total = 0
    for r in rows:
        seq = [[f"<{t}>" for t in r[0]["generated_token_ids"].tolist()]]
        a = torch.from_numpy(__import__("numpy").asarray(fp32.model.generation_backend.engine.forward_batch(seq)))
        b = torch.from_numpy(__import__("numpy").asarray(int8.model.generation_backend.engine.forward_batch(seq)))
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[1]
        assert not torch.allclose(a, b, atol=1e-5)
    print(f"int8 top-1 agreement with float32: {same}/{total}")
    assert same / total >= 0.9


# -- encoder-decoder ----------------------------------------------------------------------------

CNN_LIKE = {"num_beams": 4, "length_penalty": 2.0, "no_repeat_ngram_size": 3, "min_length": 8, "max_length": 30,
            "early_stopping": True, "forced_bos_token_id": 0}  # sshleifer/distilbart-cnn-12-6's settings


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    return {"bart": bart_checkpoint(tmp_path_factory.mktemp("bart"), generation=CNN_LIKE),
            "marian": marian_checkpoint(tmp_path_factory.mktemp("marian"))}


@pytest.mark.parametrize("kwargs", [{"no_repeat_ngram_size": 0}, {"num_beams": 1},
                                    {"num_beams": 3, "num_return_sequences": 2, "no_repeat_ngram_size": 0},
                                    {"num_beams": 1, "max_new_tokens": 7, "repetition_penalty": 1.4},
                                    {"return_tensors": True, "no_repeat_ngram_size": 0}],
                         ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_bart_summarizes_as_the_torch_backend(kwargs, seq2seq):
    """The checkpoint's settings (4 beams, length_penalty 2, min_length, early_stopping, forced
    BOS and EOS) and greedy with no_repeat_ngram_size: the torch backend's tokens."""
    ours, ct2 = both("summarization", seq2seq["bart"])
    want = token_ids(ours(TEXTS, **kwargs))
    assert token_ids(ct2(TEXTS, batch_size=3, **kwargs)) == want


def test_beam_search_bans_renormalize(seq2seq):
    """The documented difference: with beams, CTranslate2 applies no_repeat_ngram_size (and
    the other penalties and bans) before it normalizes the step's log-probabilities, where
    transformers applies them after, so the search may rank beams differently. The bans still
    hold: no summary repeats a trigram, and each keeps the lengths asked for."""
    ours, ct2 = both("summarization", seq2seq["bart"])
    got = token_ids(ct2(TEXTS, return_tensors=True))  # the checkpoint's no_repeat_ngram_size=3
    want = token_ids(ours(TEXTS, return_tensors=True))
    for record in got:
        ids = record["summary_token_ids"]
        trigrams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
        assert len(set(trigrams)) == len(trigrams), ids
        assert CNN_LIKE["min_length"] <= len(ids) <= CNN_LIKE["max_length"]
    print(f"beams with no_repeat_ngram_size=3: {sum(a == b for a, b in zip(got, want))}/{len(want)} summaries "
          "equal to the torch backend's")


@pytest.mark.parametrize("kwargs", [{}, {"num_beams": 1}, {"num_beams": 2, "max_new_tokens": 12}])
def test_marian_translates_as_the_torch_backend(kwargs, seq2seq):
    """Marian: sinusoidal positions, scaled embeddings, decoding from the pad token's row, the
    pad token banned (bad_words_ids), as the checkpoint's generation_config says."""
    ours, ct2 = both("translation", seq2seq["marian"])
    assert ct2(TEXTS, **kwargs) == ours(TEXTS, **kwargs)


def test_text2text_and_int8(seq2seq):
    ours, ct2 = both("text2text-generation", seq2seq["bart"])
    assert ct2(TEXTS[:2], num_beams=1) == ours(TEXTS[:2], num_beams=1)
    int8 = pipeline("summarization", model=seq2seq["bart"], backend="ctranslate2", quantize="int8")
    assert int8.model.generation_backend.compute_type == "int8"
    assert all(r["summary_text"] for r in int8(TEXTS[:2], num_beams=1))


# -- errors -------------------------------------------------------------------------------------

def test_what_ctranslate2_cant_honour_is_refused(decoder, seq2seq):
    _, ct2 = both("text-generation", decoder("gpt2"))
    for kwargs, name in [({"do_sample": True, "num_beams": 2}, "beam sampling"),
                         ({"do_sample": False, "num_beams": 2, "stop_strings": "x"}, "stop"),
                         ({"do_sample": False, "forced_bos_token_id": 3}, "forced_bos_token_id")]:
        with pytest.raises(ValueError, match=rf"backend='ctranslate2'.*{name}"):
            ct2(PROMPTS[0], max_new_tokens=4, **kwargs)
    with pytest.raises(ValueError, match="backend='ctranslate2', which has no continuous-batching engine"):
        ct2.engine()  # the server's streams step this engine
    _, bart = both("summarization", seq2seq["bart"])
    with pytest.raises(ValueError, match="decoder_start_token_id=5"):
        bart(TEXTS[0], decoder_start_token_id=5)


def test_unsupported_models_fail_before_loading(tmp_path):
    folder = causal_lm_checkpoint(tmp_path, "gpt2", gpt2_tokenizer(tmp_path), scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        pipeline("text-generation", model=folder, backend="ctranslate2")
    from lightpipe.backends import ctranslate2 as backend

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"generates with gpt2, .*marian models, not model_type 't5'"):
        backend.check({"model_type": "t5"}, cpu, "seq2seq-lm")
    with pytest.raises(ValueError, match="rope_scaling 'default' and 'linear', not 'dynamic'"):
        backend.check({"model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2.0}}, cpu, "causal-lm")
