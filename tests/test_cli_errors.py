"""The `lightpipe` command never shows a traceback: each failure is one line on stderr and a
non-zero exit, a closed pipe ends it quietly, and its JSON is always valid JSON (NaN → null).

Each kind of failure is run as a user runs it: a separate process (`python -m lightpipe.cli`,
this tree's sources first on the path). Variants of a kind call `main()` in this process, which
is the same code without the cost of a fresh torch import per case."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightpipe.cli import main
from tiny import encoder_checkpoint

pytestmark = pytest.mark.unit

SRC = str(Path(__file__).resolve().parents[1] / "src")


def env(**extra) -> dict:
    """This process's environment, offline, with this tree's sources first on the path."""
    base = {k: v for k, v in os.environ.items() if k != "LIGHTPIPE_DEBUG"}
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**base, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", **extra}


def run(command: list, **extra_env) -> subprocess.CompletedProcess:
    # bytes, decoded here: text=True would turn a progress bar's \r into line breaks
    proc = subprocess.run(list(map(str, command)), capture_output=True, env=env(**extra_env), timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def lightpipe(*argv, **extra_env) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "lightpipe.cli", *argv], **extra_env)


def in_process(capsys, *argv) -> subprocess.CompletedProcess:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def visible_lines(stderr: str) -> list[str]:
    """What a terminal shows: a progress bar redraws its line with \\r, so only the text after a
    line's last \\r stays visible."""
    return [shown for line in stderr.split("\n") if (shown := line.rsplit("\r", 1)[-1].strip())]


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = visible_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lightpipe") and message in lines[0], lines[0]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp("clf"), "distilbert", "sequence-classification")


@pytest.fixture(scope="module")
def broken(tmp_path_factory, classifier):
    """Broken copies of the classifier, by what is wrong with them."""
    root = tmp_path_factory.mktemp("broken")
    folders = {}
    for name, file, content in [("config", "config.json", '{"model_type": "distil'),
                                ("tokenizer", "tokenizer.json", '{"version": "1.0", "model": {'),
                                ("no-model-type", "config.json", '{"dim": 32}')]:
        folder = folders[name] = Path(shutil.copytree(classifier, root / name))
        (folder / file).write_text(content)
    # an index naming a pickled shard
    folder = folders["pickled-shard"] = Path(shutil.copytree(classifier, root / "pickled-shard"))
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "weights.bin")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "weights.bin" for k in state}}))
    return folders


