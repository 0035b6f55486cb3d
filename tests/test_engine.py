"""The generation engine (lightpipe.generation.Engine): sequences join and leave a running batch
at any step, each with its own settings, and give what transformers 4.57.6's generate() gives
their prompt alone — greedy and beams token for token, seeded sampling the same alone and busy.
Also: cancellation, admission within the KV budget, chunked prefill, events and logprobs."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.nn.functional as F
import transformers

from lightpipe.generation import Engine, GenerationConfig
from lightpipe.loading import load_model
from tiny import perturb_seq2seq

pytestmark = pytest.mark.parity

transformers.logging.set_verbosity_error()

VOCAB = 96
EOS, PAD = 1, 0
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
             initializer_range=0.3, bos_token_id=EOS, eos_token_id=EOS)
DECODERS = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=128,
                                            initializer_range=0.3, bos_token_id=EOS, eos_token_id=EOS),
    "mistral-window": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=6),
}


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    out = {}
    for name, make in DECODERS.items():
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        ref = transformers.AutoModelForCausalLM.from_config(make()).eval()
        ref.save_pretrained(folder, safe_serialization=True)
        out[name] = (ref, load_model(folder)[0])
    return out


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    out = {}
    configs = {
        "bart": transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                        decoder_ffn_dim=64, max_position_embeddings=64, init_std=0.3),
        "t5": transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                    initializer_factor=3.0, decoder_start_token_id=0, pad_token_id=0,
                                    eos_token_id=EOS),
    }
    for name, config in configs.items():
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        ref = perturb_seq2seq(transformers.AutoModelForSeq2SeqLM.from_config(config), eos_boost=2.0)
        ref.save_pretrained(folder, safe_serialization=True)
        ours, model_config = load_model(folder)
        defaults = GenerationConfig.from_model(model_config, json.loads((folder / "generation_config.json").read_text()))
        out[name] = (ref, ours, defaults)
    return out


def prompt(length, seed):
    return torch.randint(2, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


GREEDY = dict(max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD)


def alone(ref, ids: list[int], **kw) -> list[int]:
    """transformers' new tokens for one prompt, up to its end (eos included)."""
    kw = {**GREEDY, **kw}
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), **kw)
    if ref.config.is_encoder_decoder:
        return _cut(out[0, 1:].tolist(), kw)
    return _cut(out[0, len(ids):].tolist(), kw)


def alone_beams(ref, ids, n, **kw) -> list[list[int]]:
    kw = {**GREEDY, **kw}
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           num_return_sequences=n, **kw)
    start = 1 if ref.config.is_encoder_decoder else len(ids)
    return [_cut(row[start:], kw) for row in out.tolist()]


