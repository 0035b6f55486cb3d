"""Every course encoder task on deberta-v2 (DeBERTa-v3) and albert checkpoints, through
`pipeline(task, model=folder)`, against transformers 4.57.6's pipelines on the same tiny
checkpoints, live. Tokenizers come in the forms real repos ship (tiny.SPM_FORMS): tokenizer.json
as fine-tunes save it, or the sentencepiece model alone, which lightpipe converts."""

import warnings

import pytest
import torch
import transformers

from compare import assert_found_entities, assert_same
from lightpipe import pipeline
from test_ner_qa_zeroshot import NLI, assert_same_ranking, calibrate, plain
from tiny import labels, sentences, spm_encoder_checkpoint

pytestmark = pytest.mark.parity

FAMILIES = ["deberta-v2", "albert"]
SHORT = "My name is Sylvain and I work at Hugging Face in Brooklyn."
UNICODE = "Ünïcödé naïve café in Zürich — Ελληνικά 日本語 ✓ with “quotes” and émigrés, 3,5 and 7, ok."
LONG = " ".join(sentences(8, start=30))  # ~300 tokens: the "saved" tokenizers take 128
TEXTS = [s for s in sentences(30, start=40) if len(s) < 160][:8] + [SHORT, UNICODE, "Short one."]
BIO = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SST2 = labels(["NEGATIVE", "POSITIVE"])
LABELS = ["education", "politics", "business", "python code", "sports"]


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # length, deprecation and fallback-heuristic warnings of both libraries
        yield


def reference(task, folder, **kwargs):
    return transformers.pipeline(task, model=str(folder), **kwargs)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cache = {}

    def get(family, head, form="saved", **overrides):
        key = (family, head, form, *sorted((k, str(v)) for k, v in overrides.items()))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{family}-{head}-{form}")
            cache[key] = spm_encoder_checkpoint(folder, family, head, form=form, **overrides)
        return cache[key]

    return get


# -- text-classification -------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_text_classification_matches_transformers(checkpoint, family):
    folder = checkpoint(family, "sequence-classification", **SST2)
    ours, theirs = pipeline("sentiment-analysis", model=folder), reference("sentiment-analysis", folder)
    for kwargs in ({}, {"top_k": None}, {"function_to_apply": "sigmoid", "top_k": 2}):
        assert_same(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))
    # token types 0/1 for ALBERT; short ones: the tiny vocabularies need ~1 token per 2 characters
    pairs = [{"text": a, "text_pair": b} for a, b in zip(TEXTS[:4], [SHORT, "Short one.", "Yes.", UNICODE])]
    assert_same(ours(pairs, top_k=None), theirs(pairs, top_k=None))
    assert_same(ours(TEXTS, top_k=None, batch_size=2), ours(TEXTS, top_k=None), tol=1e-5)


# -- token-classification ------------------------------------------------------------------

@pytest.fixture(scope="module", params=[(f, form) for f in FAMILIES for form in ("saved", "slow")],
                ids=lambda p: "-".join(p))
def ner(request, checkpoint):
    family, form = request.param
    folder = checkpoint(family, "token-classification", form, **labels(BIO))
    return pipeline("ner", model=folder), reference("ner", folder)


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_ner_strategies_match_transformers(ner, strategy):
    ours, theirs = ner
    texts = [SHORT, UNICODE, "Reformatted metaclasses subclassing unhashable descriptors.", LONG]
    got = ours(texts, aggregation_strategy=strategy, truncation=True)  # LONG: transformers truncates silently
    assert_same(got, plain(theirs(texts, aggregation_strategy=strategy)))
    assert_found_entities(got)


def test_ner_stride_windows_match_transformers(ner):
    ours, theirs = ner
    for strategy in ("simple", "first", "max"):
        kwargs = {"stride": 12, "aggregation_strategy": strategy}
        assert_same(ours([LONG, SHORT], **kwargs), plain(theirs([LONG, SHORT], **kwargs)))
    assert len(ours.preprocess(LONG, stride=12)) >= 3


def test_ner_without_a_length_limit(checkpoint):
    """microsoft/deberta-v3-base's tokenizer sets no model_max_length and the model has no position
    table: a long text is one window, as in transformers (which doesn't truncate either)."""
    folder = checkpoint("deberta-v2", "token-classification", "bare", **labels(BIO))
    ours, theirs = pipeline("ner", model=folder), reference("ner", folder)
    assert ours.max_positions is None and ours.max_input_tokens == 10**9
    text = LONG * 2
    assert len(ours.preprocess(text)) == 1 and len(ours.tokenizer.encode(text).ids) > 512
    assert_same(ours(text, aggregation_strategy="simple"), plain(theirs(text, aggregation_strategy="simple")))
    assert_same(ours(text, aggregation_strategy="first", stride=16), plain(theirs(text, aggregation_strategy="first")))


# -- question-answering --------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_qa_matches_transformers(checkpoint, family):
    folder = checkpoint(family, "question-answering")
    ours, theirs = pipeline("question-answering", model=folder), reference("question-answering", folder)
    question = "Where do I work?"
    for context in (SHORT + " " + UNICODE, LONG):
        for kwargs in ({}, {"top_k": 3}, {"doc_stride": 8, "top_k": 2}, {"handle_impossible_answer": True},
                       {"align_to_words": False, "top_k": 4}, {"max_seq_len": 40, "doc_stride": 12}):
            assert_same(ours(question=question, context=context, **kwargs),
                        theirs(question=question, context=context, **kwargs))
    assert len(ours.preprocess({"question": question, "context": LONG})) >= 3  # windows over the long context