@pytest.fixture(scope="module")
def nan_classifier(tmp_path_factory, classifier):
    """A classifier whose head is NaN: every score is NaN."""
    folder = Path(shutil.copytree(classifier, tmp_path_factory.mktemp("nan") / "clf"))
    state = load_file(folder / "model.safetensors")
    state = {k: torch.full_like(v, float("nan")) if k.startswith("classifier") else v for k, v in state.items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.fresh
def test_cuda_without_cuda(classifier):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on a GPU machine too
    proc = lightpipe("run", "text-classification", "hi", "--model", classifier, "--device", "cuda",
                     CUDA_VISIBLE_DEVICES="")
    assert_one_line_error(proc, "device='cuda': CUDA is not available")


@pytest.mark.fresh
def test_corrupt_config(broken):
    proc = lightpipe("run", "text-classification", "hi", "--model", broken["config"])
    assert_one_line_error(proc, f"{broken['config'] / 'config.json'} is not valid JSON")


@pytest.mark.parametrize("name, message", [
    ("tokenizer", "tokenizer.json could not be read as a tokenizer"),
    ("no-model-type", "config.json has no model_type"),
    ("pickled-shard", "names non-safetensors shards (weights.bin)"),
])
def test_broken_checkpoints(capsys, broken, name, message):
    proc = in_process(capsys, "run", "text-classification", "hi", "--model", broken[name])
    assert_one_line_error(proc, message)
    assert str(broken[name]) in proc.stderr


@pytest.mark.fresh
def test_missing_model(tmp_path):
    proc = lightpipe("run", "text-classification", "hi", "--model", "org/not-downloaded", HF_HOME=tmp_path)
    assert_one_line_error(proc, "lightpipe download org/not-downloaded")


@pytest.mark.fresh
def test_bad_option_value():
    proc = lightpipe("run", "text-classification", "hi", "--batch-size", "abc")
    assert_one_line_error(proc, "argument --batch-size: invalid int value: 'abc' (see `lightpipe run --help`)")


@pytest.mark.parametrize("argv, message", [
    (["--model", "/no/such/folder"], "'/no/such/folder' does not exist"),
    (["--model", ""], "model must be a Hub id"),
    (["--option", "function_to_apply=bogus"], "function_to_apply must be one of"),
    (["--option", "no_equals_sign"], "--option expects key=value"),
    (["--top-k", "many"], "argument --top-k: invalid int value"),
])
def test_missing_models_and_bad_options(capsys, classifier, argv, message):
    argv = ["--model", classifier, *argv] if argv[0] != "--model" else argv
    try:
        proc = in_process(capsys, "run", "text-classification", "hi", *argv)
    except SystemExit as e:  # argparse exits itself, as the console script would
        proc = subprocess.CompletedProcess(argv, e.code, *capsys.readouterr())
    assert_one_line_error(proc, message)


@pytest.mark.fresh
def test_corrupt_input_file(classifier, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine"}\n{"text": \n')
    proc = lightpipe("run", "text-classification", "--model", classifier, "--input", rows)
    assert_one_line_error(proc, f"{rows} line 2: not JSON")


def test_missing_input_file(capsys, classifier, tmp_path):
    proc = in_process(capsys, "run", "text-classification", "--model", classifier, "--input", tmp_path / "missing.txt")
    assert_one_line_error(proc, "missing.txt")


UNEXPECTED = ("import sys, lightpipe.cli as cli\n"
              "def broken(args): raise KeyError('no such thing')\n"
              "cli.cmd_tasks = broken\n"
              "sys.exit(cli.main(['tasks']))\n")


@pytest.mark.fresh
def test_unexpected_errors_are_one_line_with_a_debug_hint():
    # a bug nobody foresaw, raised inside a command: the real main() as the console script runs it
    proc = run([sys.executable, "-c", UNEXPECTED])
    assert_one_line_error(proc, "unexpected KeyError: 'no such thing' (set LIGHTPIPE_DEBUG=1 to see the traceback)",
                          code=1)
    debug = run([sys.executable, "-c", UNEXPECTED], LIGHTPIPE_DEBUG="1")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "KeyError: 'no such thing'" in debug.stderr


@pytest.mark.fresh
def test_a_reader_that_goes_away_ends_it_quietly(classifier, tmp_path):
    # the read end closed before anything is written
    texts = [f"text number {i}" for i in range(40)]
    proc = subprocess.Popen([sys.executable, "-m", "lightpipe.cli", "run", "text-classification", *texts,
                             "--model", str(classifier)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 141, err
    assert err == ""

    # a shell pipe into `head -1`, with far more output than the pipe buffers (about 200 kB of JSON)
    rows = tmp_path / "rows.txt"
    rows.write_text("".join(f"line number {i} of the input\n" for i in range(4000)))
    command = (f"set -o pipefail; {sys.executable} -m lightpipe.cli run text-classification --model {classifier} "
               f"--input {rows} 2>{tmp_path / 'err.txt'} | head -1")
    shell = run(["bash", "-c", command])
    assert shell.returncode == 141, (tmp_path / "err.txt").read_text()
    assert json.loads(shell.stdout)["label"].startswith("LABEL_")
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err and "BrokenPipe" not in err and "Errno" not in err and "error" not in err


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.fresh
def test_nan_scores_are_null_in_json(capsys, nan_classifier, tmp_path):
    proc = lightpipe("run", "text-classification", "first", "second", "--model", nan_classifier)
    assert proc.returncode == 0, proc.stderr
    results = strict_json(proc.stdout)
    assert [r["score"] for r in results] == [None, None]

    # files: JSON lines on stdout, and in a .jsonl output
    rows = tmp_path / "rows.txt"
    rows.write_text("first\nsecond\n")
    proc = in_process(capsys, "run", "text-classification", "--model", nan_classifier, "--input", rows)
    assert proc.returncode == 0, proc.stderr
    assert [strict_json(line)["score"] for line in proc.stdout.splitlines()] == [None, None]
    out = tmp_path / "out.jsonl"
    proc = in_process(capsys, "run", "text-classification", "--model", nan_classifier, "--input", rows, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert [strict_json(line)["score"] for line in out.read_text().splitlines()] == [None, None]