def _cut(tokens, kw):
    """Up to and including the first eos (what follows is transformers' padding)."""
    eos = kw["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i + 1]
    return tokens


def run_alone(model, ids, **kw) -> list[list[int]]:
    engine = Engine(model)
    return engine.run([engine.submit(ids, **{**GREEDY, **kw})])[0].tokens


def busy(engine, steps=0, **kw):
    """Background requests with other settings (sampled, penalised, beams), stepped `steps` times."""
    handles = [
        engine.submit(prompt(9, 100), **{**GREEDY, "max_new_tokens": 40, "do_sample": True, "temperature": 0.8,
                                         "seed": 5}),
        engine.submit(prompt(5, 101), **{**GREEDY, "max_new_tokens": 30, "repetition_penalty": 1.5,
                                         "no_repeat_ngram_size": 2}),
        engine.submit(prompt(12, 102), **{**GREEDY, "max_new_tokens": 25, "num_beams": 3, **kw}),
    ]
    for _ in range(steps):
        engine.step()
    return handles


def eos_that_fires(ref, ids, step):
    """A token greedy decoding produces at `step`, to use as eos."""
    return alone(ref, ids, max_new_tokens=step + 5, eos_token_id=-1)[step]


# ------------------------------------------------------------------------------- joining a busy batch


@pytest.mark.parametrize("name", list(DECODERS))
def test_greedy_and_beams_joining_mid_run_match_transformers_alone(decoders, name):
    ref, ours = decoders[name]
    engine = Engine(ours)
    background = busy(engine, steps=4)
    cases = [
        (prompt(7, 1), {}),
        (prompt(3, 2), dict(repetition_penalty=1.3, no_repeat_ngram_size=2, max_new_tokens=14)),
        (prompt(11, 3), dict(bad_words_ids=[[5], [7, 8]], min_new_tokens=4)),
    ]
    handles = [engine.submit(ids, **{**GREEDY, **kw}) for ids, kw in cases]
    engine.step()
    beam_ids = prompt(6, 4)
    beams = engine.submit(beam_ids, **{**GREEDY, "num_beams": 4, "num_return_sequences": 2, "length_penalty": 1.5})
    engine.run(handles + [beams] + background)
    for h, (ids, kw) in zip(handles, cases):
        assert h.tokens == [alone(ref, ids, **kw)]
    assert beams.tokens == alone_beams(ref, beam_ids, 2, num_beams=4, length_penalty=1.5)
    # the background requests too: each as transformers (or, sampled, as itself alone) gives it
    assert background[1].tokens == [alone(ref, prompt(5, 101), max_new_tokens=30, repetition_penalty=1.5,
                                          no_repeat_ngram_size=2)]
    assert background[2].tokens == alone_beams(ref, prompt(12, 102), 1, max_new_tokens=25, num_beams=3)
    assert background[0].tokens == run_alone(ours, prompt(9, 100), max_new_tokens=40, do_sample=True,
                                             temperature=0.8, seed=5)


def test_seeded_sampling_is_the_same_alone_and_in_a_busy_batch(decoders):
    _, ours = decoders["gpt2"]
    settings = [dict(do_sample=True, seed=3, max_new_tokens=20),
                dict(do_sample=True, seed=4, top_k=5, temperature=1.5, max_new_tokens=20),
                dict(do_sample=True, seed=5, top_p=0.6, top_k=0, max_new_tokens=20),
                dict(do_sample=True, seed=6, num_return_sequences=3, max_new_tokens=12)]
    solo = [run_alone(ours, prompt(6 + i, 20 + i), **kw) for i, kw in enumerate(settings)]
    assert len({tuple(s[0]) for s in solo}) == 4 and len({tuple(t) for t in solo[3]}) == 3  # seeds, rows differ
    engine = Engine(ours)
    busy(engine, steps=3)
    handles = []
    for i, kw in enumerate(settings):  # joining one step apart, among other sampled rows
        handles.append(engine.submit(prompt(6 + i, 20 + i), **{**GREEDY, **kw}))
        engine.step()
    engine.run(handles)
    assert [h.tokens for h in handles] == solo


@pytest.mark.parametrize("name", ["bart", "t5"])
def test_encoder_decoder_requests_join_and_leave_a_busy_batch(seq2seq, name):
    ref, ours, defaults = seq2seq[name]
    kw = dict(eos_token_id=defaults.eos_token_id, pad_token_id=defaults.pad_token_id)
    sources = [prompt(n, 40 + n) for n in (15, 4, 9, 6)]
    eos = eos_that_fires(ref, sources[0], 1)  # the first request (the longest source) ends early
    engine = Engine(ours)
    early = engine.submit(sources[0], defaults, **{**GREEDY, **kw, "eos_token_id": eos})
    beams = engine.submit(sources[1], defaults, **{**GREEDY, **kw, "max_new_tokens": 16, "num_beams": 3})
    filler = engine.submit(sources[3], defaults, **{**GREEDY, **kw, "max_new_tokens": 16})  # 5 rows: room for 8
    engine.step()
    engine.step()  # `early` leaves: rows with shorter sources move into its place
    later = [engine.submit(sources[2], defaults, **{**GREEDY, **kw, "no_repeat_ngram_size": 2}),
             engine.submit(sources[3], defaults, **{**GREEDY, **kw, "num_beams": 2, "num_return_sequences": 2})]
    engine.run([early, beams, filler] + later)
    assert early.tokens == [alone(ref, sources[0], **{**kw, "eos_token_id": eos})] and len(early.tokens[0]) <= 2
    assert beams.tokens == alone_beams(ref, sources[1], 1, **kw, max_new_tokens=16, num_beams=3)
    assert later[0].tokens == [alone(ref, sources[2], **kw, no_repeat_ngram_size=2)]
    assert later[1].tokens == alone_beams(ref, sources[3], 2, **kw, num_beams=2)


# ------------------------------------------------------------------------------- joining and leaving


def test_sequences_leave_at_their_own_step_and_free_their_rows(decoders):
    ref, ours = decoders["gpt2"]
    engine = Engine(ours)
    lengths = [1, 3, 5, 2, 6]
    handles = [engine.submit(prompt(4 + i, 60 + i), **{**GREEDY, "max_new_tokens": n}) for i, n in enumerate(lengths)]
    per_step = []
    while engine.has_work():
        events = engine.step()
        per_step.append(sorted(lengths[[h.id for h in handles].index(e.handle.id)] for e in events))
        assert engine.cache.rows == sum(not h.done for h in handles)  # a finished sequence's row is gone
    # step k gives a token to every sequence still short of its length
    assert per_step == [sorted(n for n in lengths if n > k) for k in range(max(lengths))]
    for i, (h, n) in enumerate(zip(handles, lengths)):
        assert h.done and h.finish_reasons == ["length"] and h.counts() == [n]
        assert h.tokens == [alone(ref, prompt(4 + i, 60 + i), max_new_tokens=n)]


def test_finish_reasons_and_events(decoders):
    ref, ours = decoders["gpt2"]
    ids = prompt(6, 70)
    free = alone(ref, ids, max_new_tokens=12, eos_token_id=-1)
    engine = Engine(ours)
    e = next(i for i in range(3, 12) if free[i] not in free[:i])  # an eos that ends the row at e + 1 tokens
    stopped = engine.submit(ids, **{**GREEDY, "max_new_tokens": 12, "eos_token_id": free[e]})
    long = engine.submit(ids, **{**GREEDY, "max_new_tokens": 7, "eos_token_id": -1})
    # a stop string: text made of the tokens' ids, where the first new token not seen before
    # completes "<t>" (a token seen before would have stopped the row there already)
    names = {t: f"<{t}>" for t in range(VOCAB)}
    decode = lambda toks: "".join(names[t] for t in toks)  # noqa: E731
    k = next(i for i in range(1, 12) if free[i] not in free[:i])
    by_string = engine.submit(ids, **{**GREEDY, "max_new_tokens": 12, "eos_token_id": -1}, stop=[names[free[k]]],
                              decode=decode)
    events = {h.id: [] for h in (stopped, long, by_string)}
    for event in engine.events():
        events[event.handle.id].append(event)
    assert stopped.tokens == [free[:e + 1]] and stopped.finish_reasons == ["stop"]
    assert long.tokens == [free[:7]] and long.finish_reasons == ["length"]
    assert by_string.tokens == [free[:k + 1]] and by_string.finish_reasons == ["stop_string"]
    for h in (stopped, long, by_string):
        got = events[h.id]
        assert [e.token for e in got] == h.tokens[0] and [e.index for e in got] == [0] * len(got)
        assert [e.finish_reason for e in got] == [None] * (len(got) - 1) + h.finish_reasons


def test_logprobs_are_those_of_the_distribution_drawn_from(decoders):
    ref, ours = decoders["gpt2"]
    ids = prompt(8, 80)
    engine = Engine(ours)
    greedy = engine.submit(ids, **GREEDY, logprobs=True, top_logprobs=3)
    penalised = engine.submit(ids, **{**GREEDY, "repetition_penalty": 2.0}, top_logprobs=2)
    sampled = engine.submit(ids, **{**GREEDY, "do_sample": True, "top_k": 1, "seed": 0}, logprobs=True)
    tops = []
    for event in engine.events():
        if event.handle is greedy:
            tops.append(event.top_logprobs)
    with torch.no_grad():  # transformers' scores after the processors, as output_scores gives them
        out = ref.generate(torch.tensor([ids]), output_scores=True, return_dict_in_generate=True, **GREEDY)
    expected = [F.log_softmax(s[0], -1) for s in out.scores]
    assert greedy.tokens[0] == out.sequences[0, len(ids):].tolist()
    for step, (token, lp, top) in enumerate(zip(greedy.tokens[0], greedy.token_logprobs[0], tops)):
        assert lp == pytest.approx(expected[step][token].item(), abs=1e-5)
        assert top[0][0] == token and len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
        assert top[1][1] == pytest.approx(expected[step].topk(2).values[1].item(), abs=1e-5)
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), output_scores=True, return_dict_in_generate=True,
                           repetition_penalty=2.0, **GREEDY)
    lp = [F.log_softmax(s[0], -1)[t].item() for s, t in zip(out.scores, out.sequences[0, len(ids):].tolist())]
    assert penalised.token_logprobs[0] == pytest.approx(lp, abs=1e-5)
    assert sampled.token_logprobs[0] == [0.0] * len(sampled.tokens[0])  # top_k=1: the only candidate


