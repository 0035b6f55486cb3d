"""The `lightpipe` command: run (texts, files), download, tasks; errors as one line; and a
pipeline built from a Hub id through the fake Hub, then again from the cache with it stopped."""

import json
import subprocess
import sys

import pytest
import transformers

from lightpipe import pipeline
from compare import assert_same
from lightpipe.cli import main
from tiny import encoder_checkpoint, sentences as all_sentences

pytestmark = pytest.mark.unit

def sentences(n):
    return [s for s in all_sentences(4 * n) if len(s) < 200][:n]


SST2 = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp("clf"), "distilbert", "sequence-classification", **SST2)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.fresh
def test_readme_demo_runs_offline_in_a_fresh_process():
    """The README's first command: sentence similarity on the embedded MiniLM, no network."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp", "HF_HOME": "/nonexistent-hf-home"}
    proc = subprocess.run(
        [sys.executable, "-m", "lightpipe.cli", "run", "sentence-similarity", "--source",
         "I've been waiting for a course my whole life.", "I love learning.", "The stock market fell."],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)
    assert len(scores) == 2 and scores[0] > scores[1]
    expected = pipeline("sentence-similarity")({"source_sentence": "I've been waiting for a course my whole life.",
                                                 "sentences": ["I love learning.", "The stock market fell."]})
    assert scores == pytest.approx(expected, abs=1e-6)


def test_run_texts_prints_json_like_the_pipeline(capsys, classifier):
    texts = sentences(3)
    code, out, _ = run_cli(capsys, "run", "sentiment-analysis", *texts, "--model", classifier, "--top-k", 2)
    assert code == 0
    assert_same(json.loads(out), transformers.pipeline("sentiment-analysis", model=str(classifier))(texts, top_k=2))


def test_run_input_file_to_jsonl(capsys, classifier, tmp_path):
    texts = sentences(30)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n")
    out_file = tmp_path / "out.jsonl"
    code, _, err = run_cli(capsys, "run", "text-classification", "--model", classifier, "--input", source,
                           "--output", out_file, "--batch-size", 8)
    assert code == 0, err
    got = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert_same(got, pipeline("text-classification", model=classifier)(texts), tol=1e-6)


def test_tasks_lists_defaults(capsys):
    code, out, _ = run_cli(capsys, "tasks")
    assert code == 0
    assert "distilbert/distilbert-base-uncased-finetuned-sst-2-english@714eb0f" in out
    assert "sentiment-analysis" in out and "translation_XX_to_YY" in out


@pytest.mark.parametrize("argv, message", [
    (["run", "nonsense-task", "hi"], "unknown task 'nonsense-task'"),
    (["run", "sentence-similarity", "only text"], "--source"),
    (["run", "text-classification", "hi", "--model", "/no/such/folder"], "'/no/such/folder' does not exist"),
])
def test_errors_are_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_model_offline_says_how_to_get_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    code, _, err = run_cli(capsys, "run", "text-classification", "hello", "--model", "org/not-downloaded")
    assert code == 2 and "lightpipe download org/not-downloaded" in err


def test_download_then_pipeline_from_cache_with_hub_stopped(capsys, hub_server, classifier):
    hub_server.add("org/sst2-tiny", classifier, pipeline_tag="text-classification")
    code, out, err = run_cli(capsys, "download", "org/sst2-tiny")
    assert code == 0, err
    assert (hub_server.cache / "models--org--sst2-tiny").is_dir() and "snapshots" in out
    hub_server.stop()
    texts = sentences(5)
    ours = pipeline("text-classification", model="org/sst2-tiny")(texts)
    assert_same(ours, transformers.pipeline("text-classification", model=str(classifier))(texts))


@pytest.mark.parametrize("task, message", [("translation", "translation_en_to_fr"),
                                           ("translation_fr_to_en", "Helsinki-NLP/opus-mt-fr-en")])
def test_translation_without_a_model_needs_a_known_pair(task, message):
    with pytest.raises(ValueError, match=message):
        pipeline(task)
