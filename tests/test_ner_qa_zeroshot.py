"""token-classification, question-answering and zero-shot-classification against
transformers 4.57.6's pipelines on the same tiny checkpoints, computed live; the embedding
zero-shot mode against sentence-transformers on the real (embedded) all-MiniLM-L6-v2."""

import itertools
import warnings

import numpy as np
import pytest
import torch
import transformers

from compare import assert_found_entities, assert_same
from lightpipe import pipeline
from tiny import bpe_tokenizer, encoder_checkpoint, labels, save_checkpoint, sentences

pytestmark = pytest.mark.parity

UNICODE = "Ünïcödé naïve café in Zürich — Ελληνικά 日本語 ✓ with “quotes” and émigrés."
SHORT = "My name is Sylvain and I work at Hugging Face in Brooklyn."
LONG = " ".join(sentences(8, start=30))  # ~300 tokens, the models take 128: stride / doc_stride windows
NER_TEXTS = [SHORT, UNICODE, "Reformatted metaclasses subclassing unhashable descriptors.", LONG]

BIO = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
PLAIN = ["O", "PER", "ORG", "LOC"]
NLI = ["contradiction", "neutral", "entailment"]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def plain(results):
    """transformers' numpy float32 scores → python floats, for comparison."""
    if isinstance(results, list):
        return [plain(r) for r in results]
    return {k: float(v) if k == "score" else v for k, v in results.items()}


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and fallback-heuristic warnings of both libraries
        yield


# -- token classification ------------------------------------------------------------------

NER_MODELS = {"bert": BIO, "distilbert": PLAIN, "roberta": BIO}


@pytest.fixture(scope="module", params=list(NER_MODELS))
def ner(request, tmp_path_factory):
    kind = request.param
    extra = {"lowercase": False} if kind == "bert" else {}  # a cased WordPiece, like the course's dbmdz model
    folder = encoder_checkpoint(tmp_path_factory.mktemp(f"ner-{kind}"), kind, "token-classification",
                                **labels(NER_MODELS[kind]), **extra)
    return pipeline("ner", model=folder), transformers.pipeline("ner", model=str(folder)), folder


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_ner_strategies_match_transformers(ner, strategy):
    ours, theirs, _ = ner
    got = ours(NER_TEXTS, aggregation_strategy=strategy, truncation=True)  # LONG: transformers truncates silently
    assert_same(got, plain(theirs(NER_TEXTS, aggregation_strategy=strategy)))
    assert_found_entities(got)
    key = "entity" if strategy == "none" else "entity_group"
    assert all(key in e and isinstance(e["score"], float) for e in got[0])
    if strategy in ("none", "first"):  # one string in, one list of entities out
        assert_same(ours(SHORT, aggregation_strategy=strategy), plain(theirs(SHORT, aggregation_strategy=strategy)))


def test_ner_default_and_ignore_labels(ner):
    ours, theirs, _ = ner
    assert_same(ours(NER_TEXTS[:3]), plain(theirs(NER_TEXTS[:3])))
    for ignore in ([], ["O", ours.id2label[1]]):
        for strategy in ("none", "simple"):
            got = ours(SHORT, ignore_labels=ignore, aggregation_strategy=strategy)
            assert_same(got, plain(theirs(SHORT, ignore_labels=ignore, aggregation_strategy=strategy)))
    everything = ours(SHORT, ignore_labels=[])
    assert len(everything) == len(ours.tokenizer.encode(SHORT).ids) - 2  # every real token, O included