@pytest.mark.parametrize("warp", [dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.7, top_k=0),
                                  dict(repetition_penalty=1.4, top_k=12)])
def test_sampled_logprobs_are_the_warped_distributions(decoders, warp):
    """A sampled token's logprob, and its alternatives', are the log-softmax of the scores it was
    drawn from: the model's logits through transformers' own processors and warpers."""
    ref, ours = decoders["gpt2"]
    ids = prompt(7, 81)
    engine = Engine(ours)
    h = engine.submit(ids, **{**GREEDY, "max_new_tokens": 8, "eos_token_id": -1, "do_sample": True, "seed": 9, **warp},
                      top_logprobs=3)
    tops = [e.top_logprobs for e in engine.events(h)]
    processors = transformers.LogitsProcessorList()  # transformers' order: processors, then warpers
    if "repetition_penalty" in warp:
        processors.append(transformers.RepetitionPenaltyLogitsProcessor(warp["repetition_penalty"]))
    if "temperature" in warp:
        processors.append(transformers.TemperatureLogitsWarper(warp["temperature"]))
    if warp.get("top_k"):
        processors.append(transformers.TopKLogitsWarper(warp["top_k"]))
    if "top_p" in warp:
        processors.append(transformers.TopPLogitsWarper(warp["top_p"]))
    tokens = h.tokens[0]
    for t, (token, lp, top) in enumerate(zip(tokens, h.token_logprobs[0], tops)):
        seen = torch.tensor([ids + tokens[:t]])
        with torch.no_grad():
            logits = ref(seen).logits[:, -1]
        expected = F.log_softmax(processors(seen, logits)[0], -1)
        assert expected[token] > float("-inf")  # drawn from inside the warped distribution
        assert lp == pytest.approx(expected[token].item(), abs=1e-4)
        best = expected.topk(3)
        assert [i for i, _ in top] == best.indices.tolist()
        assert [v for _, v in top] == pytest.approx(best.values.tolist(), abs=1e-4)


