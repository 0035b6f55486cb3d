"""feature-extraction, sentence-similarity, text-classification and fill-mask against
transformers 4.57.6's pipelines (and sentence-transformers for the real MiniLM), live."""

import types

import pytest
import torch
import transformers

from lightpipe import pipeline
from compare import assert_same
from tiny import encoder_checkpoint, sentences

pytestmark = pytest.mark.parity

TEXTS = [s for s in sentences(40, start=40) if len(s) < 160][:12] + ["Short one.", "Ünïcödé text — with accents and ✓ symbols!"]
SST2 = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}


@pytest.fixture(scope="module", params=["bert", "distilbert", "roberta"])
def classifier_folder(request, tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp(request.param), request.param, "sequence-classification", **SST2)


@pytest.fixture(scope="module", params=["bert", "distilbert", "roberta"])
def mlm_folder(request, tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp(request.param), request.param, "masked-lm")


def reference(task, folder, **kwargs):
    return transformers.pipeline(task, model=str(folder), **kwargs)


# -- text-classification -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"top_k": None}, {"top_k": 1}, {"function_to_apply": "sigmoid"},
                                    {"function_to_apply": "none", "top_k": 2}, {"return_all_scores": True}])
def test_text_classification_matches_transformers(classifier_folder, kwargs):
    ours, theirs = pipeline("sentiment-analysis", model=classifier_folder), reference("sentiment-analysis", classifier_folder)
    assert_same(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))
    assert_same(ours(TEXTS[0], **kwargs), theirs(TEXTS[0], **kwargs))


def test_text_classification_pairs_and_single_label(tmp_path):
    folder = encoder_checkpoint(tmp_path, "bert", "sequence-classification", num_labels=1)
    ours, theirs = pipeline("text-classification", model=folder), reference("text-classification", folder)
    pairs = [{"text": a, "text_pair": b} for a, b in zip(TEXTS[:4], TEXTS[4:8])]
    assert_same(ours(pairs), theirs(pairs))
    assert_same(ours(pairs[0]), theirs(pairs[0]))
    assert_same(ours(TEXTS), theirs(TEXTS))  # num_labels == 1 → sigmoid


def test_results_do_not_depend_on_batching(classifier_folder):
    ours = pipeline("text-classification", model=classifier_folder)
    whole = ours(TEXTS, top_k=None)
    assert_same(ours(TEXTS, top_k=None, batch_size=1), whole, tol=1e-5)
    assert_same(ours(TEXTS, top_k=None, batch_size=3), whole, tol=1e-5)


def test_generator_input_is_lazy_and_ordered(classifier_folder):
    ours = pipeline("text-classification", model=classifier_folder)
    seen = []

    def texts():
        for t in TEXTS:
            seen.append(t)
            yield t

    results = ours(texts())
    assert isinstance(results, types.GeneratorType) and not seen
    assert_same(list(results), ours(TEXTS), tol=1e-5)


# -- fill-mask -----------------------------------------------------------------------------

def masked(folder):
    """Inputs with one mask each, spelled with the checkpoint's own mask token."""
    mask = transformers.AutoTokenizer.from_pretrained(str(folder)).mask_token
    return [f"The {mask} statement is a convenient way to insert debugging assertions.",
            f"Python {mask} simple.", f"This course will teach you all about {mask} models."]


@pytest.mark.parametrize("kwargs", [{}, {"top_k": 2}])
def test_fill_mask_matches_transformers(mlm_folder, kwargs):
    ours, theirs = pipeline("fill-mask", model=mlm_folder), reference("fill-mask", mlm_folder)
    inputs = masked(mlm_folder)
    assert_same(ours(inputs, **kwargs), theirs(inputs, **kwargs))
    assert_same(ours(inputs[0], **kwargs), theirs(inputs[0], **kwargs))


def test_fill_mask_targets_and_several_masks(mlm_folder):
    ours, theirs = pipeline("fill-mask", model=mlm_folder), reference("fill-mask", mlm_folder)
    mask = ours.tokenizer.mask_token
    two = f"The {mask} statement is a {mask} way to insert debugging assertions."
    assert_same(ours(two, top_k=3), theirs(two, top_k=3))
    targets = ["the", "is", "zzqqx"]  # the last is in no vocabulary: its first piece stands in
    one = masked(mlm_folder)[2]
    with pytest.warns(UserWarning, match="not in the model vocabulary"):
        got = ours(one, targets=targets)
    assert_same(got, theirs(one, targets=targets))