@pytest.mark.parametrize("strategy", [None, "simple", "first", "average", "max"])
def test_ner_stride_windows_match_transformers(ner, strategy):
    ours, theirs, _ = ner
    kwargs = {"stride": 12} | ({} if strategy is None else {"aggregation_strategy": strategy})
    assert len(ours.preprocess(LONG, stride=12)) >= 3  # really several overlapping windows
    got = ours([LONG, SHORT], **kwargs)
    assert_same(got, plain(theirs([LONG, SHORT], **kwargs)))
    spans = [(e["start"], e["end"]) for e in got[0]]
    assert spans == sorted(spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no duplicates
    assert got[0][-1]["end"] > len(LONG) * 0.9  # the end of the text is tagged too
    if strategy == "first":  # windows that don't overlap at all
        assert_same(ours(LONG, stride=0, aggregation_strategy=strategy),
                    plain(theirs(LONG, stride=0, aggregation_strategy=strategy)))


def test_ner_long_text_needs_stride_or_truncation(ner):
    """transformers silently tags only the start of a long text; lightpipe makes that opt-in."""
    ours, theirs, _ = ner
    with pytest.raises(ValueError, match="stride=N.*truncation=True"):
        ours(LONG, aggregation_strategy="simple")
    got = ours(LONG, aggregation_strategy="simple", truncation=True)
    assert_same(got, plain(theirs(LONG, aggregation_strategy="simple")))
    assert got[-1]["end"] < len(LONG) // 2


def test_ner_legacy_flags_and_pipeline_defaults(ner):
    ours, theirs, folder = ner
    for flags in ({"grouped_entities": True}, {"grouped_entities": True, "ignore_subwords": True},
                  {"ignore_subwords": True}, {"grouped_entities": False}):
        assert_same(ours(NER_TEXTS[:3], **flags), plain(theirs(NER_TEXTS[:3], **flags)))
    grouped, reference = pipeline("ner", model=folder, grouped_entities=True), transformers.pipeline(
        "ner", model=str(folder), grouped_entities=True)
    assert_same(grouped(SHORT), plain(reference(SHORT)))
    assert "entity_group" in grouped(SHORT)[0]
    # a call's keywords win over the pipeline's
    assert_same(grouped(SHORT, aggregation_strategy="max"), plain(reference(SHORT, aggregation_strategy="max")))
    with pytest.warns(FutureWarning, match="grouped_entities"):
        warnings.simplefilter("always")
        ours(SHORT, grouped_entities=True)


def test_ner_entities_span_word_pieces(tmp_path):
    """A word split into pieces is one entity under first/average/max, with exact offsets."""
    folder = encoder_checkpoint(tmp_path, "bert", "token-classification", lowercase=False, **labels(BIO))
    ours = pipeline("ner", model=folder)
    text = "Reformatted metaclasses subclassing unhashable descriptors in Zürich."
    tokens = ours(text, ignore_labels=[])
    assert any(t["word"].startswith("##") for t in tokens)
    for strategy in ("first", "average", "max"):
        words = ours(text, aggregation_strategy=strategy, ignore_labels=[])
        multi = [e for e in words if sum(e["start"] <= t["start"] < e["end"] for t in tokens) > 1]
        assert multi, "some word should be made of several pieces"
        for e in words:
            assert text[e["start"]:e["end"]] == e["word"]


def test_ner_word_strategies_warn_like_transformers_without_word_boundaries(ner):
    """Byte-level BPE (RoBERTa) has no word boundaries: first/average/max fall back to "a space
    starts a word", with transformers' warning; WordPiece tokenizers don't warn."""
    ours, _, folder = ner
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours(SHORT, aggregation_strategy="first")
    heuristic = [w for w in caught if "fallback heuristic" in str(w.message)]
    assert bool(heuristic) == ("roberta" in str(folder))


def test_ner_errors(ner):
    ours, _, _ = ner
    with pytest.raises(ValueError, match="aggregation_strategy"):
        ours(SHORT, aggregation_strategy="longest")
    with pytest.raises(ValueError, match="stride"):
        ours(SHORT, stride=8, aggregation_strategy="none")
    with pytest.raises(ValueError, match="stride"):
        ours(SHORT, stride=ours.max_input_tokens - 1)  # a window must hold more than the overlap
    with pytest.raises(ValueError, match="stride"):
        ours(SHORT, stride=-1, aggregation_strategy="simple")
    with pytest.raises(TypeError, match="ignore_labels"):
        ours(SHORT, ignore_labels="O")
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours(SHORT, aggregation="simple")
    with pytest.raises(TypeError, match="inputs must be a string"):
        ours(42)


# -- question answering --------------------------------------------------------------------

QUESTION = "Where do I work?"
CONTEXTS = [SHORT + " " + UNICODE, LONG]


@pytest.fixture(scope="module", params=["bert", "distilbert", "roberta"])
def qa(request, tmp_path_factory):
    folder = encoder_checkpoint(tmp_path_factory.mktemp(f"qa-{request.param}"), request.param, "question-answering")
    return pipeline("question-answering", model=folder), transformers.pipeline("question-answering", model=str(folder))


@pytest.mark.parametrize("kwargs", [
    {}, {"top_k": 3}, {"top_k": 25}, {"doc_stride": 8}, {"max_answer_len": 2, "top_k": 4},
    {"max_seq_len": 40, "doc_stride": 12, "top_k": 2}, {"handle_impossible_answer": True},
    {"handle_impossible_answer": True, "top_k": 3}, {"align_to_words": False, "top_k": 5},
])
def test_qa_options_match_transformers(qa, kwargs):
    ours, theirs = qa
    for context in CONTEXTS:
        assert_same(ours(question=QUESTION, context=context, **kwargs),
                    theirs(question=QUESTION, context=context, **kwargs))


def test_qa_long_context_uses_windows_and_exact_offsets(qa):
    ours, _ = qa
    windows = ours.preprocess({"question": QUESTION, "context": LONG})
    assert len(windows) >= 4
    answers = ours(question=QUESTION, context=LONG, top_k=10)
    assert len(answers) == 10
    assert {a["start"] for a in answers} - {0} and max(a["start"] for a in answers) > len(LONG) // 2
    for a in answers:
        assert LONG[a["start"]:a["end"]] == a["answer"]


def test_qa_input_forms_match_transformers(qa):
    ours, theirs = qa
    contexts = [CONTEXTS[0], " ".join(sentences(2, start=50))]  # long contexts are tested above
    pairs = [{"question": QUESTION, "context": c} for c in contexts]
    questions = [QUESTION, "What is it?"]
    calls = [
        ((pairs[0],), {}),
        ((pairs,), {}),
        (([pairs[1]],), {}),  # a list of one gives one answer, not a list
        ((QUESTION, contexts[0]), {}),
        ((), {"question": questions, "context": contexts[0]}),
        ((), {"question": questions, "context": contexts}),
        ((), {"question": [QUESTION], "context": [contexts[1]], "top_k": 2}),
        ((), {"X": pairs}),
        ((), {"data": pairs[0]}),
        ((pairs[0], pairs[1]), {"top_k": 2}),
    ]
    for args, kwargs in calls:
        assert_same(ours(*args, **kwargs), theirs(*args, **kwargs))
    streamed = ours(p for p in pairs)
    assert not isinstance(streamed, list)
    assert_same(list(streamed), theirs(pairs))


def test_qa_results_do_not_depend_on_batching(qa):
    ours, _ = qa
    pairs = [{"question": q, "context": c} for q, c in itertools.product([QUESTION, "What is it?"], CONTEXTS)]
    assert_same(ours(pairs, batch_size=1, top_k=3), ours(pairs, top_k=3), tol=1e-5)


def test_qa_max_question_len_cuts_the_question_as_documented(qa):
    """transformers documents max_question_len as truncating the question, but its fast path
    ignores it; lightpipe cuts, and matches transformers given the cut question."""
    ours, theirs = qa
    question = "What does the assert statement insert into a program when debugging assertions are enabled?"
    tok = ours.tokenizer.encode(question, add_special_tokens=False)
    assert len(tok.ids) > 8
    cut = question[:tok.offsets[7][1]]
    got = ours(question=question, context=CONTEXTS[0], max_question_len=8, top_k=3)
    assert_same(got, theirs(question=cut, context=CONTEXTS[0], top_k=3))
    assert_same(ours(question=question, context=CONTEXTS[0], top_k=3),
                theirs(question=question, context=CONTEXTS[0], top_k=3))


def test_qa_long_question_with_a_windowed_context(qa, monkeypatch):
    """A question over max_question_len (64) whose context needs windows. transformers documents
    cutting the question, but 4.57.6's fast path keeps it whole; lightpipe cuts it and windows the
    context over the tokens left, which is transformers given the cut question. When the question
    leaves a window no more than doc_stride tokens, transformers panics inside tokenizers (or, past
    max_seq_len, raises "Sequence to truncate too short"); lightpipe raises a ValueError."""
    monkeypatch.setenv("RUST_BACKTRACE", "0")
    ours, theirs = qa
    words, question = " ".join(sentences(12, start=100)).split(), ""
    tokens = lambda text: theirs.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)  # noqa: E731
    while len(tokens(question)["input_ids"]) < 85:
        question = f"{question} {words.pop(0)}".strip()
    question += "?"
    length = len(tokens(question)["input_ids"])
    assert 85 <= length < 100 and len(tokens(QUESTION + LONG)["input_ids"]) > 128  # windows: the model takes 128
    cut = question[:tokens(question)["offset_mapping"][63][1]]  # the first 64 tokens, by transformers' tokenizer

    kw = {"doc_stride": 16, "top_k": 3}
    got = ours(question=question, context=LONG, **kw)
    assert_same(got, theirs(question=cut, context=LONG, **kw))
    assert len(ours.preprocess({"question": question, "context": LONG}, doc_stride=16)) > 3
    # a limit above the question's length keeps it whole: transformers' (fast path) answers
    whole = ours(question=question, context=LONG, max_question_len=length, **kw)
    assert_same(whole, theirs(question=question, context=LONG, **kw))
    assert whole != got

    # no room for the windows: the default doc_stride (64) with a 64-token question in 128
    with pytest.raises(ValueError, match="doc_stride=64"):
        ours(question=question, context=LONG)
    with pytest.raises(BaseException, match="stride"):  # tokenizers' PanicException is a BaseException
        theirs(question=question, context=LONG)
    # a question longer than max_seq_len itself
    with pytest.raises(ValueError, match="leaving 0 for each context window"):
        ours(question=question * 2, context=LONG, max_question_len=500, doc_stride=16)
    with pytest.raises(Exception, match="too short"):
        theirs(question=question * 2, context=LONG, doc_stride=16)


