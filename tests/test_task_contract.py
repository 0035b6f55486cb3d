"""The shape every task shares: `batch()` (one result per input, options merged and checked once)
under transformers' nesting, and the task facts the front-ends ask a pipeline's class for — so
that a new task is its pipeline class and a line in the task table, and the command line, files
and the server serve it without knowing it."""

from __future__ import annotations

import json
import sys
import types
import warnings

import httpx
import pytest

from lightpipe import pipeline, tasks
from lightpipe.cli import main
from lightpipe.fileio import run_file
from lightpipe.pipelines.encoder import EncoderPipeline
from lightpipe.server import create_app, start_in_thread
from lightpipe.server.hf_api import HANDLERS
from tiny import bart_checkpoint, encoder_checkpoint, sentences

pytestmark = pytest.mark.unit

TEXTS = [s for s in sentences(80, start=30) if len(s) < 120][:5]  # short enough for the tiny models
LABELS = {"id2label": {0: "NEG", 1: "POS"}, "label2id": {"NEG": 0, "POS": 1}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"cls": encoder_checkpoint(mk("cls"), "bert", "sequence-classification", **LABELS),
                "qa": encoder_checkpoint(mk("qa"), "bert", "question-answering"),
                "mlm": encoder_checkpoint(mk("mlm"), "roberta", "masked-lm"),
                "base": encoder_checkpoint(mk("base"), "bert", "base"),
                "bart": bart_checkpoint(mk("bart"))}


# -- batch(): the regular call --------------------------------------------------------------

def test_batch_gives_one_result_per_input_where_the_call_unwraps(folders):
    qa = pipeline("question-answering", model=folders["qa"])
    item = {"question": "What is it?", "context": " ".join(TEXTS[:2])}
    assert qa.batch([item]) == [qa(item)] and isinstance(qa(item), dict)  # the call: a bare answer

    fill = pipeline("fill-mask", model=folders["mlm"])
    text = f"Python {fill.tokenizer.mask_token} simple."
    assert fill.batch([text]) == [fill([text])]  # the call unwraps a list of one

    summarize = pipeline("summarization", model=folders["bart"])
    kw = {"max_new_tokens": 4, "num_beams": 1}
    got = summarize.batch(TEXTS[:2], **kw)
    assert [len(r) for r in got] == [1, 1] and [r[0] for r in got] == summarize(TEXTS[:2], **kw)  # call: unwrapped

    classify = pipeline("text-classification", model=folders["cls"])
    assert classify.batch([TEXTS[0]]) == classify([TEXTS[0]]) and classify(TEXTS[0]) == classify.batch([TEXTS[0]])


def test_batch_results_are_each_inputs_own_in_order(folders):
    classify = pipeline("text-classification", model=folders["cls"])
    together = classify.batch(TEXTS, top_k=None)
    assert len(together) == len(TEXTS)
    for text, result in zip(TEXTS, together):
        alone = classify.batch([text], top_k=None)[0]
        assert [r["label"] for r in alone] == [r["label"] for r in result]
        assert [r["score"] for r in alone] == pytest.approx([r["score"] for r in result], abs=1e-6)


def test_batch_merges_the_pipelines_defaults_and_checks_options(folders):
    classify = pipeline("text-classification", model=folders["cls"], top_k=2)
    assert len(classify.batch([TEXTS[0]])[0]) == 2  # the default
    assert len(classify.batch([TEXTS[0]], top_k=1)[0]) == 1  # the call's keyword wins
    assert classify.batch([]) == []
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['bogus'\]"):
        classify.batch([TEXTS[0]], bogus=1)
    with pytest.raises(TypeError, match="batch\\(\\) takes a list of inputs, got str"):
        classify.batch(TEXTS[0])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        classify.batch([TEXTS[0]], batch_size=0)


# -- the facts the front-ends ask ------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_declares_what_the_front_ends_need(name):
    cls = tasks.pipeline_class(tasks.TASKS[name])
    assert cls.task == name
    assert cls.hf_request in HANDLERS  # the HF Inference API has a handler for its request shape
    assert cls.file_window >= 1 and isinstance(cls.hf_parameters, frozenset)
    assert cls.generates == (name in ("text-generation", "summarization", "translation", "text2text-generation"))
    assert cls.file_window == (32 if cls.generates else 512)


# -- a new task: its class and a task table line, nothing else ---------------------------------

class TokenCountPipeline(EncoderPipeline):
    """A toy task: each text's token count and the norm of its first hidden state."""

    task = "token-count"
    file_window = 2
    hf_parameters = frozenset({"truncation"})
    OPTIONS = {"truncation", "batch_size"}

    def check_options(self, options):
        unknown = set(options) - self.OPTIONS
        if unknown:
            raise TypeError(f"token-count got unexpected keyword argument(s) {sorted(unknown)}")
        return options

    def preprocess_batch(self, items, truncation=False, **options):
        return [[row] for row in self.encode(list(items), truncation=truncation)]

    def postprocess(self, rows, outputs, **options):
        return {"tokens": len(rows[0].ids), "norm": round(float(outputs[0][0].norm()), 3)}


@pytest.fixture
def token_count_task(monkeypatch, folders):
    module = types.ModuleType("lightpipe.pipelines.token_count")
    module.TokenCountPipeline = TokenCountPipeline
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(tasks.TASKS, "token-count",
                        tasks.Task("token-count", "token_count:TokenCountPipeline", str(folders["base"])))
    return pipeline("token-count")


@pytest.mark.server
def test_a_new_task_runs_through_the_cli_files_and_server(token_count_task, folders, tmp_path, capsys):
    pipe = token_count_task
    want = pipe(TEXTS)
    assert [w["tokens"] for w in want] == [len(pipe.tokenizer.encode(t).ids) for t in TEXTS]

    # the command line: texts, and a file read in the class's windows
    assert main(["run", "token-count", TEXTS[0]]) == 0
    assert json.loads(capsys.readouterr().out) == want[0]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    assert main(["run", "token-count", "--input", str(source), "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"id": i, "text": t, **w} for i, (t, w) in enumerate(zip(TEXTS, want))]

    sizes = []

    class Counting:
        def __getattr__(self, name):
            return getattr(pipe, name)

        def batch(self, items, **options):
            sizes.append(len(items))
            return pipe.batch(items, **options)

    run_file(Counting(), source, tmp_path / "out.parquet", progress=False)
    assert sizes == [2, 2, 1]  # the task's file_window

    # the server: the HF Inference API, by model and by task path
    with start_in_thread(create_app(pipelines={"toy": pipe})) as server:
        r = httpx.post(server.url + "/models/toy", json={"inputs": TEXTS[:2]}, timeout=60)
        assert r.status_code == 200 and r.json() == want[:2]
        r = httpx.post(server.url + "/models/toy/pipeline/token-count", json={"inputs": TEXTS[0]}, timeout=60)
        assert r.status_code == 200 and r.json() == want[0]
        r = httpx.post(server.url + "/models/toy/pipeline/fill-mask", json={"inputs": TEXTS[0]}, timeout=60)
        assert r.status_code == 422 and "serves token-count, not fill-mask" in r.json()["error"]