def test_fill_mask_without_mask_token_is_a_clear_error(mlm_folder):
    with pytest.raises(ValueError, match="no mask token"):
        pipeline("fill-mask", model=mlm_folder)("There is no mask here.")


# -- feature-extraction --------------------------------------------------------------------

def test_feature_extraction_matches_transformers_batch_size_one(tmp_path):
    folder = encoder_checkpoint(tmp_path, "bert", "base")
    ours, theirs = pipeline("feature-extraction", model=folder), reference("feature-extraction", folder)
    # transformers' batch_size=1 output is the documented one (larger batches leak padding)
    assert_same(ours(TEXTS), theirs(TEXTS, batch_size=1), tol=1e-5)
    assert_same(ours(TEXTS[0]), theirs(TEXTS[0]), tol=1e-5)
    tensor = ours(TEXTS[0], return_tensors=True)
    assert torch.allclose(tensor, theirs(TEXTS[0], return_tensors=True), atol=1e-5)


def test_pooling_options(tmp_path):
    folder = encoder_checkpoint(tmp_path, "bert", "base")
    ours = pipeline("feature-extraction", model=folder)
    tokens = torch.tensor(ours(TEXTS[1]))[0]
    assert torch.allclose(torch.tensor(ours(TEXTS[1], pooling="mean")), tokens.mean(0), atol=1e-6)
    assert torch.allclose(torch.tensor(ours(TEXTS[1], pooling="cls")), tokens[0], atol=1e-6)
    assert torch.allclose(torch.tensor(ours(TEXTS[1], pooling="max")), tokens.max(0).values, atol=1e-6)
    unit = torch.tensor(ours(TEXTS[1], pooling="mean", normalize=True))
    assert torch.allclose(unit, tokens.mean(0) / tokens.mean(0).norm(), atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        ours(TEXTS[1], pooling="median")


# -- the real all-MiniLM-L6-v2 against sentence-transformers ------------------------------

@pytest.fixture(scope="module")
def minilm():
    from lightpipe.hub import resolve

    return resolve("sentence-transformers/all-MiniLM-L6-v2")


def test_minilm_embeddings_match_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    reference_model = SentenceTransformer(str(minilm), device="cpu")
    theirs = reference_model.encode(TEXTS, convert_to_tensor=True)
    ours = pipeline("feature-extraction", model="sentence-transformers/all-MiniLM-L6-v2")
    got = torch.tensor(ours(TEXTS, pooling="auto", normalize=True))
    torch.testing.assert_close(got, theirs.cpu(), atol=1e-5, rtol=1e-4)


def test_minilm_sentence_similarity_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer, util

    source, others = "I've been waiting for a course my whole life.", ["I love learning.", "The stock market fell."]
    emb = SentenceTransformer(str(minilm), device="cpu").encode([source, *others], convert_to_tensor=True)
    theirs = util.cos_sim(emb[0], emb[1:])[0].tolist()
    ours = pipeline("sentence-similarity")({"source_sentence": source, "sentences": others})
    assert_same(ours, theirs, tol=1e-5)
    assert ours[0] > ours[1]  # learning is closer to a course than the stock market


# -- errors --------------------------------------------------------------------------------

def test_clear_errors(classifier_folder):
    with pytest.raises(ValueError, match="unknown task 'sentiment'.*text-classification"):
        pipeline("sentiment", model=classifier_folder)
    ours = pipeline("text-classification", model=classifier_folder)
    with pytest.raises(ValueError, match="empty"):
        ours([])
    with pytest.raises(TypeError, match="inputs must be a string"):
        ours([1, 2])
    with pytest.raises(TypeError, match="unexpected keyword.*colour"):
        ours("hi", colour="red")
    with pytest.raises(ValueError, match="top_k"):
        ours("hi", top_k=0)
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline("text-classification", model=classifier_folder, trust_remote_code=True)


def test_too_long_input_needs_truncation(classifier_folder):
    ours, theirs = pipeline("text-classification", model=classifier_folder), reference("text-classification", classifier_folder)
    long_text = " ".join(TEXTS * 3)
    with pytest.raises(ValueError, match="truncation=True"):
        ours(long_text)
    assert_same(ours(long_text, truncation=True), theirs(long_text, truncation=True))
