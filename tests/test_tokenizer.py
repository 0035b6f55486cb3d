"""Token ids, pairs, truncation, offsets and decoding identical to transformers' fast tokenizers
on the same files, including the fallbacks for repos with no tokenizer.json."""

import shutil

import pytest
import transformers

from lightpipe.tokenization import load
from tiny import bpe_tokenizer, sentences, wordpiece_tokenizer

pytestmark = pytest.mark.parity

TEXTS = sentences(20, start=100) + ["Ünïcödé — naïve café ✓", "  spaced   out  ", "x"]
PAIRS = list(reversed(TEXTS))


@pytest.fixture(scope="module", params=["wordpiece", "wordpiece-cased", "roberta", "gpt2"])
def folder(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    if request.param.startswith("wordpiece"):
        wordpiece_tokenizer(path, lowercase=request.param == "wordpiece")
        return path, "bert"
    bpe_tokenizer(path, request.param)
    return path, request.param


def fallback_copy(folder, tmp_path):
    """The same tokenizer without tokenizer.json: vocab.txt or vocab.json + merges.txt only."""
    copy = tmp_path / "no-tokenizer-json"
    shutil.copytree(folder, copy)
    (copy / "tokenizer.json").unlink()
    return copy


def reference(folder):
    return transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)


@pytest.mark.parametrize("from_json", [True, False])
def test_ids_and_offsets_match_transformers(folder, from_json, tmp_path):
    path, model_type = folder
    source = path if from_json else fallback_copy(path, tmp_path)
    ours, theirs = load(source, model_type), reference(path)
    for enc, text in zip(ours.encode_batch(TEXTS), TEXTS):
        expected = theirs(text, return_offsets_mapping=True)
        assert enc.ids == expected["input_ids"]
        assert enc.offsets == [tuple(o) for o in expected["offset_mapping"]]
    for enc, a, b in zip(ours.encode_batch(TEXTS, PAIRS), TEXTS, PAIRS):
        assert enc.ids == theirs(a, b)["input_ids"]


@pytest.mark.parametrize("strategy", [True, "only_first", "only_second", "longest_first"])
def test_truncation_strategies_match(folder, strategy):
    path, model_type = folder
    ours, theirs = load(path, model_type), reference(path)
    long_a, short_b = " ".join(TEXTS[:5]), TEXTS[-4]
    a, b = (short_b, long_a) if strategy == "only_second" else (long_a, short_b)
    got = ours.encode(a, b, truncation=strategy, max_length=24)
    assert got.ids == theirs(a, b, truncation=strategy, max_length=24)["input_ids"]


def test_overflowing_windows_match(folder):
    path, model_type = folder
    ours, theirs = load(path, model_type), reference(path)
    text = " ".join(TEXTS[:4])
    enc = ours.encode(text, truncation=True, max_length=20, stride=5)
    expected = theirs(text, truncation=True, max_length=20, stride=5, return_overflowing_tokens=True)["input_ids"]
    assert [enc.ids] + [o.ids for o in enc.overflowing] == expected


def test_special_tokens_and_decode(folder):
    path, model_type = folder
    ours, theirs = load(path, model_type), reference(path)
    for name in ("cls", "sep", "pad", "mask", "unk", "bos", "eos"):
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    assert ours.model_max_length == theirs.model_max_length
    ids = theirs(TEXTS[3])["input_ids"]
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ids, clean_up_tokenization_spaces=True) == theirs.decode(ids, clean_up_tokenization_spaces=True)


def test_vocabulary_and_words_match_transformers(folder):
    """What fill-mask and token-classification ask of a tokenizer: the vocabulary both ways, how
    tokens join into a word's text, and whether tokens mark word continuations."""
    path, model_type = folder
    ours, theirs = load(path, model_type), reference(path)
    assert ours.get_vocab() == theirs.get_vocab()
    ids = theirs(TEXTS[5] + " " + TEXTS[-3])["input_ids"]
    tokens = theirs.convert_ids_to_tokens(ids)
    assert [ours.id_to_token(i) for i in ids] == tokens
    assert [ours.token_to_id(t) for t in tokens] == ids
    assert ours.tokens_to_string(tokens[1:-1]) == theirs.convert_tokens_to_string(tokens[1:-1])
    assert ours.subword_prefix == ("##" if model_type == "bert" else None)


def test_lowercased_copy(folder):
    path, model_type = folder
    ours = load(path, model_type)
    lower = ours.lowercased()
    assert lower.encode("HeLLo World, ÉTÉ").ids == ours.encode("hello world, été").ids
    assert ours.encode("HeLLo").ids == load(path, model_type).encode("HeLLo").ids  # the original is unchanged


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer in .*expected tokenizer.json, vocab.txt"):
        load(tmp_path)


def test_bad_truncation_value(folder):
    path, model_type = folder
    with pytest.raises(ValueError, match="truncation"):
        load(path, model_type).encode("hello", truncation="sideways")