# ------------------------------------------------------------------------------- cancellation


def test_a_cancelled_sequence_frees_its_rows_and_the_others_go_on_unchanged(decoders):
    ref, ours = decoders["gpt2"]
    engine = Engine(ours)
    ids = [prompt(5 + i, 90 + i) for i in range(3)]
    handles = [engine.submit(ids[0], **{**GREEDY, "max_new_tokens": 15}),
               engine.submit(ids[1], **{**GREEDY, "max_new_tokens": 15, "num_beams": 3}),
               engine.submit(ids[2], **{**GREEDY, "max_new_tokens": 15, "do_sample": True, "seed": 1,
                                        "num_return_sequences": 2})]
    for _ in range(4):
        engine.step()
    assert engine.cache.rows == 1 + 3 + 2
    engine.cancel(handles[1])
    seen = [e.handle for e in engine.step()]
    assert handles[1].done and handles[1].cancelled and engine.cache.rows == 3 and handles[1] not in seen
    engine.cancel(handles[2])
    engine.step()
    assert engine.cache.rows == 1
    engine.run(handles)
    assert handles[0].tokens == [alone(ref, ids[0], max_new_tokens=15)]
    assert handles[2].cancelled and len(handles[2].tokens[0]) < 15


def test_closing_a_stream_cancels_its_sequence_at_once(decoders):
    _, ours = decoders["gpt2"]
    engine = Engine(ours)
    other = engine.submit(prompt(5, 1), **{**GREEDY, "max_new_tokens": 30})
    handle = engine.submit(prompt(5, 2), **{**GREEDY, "max_new_tokens": 30})
    stream = engine.events(handle)
    tokens = [next(stream).token for _ in range(3)]
    assert engine.cache.rows == 2
    stream.close()
    assert handle.cancelled and engine.cache.rows == 1 and handle.tokens == [tokens]
    engine.run([other])
    assert len(other.tokens[0]) == 30