def test_qa_errors(qa):
    ours, _ = qa
    with pytest.raises(ValueError, match="`question` cannot be empty"):
        ours(question="", context=SHORT)
    with pytest.raises(ValueError, match="`context` cannot be empty"):
        ours(question=QUESTION, context="  ")
    with pytest.raises(ValueError, match="context"):
        ours(question=QUESTION)
    with pytest.raises(ValueError, match='"context" key'):
        ours({"question": QUESTION})
    with pytest.raises(ValueError, match="same length|differ in length"):
        ours(question=[QUESTION, QUESTION], context=[SHORT])
    with pytest.raises(TypeError, match="dicts"):
        ours("just a string")
    with pytest.raises(ValueError, match="top_k"):
        ours(question=QUESTION, context=SHORT, top_k=0)
    with pytest.raises(ValueError, match="max_answer_len"):
        ours(question=QUESTION, context=SHORT, max_answer_len=0)
    with pytest.raises(ValueError, match="doc_stride"):
        ours(question=QUESTION, context=SHORT, doc_stride=50, max_seq_len=40)
    with pytest.raises(ValueError, match="doc_stride"):  # the question leaves no room for the stride
        ours(question=" ".join(["word"] * 30), context=LONG, max_seq_len=48, doc_stride=20)
    with pytest.raises(ValueError, match="max_seq_len"):
        ours(question=QUESTION, context=SHORT, max_seq_len=100000)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours(question=QUESTION, context=SHORT, stride=3)