def test_qa_bare_deberta(checkpoint):
    """The sentencepiece model alone, no length limit: transformers' max_seq_len 384 windows."""
    folder = checkpoint("deberta-v2", "question-answering", "bare")
    ours, theirs = pipeline("question-answering", model=folder), reference("question-answering", folder)
    context = LONG * 2
    assert len(ours.preprocess({"question": "What is it?", "context": context})) >= 2
    assert_same(ours(question="What is it?", context=context, top_k=3),
                theirs(question="What is it?", context=context, top_k=3))


# -- fill-mask -----------------------------------------------------------------------------

@pytest.mark.parametrize(("family", "form"), [("deberta-v2", "saved"), ("deberta-v2", "bare"), ("albert", "saved"),
                                              ("albert", "slow"), ("albert", "bare"), ("albert", "json-only")])
def test_fill_mask_matches_transformers(checkpoint, family, form):
    folder = checkpoint(family, "masked-lm", form)
    ours, theirs = pipeline("fill-mask", model=folder), reference("fill-mask", folder)
    mask = ours.tokenizer.mask_token
    assert mask == "[MASK]" == theirs.tokenizer.mask_token
    inputs = [f"The {mask} statement is a convenient way to insert debugging assertions.",
              f"Python {mask} simple.", f"This course will teach you all about {mask} models."]
    assert_same(ours(inputs), theirs(inputs))
    assert_same(ours(inputs[0], top_k=2), theirs(inputs[0], top_k=2))
    two = f"The {mask} statement is a {mask} way to insert debugging assertions."
    assert_same(ours(two, top_k=3), theirs(two, top_k=3))
    targets = ["the", "▁is", "zzqqx"]
    assert_same(ours(inputs[2], targets=targets), theirs(inputs[2], targets=targets))


# -- feature-extraction --------------------------------------------------------------------

@pytest.mark.parametrize(("family", "form"), [("deberta-v2", "bare"), ("albert", "saved")])
def test_feature_extraction_matches_transformers(checkpoint, family, form):
    folder = checkpoint(family, "base", form)
    ours, theirs = pipeline("feature-extraction", model=folder), reference("feature-extraction", folder)
    # transformers' batch_size=1 output is the documented one (larger batches leak padding)
    assert_same(ours(TEXTS), theirs(TEXTS, batch_size=1), tol=1e-5)
    tensor = ours(TEXTS[0], return_tensors=True)
    assert torch.allclose(tensor, theirs(TEXTS[0], return_tensors=True), atol=1e-5)


# -- zero-shot-classification (NLI) --------------------------------------------------------

@pytest.fixture(scope="module", params=FAMILIES)
def nli(request, tmp_path_factory):
    """A tiny NLI classifier with the DeBERTa-v3 MNLI models' labels (entailment / neutral /
    contradiction ids as MoritzLaurer's: 0, 1, 2), calibrated so labels are told apart."""
    folder = tmp_path_factory.mktemp(f"nli-{request.param}")
    names = ["entailment", "neutral", "contradiction"] if request.param == "deberta-v2" else NLI
    spm_encoder_checkpoint(folder, request.param, "sequence-classification", initializer_range=0.2,
                           **labels(names))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder))
    calibrate(folder, model, transformers.AutoTokenizer.from_pretrained(str(folder)))
    return pipeline("zero-shot-classification", model=folder), reference("zero-shot-classification", folder)


@pytest.mark.parametrize("kwargs", [{}, {"multi_label": True}, {"hypothesis_template": "The topic of this text: {}"}])
def test_zero_shot_nli_matches_transformers(nli, kwargs):
    ours, theirs = nli
    texts = [SHORT, UNICODE, LONG] + sentences(1, start=80)  # LONG is cut on the sequence side
    got = ours(texts, candidate_labels=LABELS, **kwargs)
    assert_same_ranking(got, theirs(texts, candidate_labels=LABELS, **kwargs))
    assert max(max(r["scores"]) - min(r["scores"]) for r in got) > 0.05, "the classifier should tell labels apart"
    assert_same_ranking(ours(SHORT, LABELS, **kwargs), theirs(SHORT, LABELS, **kwargs))


# -- from the Hub, as microsoft/deberta-v3-base ships: spm.model and no tokenizer.json --------

def test_deberta_v3_repo_without_tokenizer_json_downloads_and_runs(hub_server, checkpoint):
    folder = checkpoint("deberta-v2", "masked-lm", "bare")
    hub_server.add("microsoft/deberta-v3-tiny", folder)
    ours = pipeline("fill-mask", model="microsoft/deberta-v3-tiny")
    downloaded = {p.name for p in ours.folder.iterdir()}
    assert {"spm.model", "tokenizer_config.json"} <= downloaded and "tokenizer.json" not in downloaded
    theirs = reference("fill-mask", ours.folder)
    text = "Python lists are [MASK] sequences."
    assert_same(ours(text, top_k=3), theirs(text, top_k=3))