def test_waiting_requests_can_be_cancelled(decoders):
    _, ours = decoders["gpt2"]
    engine = Engine(ours, max_rows=1)
    running = engine.submit(prompt(5, 1), **{**GREEDY, "max_new_tokens": 4})
    waiting = engine.submit(prompt(5, 2), **{**GREEDY, "max_new_tokens": 4})
    engine.step()
    engine.cancel(waiting)
    engine.run([running])
    assert waiting.done and waiting.cancelled and waiting.tokens == [[]]


# ------------------------------------------------------------------------------- the KV budget


def test_a_request_that_does_not_fit_waits_then_runs(decoders):
    ref, ours = decoders["gpt2"]
    a_ids, b_ids = prompt(20, 3), prompt(30, 4)
    # a: 1 row x (20 + 9) positions; b: 3 beams x (30 + 9): 117 — both together need 4 x 39 > 150
    engine = Engine(ours, kv_budget_tokens=150)
    a = engine.submit(a_ids, **GREEDY)
    b = engine.submit(b_ids, **{**GREEDY, "num_beams": 3})
    steps_before_b = 0
    while not a.done:
        events = engine.step()
        assert all(e.handle is a for e in events) and not b.done
        assert engine.cache.tokens_needed() <= 150
        steps_before_b += 1
    assert steps_before_b == len(a.tokens[0])
    engine.run([b])
    assert a.tokens == [alone(ref, a_ids)] and b.tokens == alone_beams(ref, b_ids, 1, num_beams=3)
    with pytest.raises(ValueError, match=r"needs 200 KV cache positions .* kv_budget_tokens is 150"):
        engine.submit(prompt(11, 5), **{**GREEDY, "max_new_tokens": 90, "num_return_sequences": 2,
                                        "do_sample": True})


def test_oversized_alone_runs_a_request_larger_than_the_budget_by_itself(decoders):
    """A pipeline call's engine: a prompt larger than the whole budget waits for the cache to
    empty, runs alone, and the requests behind it wait for it."""
    ref, ours = decoders["gpt2"]
    with pytest.raises(ValueError, match="oversized"):
        Engine(ours, oversized="grow")
    engine = Engine(ours, kv_budget_tokens=60, oversized="alone")
    ids = [prompt(20, 1), prompt(70, 2), prompt(4, 3)]  # 29, 79 (> 60), 13 positions
    small, big, after = [engine.submit(x, **GREEDY) for x in ids]
    engine.step()
    assert engine.cache.rows == 1  # `small` runs; `big` doesn't fit beside it, `after` waits behind `big`
    engine.run([small])
    engine.step()
    assert engine.cache.rows == 1 and big.tokens[0] and not after.tokens[0]
    assert engine.cache.tokens_needed() > 60  # alone, past the budget
    engine.run([big])
    engine.run([after])
    assert [h.tokens[0] for h in (small, big, after)] == [alone(ref, x) for x in ids]