# -- zero-shot classification: NLI mode ----------------------------------------------------

ZS_TEXTS = [SHORT, UNICODE, LONG] + sentences(1, start=80)  # LONG is cut on the sequence side
LABELS = ["education", "politics", "business", "python code", "sports"]


def calibrate(folder, model, tokenizer):
    """Center and scale the head's last layer on sample pairs so that each logit varies with
    spread ~2 around 0: scores spread over the labels without saturating (and transformers'
    unshifted float32 exp can't overflow)."""
    final = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(NLI)][-1]
    seen = []
    hook = final.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    pairs = [(s, f"This example is {label}.") for s in sentences(8, start=60) for label in LABELS]
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation="only_first",
                      return_tensors="pt")
    with torch.no_grad():
        model.eval()(**batch)
        hook.remove()
        logits = seen[0] @ final.weight.T  # (pairs, labels) without bias
        scale = 2.0 / logits.std(0)
        final.weight.mul_(scale[:, None])
        final.bias.copy_(-logits.mean(0) * scale)
    return save_checkpoint(folder, model, tokenizer)


def nli_checkpoint(folder, kind, names=NLI):
    """A tiny NLI classifier (id2label like facebook/bart-large-mnli's unless `names`). With the
    usual 0.02 init a random encoder gives nearly the same pooled state for every input; 0.2
    makes the pairs differ far above float noise."""
    encoder_checkpoint(folder, kind, "sequence-classification", initializer_range=0.2, **labels(names))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder))
    return calibrate(folder, model, transformers.AutoTokenizer.from_pretrained(str(folder)))


