"""One pipeline called from several threads at once gives every caller the result it gets
alone: no "Already borrowed" from the shared tokenizer, no result cut by another call's
truncation setting, and `seed=` sampling independent of whatever else samples meanwhile."""

import random
import threading

import pytest
import torch
import transformers

from compare import assert_same
from lightpipe import pipeline
from lightpipe.tokenization.fast import MAX_TRUNCATING_COPIES
from tiny import bpe_tokenizer, encoder_checkpoint, labels, save_checkpoint, sentences

pytestmark = pytest.mark.parity

TEXTS = [s for s in sentences(60, start=20) if len(s) < 200][:16]
LONG = " ".join(sentences(10, start=30))  # ~300 tokens: more than the tiny models' 128
BIO = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
THREADS = 8
ROUNDS = 6


def gpt2_checkpoint(folder):
    tok = bpe_tokenizer(folder, "gpt2")
    config = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(3)  # peaked enough for greedy, flat enough that samples differ by seed
    return save_checkpoint(folder, model.eval(), tok)


def hammer(calls: list) -> None:
    """Run every (function, expected) of `calls` ROUNDS times from THREADS threads, each thread in
    its own shuffled order, and check each result against the expected one (computed alone)."""
    failures, start = [], threading.Barrier(THREADS)

    def worker(k):
        order = [c for _ in range(ROUNDS) for c in calls]
        random.Random(k).shuffle(order)
        start.wait()
        for name, call, expected in order:
            try:
                assert_same(call(), expected, tol=1e-6)
            except Exception as e:  # collected: a failure in a thread must fail the test
                failures.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, f"{len(failures)} of {THREADS * ROUNDS * len(calls)} calls failed: {failures[:5]}"


def alone(name, call):
    return name, call, call()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    return {
        "cls": encoder_checkpoint(mk("cls"), "bert", "sequence-classification", **labels(["NEG", "POS"])),
        "ner": encoder_checkpoint(mk("ner"), "bert", "token-classification", lowercase=False, **labels(BIO)),
        "gpt": gpt2_checkpoint(mk("gpt")),
    }


def test_encoder_pipelines_from_many_threads(folders):
    """text-classification with and without truncation, feature-extraction (truncating and not,
    on the same tokenizer) and token-classification with stride windows, all at once."""
    cls = pipeline("text-classification", model=folders["cls"])
    features = pipeline("feature-extraction", model=folders["cls"])
    ner = pipeline("ner", model=folders["ner"])
    long_texts = [LONG, TEXTS[0] + " " + LONG[:400], *TEXTS[:3]]
    calls = [
        alone("cls", lambda: cls(TEXTS, top_k=None)),
        alone("cls one", lambda: cls(TEXTS[5])),
        alone("cls truncated", lambda: cls(long_texts, truncation=True, top_k=None)),
        alone("features", lambda: features(TEXTS[:6])),
        alone("features truncated", lambda: features(long_texts[:2], truncation=True)),
        alone("features pooled", lambda: features(TEXTS, pooling="mean", normalize=True)),
        alone("ner stride", lambda: ner(long_texts, stride=16, aggregation_strategy="simple")),
        alone("ner stride 40", lambda: ner(LONG, stride=40, aggregation_strategy="first")),
        alone("ner truncated", lambda: ner(LONG, truncation=True)),
        alone("ner", lambda: ner(TEXTS[:4])),
    ]
    with pytest.raises(ValueError, match="truncation"):  # long enough that truncation matters
        cls(long_texts)
    hammer(calls)


def test_one_tokenizer_shared_by_pipelines_in_threads(folders):
    """Two pipelines over one Tokenizer object (as zero-shot's embedder shares its parent's):
    one truncating, one not, and several truncation lengths interleaved."""
    cls = pipeline("text-classification", model=folders["cls"])
    tok = cls.tokenizer
    calls = [alone(f"max_length={n}", lambda n=n: [e.ids for e in tok.encode_batch(TEXTS + [LONG], truncation=True,
                                                                                    max_length=n, stride=n // 4)])
             for n in (16, 33, 64, 100)]
    calls.append(alone("no truncation", lambda: [e.ids for e in tok.encode_batch(TEXTS + [LONG])]))
    calls.append(alone("pairs only_second", lambda: [
        [e.ids, [o.ids for o in e.overflowing]]
        for e in tok.encode_batch(["What is it?", "Where?", "Why is a class here?"], [LONG] * 3,
                                  truncation="only_second", max_length=48, stride=8)]))
    assert all(len(ids) <= 16 for ids in calls[0][2]) and len(calls[4][2][-1]) > 128  # the settings do differ
    hammer(calls)
    assert tok._backend.truncation is None  # the shared backend was never changed
    for n in range(20, 60, 2):  # many settings: a bounded number of copies is kept, results stay right
        assert [len(e.ids) for e in tok.encode_batch([LONG], truncation=True, max_length=n)] == [n]
    assert len(tok._truncating) <= MAX_TRUNCATING_COPIES


def test_text_generation_greedy_and_seeded_sampling_from_many_threads(folders):
    """Greedy output and seeded samples are the same alone and while other threads sample
    (seeded or not: unseeded sampling draws from torch's global generator meanwhile)."""
    gen = pipeline("text-generation", model=folders["gpt"])
    prompts = ["The assert statement", "Python lists are mutable sequences", "A class", TEXTS[2][:60]]
    calls = [
        alone("greedy", lambda: gen(prompts, do_sample=False, max_new_tokens=8)),
        alone("greedy one", lambda: gen(prompts[1], do_sample=False, max_new_tokens=12, return_full_text=False)),
        alone("beams", lambda: gen(prompts[0], do_sample=False, num_beams=3, num_return_sequences=2, max_new_tokens=6)),
    ]
    for seed in (1, 2, 3):
        calls.append(alone(f"seed {seed}", lambda seed=seed: gen(prompts, do_sample=True, seed=seed, max_new_tokens=10)))
    calls.append(alone("seed 4 x2", lambda: gen(prompts[0], do_sample=True, seed=4, num_return_sequences=2,
                                                 max_new_tokens=10)))
    seeded = [c[2] for c in calls[3:6]]
    assert seeded[0] != seeded[1] != seeded[2]  # the seeds matter: samples aren't greedy in disguise
    unseeded = [(name, call, None) for name, call in
                [("unseeded", lambda: gen(prompts, do_sample=True, max_new_tokens=10)),
                 ("unseeded stream", lambda: "".join(gen.stream(prompts[0], do_sample=True, max_new_tokens=10)))]]

    def run_unseeded(stop):
        while not stop.is_set():
            for _, call, _ in unseeded:
                call()

    stop = threading.Event()
    noise = [threading.Thread(target=run_unseeded, args=(stop,)) for _ in range(2)]
    for t in noise:
        t.start()
    try:
        hammer(calls)
        # a seeded stream gives the seeded call's text, whatever samples meanwhile
        expected = gen(prompts[1], do_sample=True, seed=9, max_new_tokens=10, return_full_text=False)[0]["generated_text"]
        assert "".join(gen.stream(prompts[1], do_sample=True, seed=9, max_new_tokens=10)) == expected
    finally:
        stop.set()
        for t in noise:
            t.join()