def test_first_come_first_served(decoders):
    """A request that doesn't fit holds back the smaller ones behind it (no starvation)."""
    _, ours = decoders["gpt2"]
    engine = Engine(ours, kv_budget_tokens=100)
    first = engine.submit(prompt(40, 1), **GREEDY)  # 49
    big = engine.submit(prompt(60, 2), **GREEDY)  # 69: waits for `first`
    small = engine.submit(prompt(3, 3), **GREEDY)  # 12: would fit now, waits behind `big`
    engine.step()
    assert engine.cache.rows == 1
    engine.run([first])
    engine.step()
    assert engine.cache.rows == 1 and big.tokens[0] and not small.tokens[0]  # 2 x 69 > 100: big alone
    engine.run([big])
    engine.step()
    assert small.tokens[0]
    engine.run([small])


# ------------------------------------------------------------------------------- chunked prefill


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(decoders):
    ref, ours = decoders["gpt2"]
    long_ids = prompt(45, 7)
    engine = Engine(ours, prefill_chunk=8)
    running = engine.submit(prompt(4, 8), **{**GREEDY, "max_new_tokens": 20, "eos_token_id": -1})
    engine.step()
    late = engine.submit(long_ids, **GREEDY)
    steps = 0
    while not late.tokens[0]:
        events = engine.step()
        assert [e.handle for e in events if e.handle is running] == [running]  # a token every step
        steps += 1
    assert steps == 6  # 45 prompt tokens, 8 per step
    engine.run([running, late])
    assert late.tokens == [alone(ref, long_ids)] == run_alone(ours, long_ids)
    assert running.tokens == [alone(ref, prompt(4, 8), max_new_tokens=20, eos_token_id=-1)]


def test_a_higher_priority_prompt_is_read_before_a_long_one_admitted_earlier(decoders):
    """The server's streams (priority 0) get their prompt read at the next step even while a
    batch's long prompts (priority 1) are being prefilled; the answers don't change."""
    ref, ours = decoders["gpt2"]
    engine = Engine(ours, prefill_chunk=8)
    long_ids, short_ids = prompt(45, 11), prompt(5, 12)
    batch = engine.submit(long_ids, **GREEDY, priority=1)
    engine.step()  # the batch's first chunk
    stream = engine.submit(short_ids, **GREEDY, priority=0)
    engine.step()
    assert stream.tokens[0] and not batch.tokens[0]  # read ahead of the batch's remaining 37 tokens
    fifo = Engine(ours, prefill_chunk=8)  # equal priorities: first admitted, first read
    first = fifo.submit(long_ids, **GREEDY)
    fifo.step()
    second = fifo.submit(short_ids, **GREEDY)
    fifo.step()
    assert not second.tokens[0]
    engine.run([batch, stream])
    fifo.run([first, second])
    assert batch.tokens == first.tokens == [alone(ref, long_ids)]
    assert stream.tokens == second.tokens == [alone(ref, short_ids)]


def test_several_prompts_share_a_prefill_pass(decoders):
    ref, ours = decoders["mistral-window"]
    engine = Engine(ours, prefill_chunk=64)
    ids = [prompt(n, 30 + n) for n in (3, 9, 14, 6)]
    handles = [engine.submit(x, **GREEDY) for x in ids]
    engine.step()
    assert all(len(h.tokens[0]) == 1 for h in handles)  # one pass read all four prompts
    engine.run(handles)
    assert [h.tokens[0] for h in handles] == [alone(ref, x) for x in ids]


# ------------------------------------------------------------------------------- threads


def test_one_worker_steps_while_other_threads_submit_and_cancel(decoders):
    ref, ours = decoders["gpt2"]
    engine = Engine(ours)
    stop = threading.Event()
    errors = []

    def worker():  # the only thread that runs the model
        while not stop.is_set():
            try:
                if engine.has_work():
                    engine.step()
                else:
                    stop.wait(0.001)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)
                return

    thread = threading.Thread(target=worker)
    thread.start()
    results = {}

    def client(i):
        ids = prompt(4 + i, 50 + i)
        h = engine.submit(ids, **{**GREEDY, "max_new_tokens": 6 + i})
        doomed = engine.submit(ids, **{**GREEDY, "max_new_tokens": 50})
        engine.cancel(doomed)
        while not (h.done and doomed.done):
            stop.wait(0.001)
        results[i] = (h.tokens, ids, doomed.cancelled)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(timeout=120)
    stop.set()
    thread.join()
    assert not errors and len(results) == 4
    for i, (tokens, ids, cancelled) in results.items():
        assert tokens == [alone(ref, ids, max_new_tokens=6 + i)] and cancelled