def bart_nli_checkpoint(folder):
    """A tiny BartForSequenceClassification (facebook/bart-large-mnli's architecture and labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    bpe_tokenizer(folder, "roberta")
    tok = transformers.BartTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=64)
    config = transformers.BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id, init_std=0.2,
        **labels(NLI))
    torch.manual_seed(0)
    return calibrate(folder, transformers.BartForSequenceClassification(config), tok)


def assert_same_ranking(ours, theirs, tol=1e-4):
    """Same sequences and label → score within tol, sorted; labels whose scores tie within
    float noise may come in either order."""
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert_same_ranking(a, b, tol)
        return
    assert set(ours) == {"sequence", "labels", "scores"} and ours["sequence"] == theirs["sequence"]
    assert sorted(ours["labels"]) == sorted(theirs["labels"])
    assert_same(dict(zip(ours["labels"], ours["scores"])), dict(zip(theirs["labels"], theirs["scores"])), tol)
    assert ours["scores"] == sorted(ours["scores"], reverse=True)
    exact = all(abs(a - b) > 1e-5 for a, b in zip(theirs["scores"], theirs["scores"][1:]))
    if exact:
        assert ours["labels"] == theirs["labels"]


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert"])
def nli(request, tmp_path_factory):
    folder = nli_checkpoint(tmp_path_factory.mktemp(f"nli-{request.param}"), request.param)
    return (pipeline("zero-shot-classification", model=folder),
            transformers.pipeline("zero-shot-classification", model=str(folder)), folder)


@pytest.mark.parametrize("kwargs", [{}, {"multi_label": True}, {"hypothesis_template": "The topic of this text: {}"}])
def test_zero_shot_nli_matches_transformers(nli, kwargs):
    ours, theirs, _ = nli
    got = ours(ZS_TEXTS, candidate_labels=LABELS, **kwargs)
    assert_same_ranking(got, theirs(ZS_TEXTS, candidate_labels=LABELS, **kwargs))
    spread = max(max(r["scores"]) - min(r["scores"]) for r in got)
    # labels told apart far above assert_same_ranking's 1e-4, for any vocabulary the WordPiece
    # trainer makes (tiny.wordpiece_tokenizer): 0.041 and, with multi_label, 0.012 seen
    assert spread > 0.005, "the tiny classifier should tell labels apart"
    if not kwargs:
        assert all(abs(sum(r["scores"]) - 1) < 1e-5 for r in got)
    assert_same_ranking(ours(ZS_TEXTS[0], LABELS, **kwargs), theirs(ZS_TEXTS[0], LABELS, **kwargs))


def test_zero_shot_label_forms(nli):
    ours, theirs, _ = nli
    for candidates in ("education, politics ,business", ["python code"], "sports", ["a", "a", "b"]):
        assert_same_ranking(ours(ZS_TEXTS[:2], candidate_labels=candidates),
                            theirs(ZS_TEXTS[:2], candidate_labels=candidates))
    assert_same_ranking(ours(ZS_TEXTS[:2], LABELS, multi_class=True), theirs(ZS_TEXTS[:2], LABELS, multi_class=True))
    single = ours(SHORT, candidate_labels=["python code"])
    assert 0 < single["scores"][0] < 1  # entailment vs contradiction, not a softmax over one label


def test_zero_shot_pairs_run_in_shared_sorted_batches(nli):
    """Every text's (text, label) pairs go through the batcher together: batches mix texts,
    run longest first, and stop where padding would pass MAX_PADDING of their real tokens."""
    from lightpipe.pipelines.encoder import MAX_PADDING

    ours, _, _ = nli
    calls = []  # (rows, longest, real tokens) per forward pass
    forward = ours.forward

    def counting(batch, **kw):
        mask = batch["attention_mask"]
        calls.append((mask.shape[0], mask.shape[1], int(mask.sum())))
        return forward(batch, **kw)

    ours.forward = counting
    try:
        batched = ours(ZS_TEXTS, candidate_labels=LABELS)
    finally:
        del ours.forward
    assert sum(rows for rows, _, _ in calls) == len(ZS_TEXTS) * len(LABELS)
    assert len(calls) < len(ZS_TEXTS)  # pairs of different texts share a pass
    assert [longest for _, longest, _ in calls] == sorted((longest for _, longest, _ in calls), reverse=True)
    for rows, longest, real in calls:
        assert rows == 1 or rows * longest <= real * (1 + MAX_PADDING), calls
    one_by_one = [ours(t, candidate_labels=LABELS, batch_size=1) for t in ZS_TEXTS]
    assert_same_ranking(batched, one_by_one, tol=1e-5)


def test_zero_shot_entailment_first_and_pipeline_defaults(tmp_path):
    folder = nli_checkpoint(tmp_path, "bert", ["entailment", "neutral", "contradiction"])
    ours = pipeline("zero-shot-classification", model=folder, candidate_labels=LABELS, multi_label=True)
    theirs = transformers.pipeline("zero-shot-classification", model=str(folder))
    assert_same_ranking(ours(ZS_TEXTS[:2]), theirs(ZS_TEXTS[:2], candidate_labels=LABELS, multi_label=True))
    assert_same_ranking(ours(ZS_TEXTS[:2], multi_label=False), theirs(ZS_TEXTS[:2], candidate_labels=LABELS))


def test_zero_shot_multi_label_uses_the_contradiction_label_by_name(tmp_path):
    """transformers takes logit 0 as "contradiction" whatever its name; its docs (and lightpipe)
    use the contradiction score. Labels here: 0 neutral, 1 entailment, 2 contradiction."""
    folder = nli_checkpoint(tmp_path, "bert", ["neutral", "entailment", "contradiction"])
    ours = pipeline("zero-shot-classification", model=folder)
    classify = transformers.pipeline("text-classification", model=str(folder))
    pairs = [{"text": SHORT, "text_pair": f"This example is {label}."} for label in LABELS]
    rows = classify(pairs, function_to_apply="none", top_k=None)
    by_label = [{r["label"]: r["score"] for r in row} for row in rows]
    expected = [1 / (1 + np.exp(row["contradiction"] - row["entailment"])) for row in by_label]
    got = ours(SHORT, candidate_labels=LABELS, multi_label=True)
    assert_same(dict(zip(got["labels"], got["scores"])), dict(zip(LABELS, map(float, expected))))


def test_zero_shot_bart_nli_matches_transformers(tmp_path):
    folder = bart_nli_checkpoint(tmp_path)
    ours = pipeline("zero-shot-classification", model=folder)
    theirs = transformers.pipeline("zero-shot-classification", model=str(folder))
    for kwargs in ({}, {"multi_label": True}):
        assert_same_ranking(ours(ZS_TEXTS, candidate_labels=LABELS, **kwargs),
                            theirs(ZS_TEXTS, candidate_labels=LABELS, **kwargs))


def test_zero_shot_errors(nli, tmp_path):
    ours, _, _ = nli
    with pytest.raises(ValueError, match="candidate_labels is required"):
        ours(SHORT)
    with pytest.raises(ValueError, match="candidate_labels is empty"):
        ours(SHORT, candidate_labels=[])
    with pytest.raises(ValueError, match="candidate_labels is empty"):
        ours(SHORT, candidate_labels=" , ")
    with pytest.raises(TypeError, match="candidate_labels"):
        ours(SHORT, candidate_labels=[1, 2])
    with pytest.raises(ValueError, match="hypothesis_template"):
        ours(SHORT, candidate_labels=LABELS, hypothesis_template="This example is about it.")
    with pytest.raises(ValueError, match="hypothesis_template"):
        ours(SHORT, candidate_labels=LABELS, hypothesis_template="This example is {label}.")
    with pytest.raises(ValueError, match="empty string"):
        ours("", candidate_labels=LABELS)
    with pytest.raises(ValueError, match="too long"):  # transformers crashes inside the model here
        ours(SHORT, candidate_labels=["a"], hypothesis_template="This example is {} " + "word " * 200)
    with pytest.raises(ValueError, match="mode"):
        ours(SHORT, candidate_labels=LABELS, mode="magic")
    with pytest.raises(ValueError, match="temperature"):
        ours(SHORT, candidate_labels=LABELS, temperature=0.1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours(SHORT, labels=LABELS)


def test_zero_shot_without_entailment_label_is_a_clear_error(tmp_path):
    folder = encoder_checkpoint(tmp_path, "bert", "sequence-classification", **labels(["NEGATIVE", "POSITIVE"]))
    ours = pipeline("zero-shot-classification", model=folder)
    with pytest.raises(ValueError, match="no entailment label"):
        ours(SHORT, candidate_labels=LABELS)
    with pytest.raises(ValueError, match="no entailment label"):
        pipeline("zero-shot-classification", model=folder, mode="nli")


# -- zero-shot classification: embedding mode ----------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    return pipeline("zero-shot-classification", model=MINILM)


def test_zero_shot_embedding_mode_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["This is a course about the Transformers library", "The election results surprised everyone.",
             UNICODE, "I need to fix a bug in my Python function."]
    labels = ["education", "politics", "business", "programming"]
    template = "This example is {}."
    st = SentenceTransformer(str(minilm.folder), device="cpu")
    text_vectors = st.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    label_vectors = st.encode([template.format(x) for x in labels], convert_to_tensor=True, normalize_embeddings=True)
    cos = (text_vectors @ label_vectors.T).double()  # (texts, labels)

    def expected(scores):
        return [{"sequence": t, "labels": [labels[i] for i in row.argsort(descending=True)],
                 "scores": sorted(row.tolist(), reverse=True)} for t, row in zip(texts, scores)]

    assert_same_ranking(minilm(texts, candidate_labels=labels), expected(torch.softmax(cos / 0.05, -1)))
    assert_same_ranking(minilm(texts, candidate_labels=labels, temperature=0.1), expected(torch.softmax(cos / 0.1, -1)))
    assert_same_ranking(minilm(texts, candidate_labels=labels, multi_label=True), expected((cos + 1) / 2))
    got = minilm(texts, candidate_labels=labels)
    assert got[1]["labels"][0] == "politics" and got[3]["labels"][0] == "programming"
    assert all(abs(sum(r["scores"]) - 1) < 1e-6 for r in got)


def test_zero_shot_modes(minilm, nli):
    with pytest.raises(ValueError, match="mode='nli' needs an NLI checkpoint"):
        minilm(SHORT, candidate_labels=LABELS, mode="nli")
    # an NLI checkpoint can be asked for the embedding mode: its encoder without the head
    ours, _, folder = nli
    embedded = ours(ZS_TEXTS[:2], candidate_labels=LABELS, mode="embedding")
    encoder = transformers.AutoModel.from_pretrained(str(folder)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))

    def embed(texts):
        batch = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None]
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    cos = (embed(ZS_TEXTS[:2]) @ embed([f"This example is {x}." for x in LABELS]).T).double()
    scores = torch.softmax(cos / 0.05, -1)
    for result, row in zip(embedded, scores):
        assert_same(dict(zip(result["labels"], result["scores"])), dict(zip(LABELS, row.tolist())))
    assert ours(SHORT, candidate_labels=LABELS)["scores"] != embedded[0]["scores"]  # auto is still NLI
