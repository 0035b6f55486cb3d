"""`lightpipe run` for ner, question-answering and zero-shot-classification: the JSON on stdout
is the pipeline's result, and bad input is one clear error line with exit code 2."""

import json

import pytest

from lightpipe import pipeline
from lightpipe.cli import main
from tiny import encoder_checkpoint, labels, sentences

pytestmark = pytest.mark.unit

TEXT = "My name is Sylvain and I work at Hugging Face in Brooklyn."
LONG = " ".join(sentences(8, start=30))
BIO = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
NLI = ["contradiction", "neutral", "entailment"]


@pytest.fixture(scope="module")
def ner_folder(tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp("ner"), "bert", "token-classification", lowercase=False,
                              **labels(BIO))


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp("qa"), "distilbert", "question-answering")


@pytest.fixture(scope="module")
def nli_folder(tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp("nli"), "bert", "sequence-classification",
                              initializer_range=0.2, **labels(NLI))


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    return json.loads(out)


def same_json(result):
    """What the pipeline's result looks like after a JSON round trip."""
    return json.loads(json.dumps(result))


def test_run_ner(capsys, ner_folder):
    ner = pipeline("ner", model=ner_folder)
    got = run_json(capsys, "run", "ner", TEXT, "--model", ner_folder)
    assert got == same_json(ner(TEXT)) and got
    got = run_json(capsys, "run", "ner", TEXT, "Another sentence here.", "--model", ner_folder,
                   "--aggregation-strategy", "simple")
    assert got == same_json(ner([TEXT, "Another sentence here."], aggregation_strategy="simple"))
    assert "entity_group" in got[0][0]
    got = run_json(capsys, "run", "token-classification", LONG, "--model", ner_folder,
                   "--aggregation-strategy", "first", "--option", "stride=16", "--option", 'ignore_labels=["O", "B-PER"]')
    assert got == same_json(ner(LONG, aggregation_strategy="first", stride=16, ignore_labels=["O", "B-PER"]))


def test_run_question_answering(capsys, qa_folder):
    qa = pipeline("question-answering", model=qa_folder)
    got = run_json(capsys, "run", "question-answering", "--question", "Where do I work?", "--context", TEXT,
                   "--model", qa_folder)
    assert got == same_json(qa(question="Where do I work?", context=TEXT))
    assert set(got) == {"score", "start", "end", "answer"} and TEXT[got["start"]:got["end"]] == got["answer"]
    got = run_json(capsys, "run", "question-answering", "--question", "Where?", "--context", LONG, "--model", qa_folder,
                   "--top-k", "3", "--option", "doc_stride=20", "--option", "handle_impossible_answer=true")
    assert got == same_json(qa(question="Where?", context=LONG, top_k=3, doc_stride=20, handle_impossible_answer=True))


def test_run_question_answering_file(capsys, qa_folder, tmp_path):
    qa = pipeline("question-answering", model=qa_folder)
    rows = [{"question": "Where do I work?", "context": TEXT}, {"question": "What is it?", "context": LONG}]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "answers.jsonl"
    code, _, err = run_cli(capsys, "run", "question-answering", "--input", path, "--output", out, "--model", qa_folder)
    assert code == 0, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: g[k] for k in ("score", "start", "end", "answer")} for g in got] == same_json(qa(rows))


def test_run_zero_shot(capsys, nli_folder):
    classifier = pipeline("zero-shot-classification", model=nli_folder)
    labels = ["education", "politics", "business"]
    got = run_json(capsys, "run", "zero-shot-classification", TEXT, "--labels", "education, politics,business",
                   "--model", nli_folder)
    assert got == same_json(classifier(TEXT, candidate_labels=labels))
    assert sorted(got["labels"]) == sorted(labels)
    got = run_json(capsys, "run", "zero-shot-classification", TEXT, LONG, "--labels", "education,politics",
                   "--model", nli_folder, "--multi-label", "--hypothesis-template", "The topic is {}.")
    assert got == same_json(classifier([TEXT, LONG], candidate_labels=["education", "politics"], multi_label=True,
                                       hypothesis_template="The topic is {}."))


def test_run_zero_shot_embedding_mode_offline(capsys):
    """The embedded MiniLM has no NLI head: zero-shot runs by embeddings, with no network."""
    got = run_json(capsys, "run", "zero-shot-classification", "I need to fix a bug in my Python function.",
                   "--labels", "cooking,programming,politics", "--model", "sentence-transformers/all-MiniLM-L6-v2")
    assert got["labels"][0] == "programming" and abs(sum(got["scores"]) - 1) < 1e-6


def test_cli_errors_are_one_line(capsys, nli_folder, qa_folder, ner_folder):
    cases = [
        (("run", "zero-shot-classification", TEXT, "--labels", " , ", "--model", nli_folder), "candidate_labels"),
        (("run", "zero-shot-classification", TEXT, "--model", nli_folder), "candidate_labels"),
        (("run", "zero-shot-classification", TEXT, "--labels", "a,b", "--hypothesis-template", "No slot.",
          "--model", nli_folder), "hypothesis_template"),
        (("run", "question-answering", "--question", "Where?", "--model", qa_folder), "--context"),
        (("run", "question-answering", "--question", "Where?", "--context", " ", "--model", qa_folder), "context"),
        (("run", "ner", TEXT, "--aggregation-strategy", "longest", "--model", ner_folder), "aggregation_strategy"),
    ]
    for argv, word in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and not out, (argv, out)
        assert err.startswith("lightpipe: error:") and word in err and err.count("\n") == 1, err
