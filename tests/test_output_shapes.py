"""Every task's output nesting against transformers 4.57.6, live: for one string, a list of
one, a longer list and a generator (plus the task's other input forms), and the options that
change the nesting (top_k, num_return_sequences, several masks, aggregation). Each row of the
table calls both pipelines the same way on the same tiny checkpoint and compares the shape —
container types, lengths, keys, value types — and the values (floats within 1e-4).

transformers unwraps in places: question-answering gives a bare dict for one answer (also for
a list of one question), fill-mask a flat list for a list of one text, text2text a record per
input when each input has one; text-classification wraps a single string's legacy dict in a
list. A generator gives an iterator of the per-input results."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import transformers

from lightpipe import pipeline
from tiny import bart_checkpoint, chatml_gpt2_checkpoint, encoder_checkpoint, labels, sentences

pytestmark = pytest.mark.parity

TEXTS = ["My name is Sylvain and I work at Hugging Face in Brooklyn.", *sentences(3, start=40)]
CHATS = [[{"role": "user", "content": "Explain attention."}],
         [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is a class?"}]]
CONTEXT = " ".join(sentences(3, start=50))
QUESTIONS = ["Where do I work?", "What is it?"]
BIO = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
NLI = ["contradiction", "neutral", "entailment"]


# -- comparison ----------------------------------------------------------------------------

def plain(value):
    """numpy scalars as python numbers (transformers' token-classification scores are float32)."""
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def assert_same_shape(ours, theirs, where="output"):
    """Same nesting and types all the way down, same strings and ints, floats within 1e-4."""
    theirs = plain(theirs)
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape, (where, ours, theirs)
        torch.testing.assert_close(ours.float(), theirs.float(), atol=1e-4, rtol=1e-4)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict), f"{where}: a dict in transformers, {type(ours).__name__} here: {ours!r:.200}"
        assert list(ours) == list(theirs) or set(ours) == set(theirs), (where, list(ours), list(theirs))
        for key in theirs:
            assert_same_shape(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, list):
        assert isinstance(ours, list), f"{where}: a list in transformers, {type(ours).__name__} here: {ours!r:.200}"
        assert len(ours) == len(theirs), f"{where}: {len(ours)} items here, {len(theirs)} in transformers"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_shape(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert isinstance(ours, float) and math.isclose(ours, theirs, abs_tol=1e-4), (where, ours, theirs)
    else:
        assert type(ours) is type(theirs) and ours == theirs, (where, ours, theirs)


# -- the table -----------------------------------------------------------------------------

def forms(items: list, single=None) -> dict:
    """The input forms of a task whose inputs are `items`: one item, a list of one, a longer list,
    and a generator (its results are compared after list())."""
    return {
        "one": ((items[0] if single is None else single,), {}),
        "list1": (([items[0]],), {}),
        "list2": ((items[:2],), {}),
        "generator": (lambda: (x for x in items[:2]),),
    }


MASK = "<MASK>"  # replaced by each checkpoint's mask token
ONE_MASK = [f"The {MASK} statement is a convenient way to insert debugging assertions.", f"Python {MASK} simple."]
TWO_MASKS = [f"The {MASK} statement is a {MASK} way.", f"Python is {MASK} and {MASK}."]
PAIR = {"text": TEXTS[0], "text_pair": TEXTS[1]}
QA = [{"question": q, "context": CONTEXT} for q in QUESTIONS]
GREEDY = {"do_sample": False, "max_new_tokens": 5}
BEAMS2 = {"do_sample": False, "num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 5}

# (task, checkpoint, options, input forms)
TABLE = [
    ("text-classification", "cls", {}, forms(TEXTS)),
    ("text-classification", "cls", {"top_k": None}, forms(TEXTS)),
    ("text-classification", "cls", {"top_k": 1}, forms(TEXTS)),
    ("text-classification", "cls", {"top_k": 2}, forms(TEXTS)),
    ("text-classification", "cls", {}, {"pair": ((PAIR,), {}), "pairs": (([PAIR, PAIR],), {})}),
    ("text-classification", "cls", {"top_k": None}, {"pair": ((PAIR,), {}), "pairs": (([PAIR],), {})}),
    ("token-classification", "ner", {}, forms(TEXTS)),
    ("token-classification", "ner", {"aggregation_strategy": "simple"}, forms(TEXTS)),
    ("token-classification", "ner", {"aggregation_strategy": "first"}, forms(TEXTS)),
    ("zero-shot-classification", "nli", {"candidate_labels": ["politics", "code", "cooking"]}, forms(TEXTS)),
    ("zero-shot-classification", "nli", {"candidate_labels": ["code"]}, forms(TEXTS)),
    ("zero-shot-classification", "nli", {"candidate_labels": "code, cooking", "multi_label": True}, forms(TEXTS)),
    ("question-answering", "qa", {}, forms(QA) | {
        "keywords": ((), {"question": QUESTIONS[0], "context": CONTEXT}),
        "keyword lists": ((), {"question": QUESTIONS, "context": CONTEXT}),
        "keyword list1": ((), {"question": QUESTIONS[:1], "context": [CONTEXT]}),
        "positional": ((QUESTIONS[0], CONTEXT), {})}),
    ("question-answering", "qa", {"top_k": 3}, forms(QA) | {
        "keywords": ((), {"question": QUESTIONS[0], "context": CONTEXT})}),
    ("question-answering", "qa", {"top_k": 2, "handle_impossible_answer": True}, forms(QA)),
    ("fill-mask", "mlm", {}, forms(ONE_MASK)),
    ("fill-mask", "mlm", {"top_k": 1}, forms(ONE_MASK)),
    ("fill-mask", "mlm", {}, forms(TWO_MASKS)),
    ("fill-mask", "mlm", {"top_k": 1}, forms(TWO_MASKS)),
    ("fill-mask", "mlm", {"targets": ["the", "is"]}, forms(ONE_MASK)),
    ("feature-extraction", "base", {}, forms(TEXTS)),
    ("feature-extraction", "base", {"return_tensors": True}, forms(TEXTS)),
    ("text-generation", "gpt", GREEDY, forms(TEXTS) | {"chat": ((CHATS[0],), {}), "chats": ((CHATS,), {}),
                                                       "chats1": ((CHATS[:1],), {})}),
    ("text-generation", "gpt", BEAMS2, forms(TEXTS) | {"chat": ((CHATS[0],), {}), "chats": ((CHATS,), {})}),
    ("text-generation", "gpt", {**GREEDY, "return_full_text": False}, forms(TEXTS)),
    # 4.57.6 documents generated_token_ids as a tensor (as text2text returns its *_token_ids), returns a list
    ("text-generation", "gpt", {**GREEDY, "return_tensors": True}, forms(TEXTS), "token ids as tensors"),
    ("text2text-generation", "bart", GREEDY, forms(TEXTS)),
    ("text2text-generation", "bart", BEAMS2, forms(TEXTS)),
    ("summarization", "bart", GREEDY, forms(TEXTS)),
    ("summarization", "bart", BEAMS2, forms(TEXTS)),
    ("summarization", "bart", {**GREEDY, "return_tensors": True}, forms(TEXTS)),
    ("translation_en_to_fr", "bart", GREEDY, forms(TEXTS)),
    ("translation_en_to_fr", "bart", BEAMS2, forms(TEXTS)),
]


def token_ids_as_tensors(output):
    """transformers' output as it documents it: `*_token_ids` are tensors."""
    if isinstance(output, list):
        return [token_ids_as_tensors(o) for o in output]
    return {k: torch.tensor(v) if k.endswith("_token_ids") else v for k, v in output.items()}


DOCUMENTED = {None: lambda output: output, "token ids as tensors": token_ids_as_tensors}


def cases():
    for task, checkpoint, options, calls, *documented in TABLE:
        label = ",".join(f"{k}={v}" for k, v in options.items() if k not in ("do_sample", "max_new_tokens")) or "defaults"
        for form, call in calls.items():
            yield pytest.param(task, checkpoint, options, call, DOCUMENTED[(documented or [None])[0]],
                               id=f"{task}-{label}-{form}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "cls": encoder_checkpoint(mk("cls"), "bert", "sequence-classification", **labels(["NEG", "POS"])),
            "ner": encoder_checkpoint(mk("ner"), "bert", "token-classification", lowercase=False, **labels(BIO)),
            "nli": encoder_checkpoint(mk("nli"), "bert", "sequence-classification", **labels(NLI)),
            "qa": encoder_checkpoint(mk("qa"), "bert", "question-answering"),
            "mlm": encoder_checkpoint(mk("mlm"), "roberta", "masked-lm"),
            "base": encoder_checkpoint(mk("base"), "bert", "base"),
            "gpt": chatml_gpt2_checkpoint(mk("gpt")),
            "bart": bart_checkpoint(mk("bart")),
        }


@pytest.fixture(scope="module")
def pipelines(folders):
    """(lightpipe, transformers) per (task, checkpoint), made once."""
    made = {}

    def get(task, checkpoint):
        if (task, checkpoint) not in made:
            folder = folders[checkpoint]
            made[task, checkpoint] = pipeline(task, model=folder), transformers.pipeline(task, model=str(folder))
        return made[task, checkpoint]

    return get


def with_mask(value, mask: str):
    if isinstance(value, str):
        return value.replace(MASK, mask)
    if isinstance(value, (list, tuple)):
        return type(value)(with_mask(v, mask) for v in value)
    if isinstance(value, dict):
        return {k: with_mask(v, mask) for k, v in value.items()}
    return value


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and heuristic warnings of both libraries
        yield


@pytest.mark.parametrize("task, checkpoint, options, call, documented", cases())
def test_output_shape_matches_transformers(pipelines, task, checkpoint, options, call, documented):
    ours, theirs = pipelines(task, checkpoint)
    mask = theirs.tokenizer.mask_token or MASK
    if len(call) == 1:  # a generator: both give an iterator of the per-input results
        stream = lambda: (with_mask(x, mask) for x in call[0]())  # noqa: E731
        got, expected = ours(stream(), **options), theirs(stream(), **options)
        assert isinstance(expected, Iterator) and not isinstance(expected, list)
        assert isinstance(got, Iterator) and not isinstance(got, list), type(got)
        got, expected = list(got), [documented(e) for e in expected]
    else:
        args, kwargs = with_mask(call, mask)
        got, expected = ours(*args, **kwargs, **options), documented(theirs(*args, **kwargs, **options))
    assert_same_shape(got, expected)


def test_the_table_covers_every_task():
    from lightpipe.tasks import TASKS

    covered = {task.split("_")[0] for task, *_ in TABLE}
    transformers_tasks = {name for name in TASKS if name in transformers.pipelines.SUPPORTED_TASKS}
    assert transformers_tasks - covered == set(), transformers_tasks - covered