# ------------------------------------------------------------------------------- bad requests


def test_bad_requests_are_clear_errors(decoders):
    _, ours = decoders["gpt2"]
    engine = Engine(ours)
    with pytest.raises(TypeError, match="prompt"):
        engine.submit("text")
    with pytest.raises(ValueError, match="empty"):
        engine.submit([])
    with pytest.raises(ValueError, match="top_logprobs"):
        engine.submit([3, 4], top_logprobs=-1)
    with pytest.raises(ValueError, match="unknown generation argument"):
        engine.submit([3, 4], temprature=0.5)
    with pytest.raises(ValueError, match="kv_budget_tokens"):
        Engine(ours, kv_budget_tokens=0)
    with pytest.raises(TypeError, match="lightpipe model"):
        Engine(torch.nn.Linear(2, 2))
    assert not engine.has_work()
    config = GenerationConfig(max_new_tokens=3, eos_token_id=EOS)
    assert len(engine.run([engine.submit([3, 4], config)])[0].tokens[0]) <= 3


@pytest.mark.parametrize("name", ["bart", "t5"])
def test_a_short_source_moving_into_a_long_sources_row_sees_only_its_own_source(seq2seq, name):
    """Rows [long, mid, short]: the long one leaves, the short one moves into its row while the
    mid one keeps the pass wider than the short source — the old row's source must stay hidden."""
    ref, ours, defaults = seq2seq[name]
    kw = dict(eos_token_id=defaults.eos_token_id, pad_token_id=defaults.pad_token_id)
    long, mid, short = prompt(20, 1), prompt(11, 2), prompt(3, 3)
    eos = eos_that_fires(ref, long, 0)
    engine = Engine(ours)
    first = engine.submit(long, defaults, **{**GREEDY, **kw, "eos_token_id": eos})
    more = dict(max_new_tokens=12, min_new_tokens=12)  # no early eos: both stay
    others = [engine.submit(x, defaults, **{**GREEDY, **kw, **more}) for x in (mid, short)]
    engine.step()
    assert first.done and engine.cache.rows == 2
    engine.run(others)
    assert [h.tokens[0] for h in others] == [alone(ref, x, **kw, **more) for x in (mid, short)]


@pytest.mark.parametrize("name", ["bart", "t5"])
def test_encoder_decoder_seeded_sampling_is_the_same_alone_and_busy(seq2seq, name):
    _, ours, defaults = seq2seq[name]
    kw = dict(eos_token_id=defaults.eos_token_id, pad_token_id=defaults.pad_token_id, max_new_tokens=12)
    settings = [dict(do_sample=True, seed=1), dict(do_sample=True, seed=2, top_k=4, temperature=1.3),
                dict(do_sample=True, seed=3, num_return_sequences=2, top_p=0.8)]
    sources = [prompt(5 + 3 * i, 200 + i) for i in range(3)]

    def solo(ids, s):
        engine = Engine(ours)
        return engine.run([engine.submit(ids, defaults, **{**kw, **s})])[0].tokens

    expected = [solo(x, s) for x, s in zip(sources, settings)]
    engine = Engine(ours)
    background = [engine.submit(prompt(14, 210), defaults, **{**kw, "max_new_tokens": 16, "num_beams": 2}),
                  engine.submit(prompt(7, 211), defaults, **{**kw, "do_sample": True, "temperature": 0.7})]
    engine.step()
    handles = []
    for x, s in zip(sources, settings):
        handles.append(engine.submit(x, defaults, **{**kw, **s}))
        engine.step()
    engine.run(handles + background)
    assert [h.tokens for h in handles] == expected
