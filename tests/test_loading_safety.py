"""Loading is safe by default: an index naming pickled shards is refused unless allow_pickle
(then only weights-only pickles load), file names from JSON never leave the model folder, an
empty model name is an error, and a corrupt file is named in the error — the same rules on the
download path (through the fake Hub) and on the load path."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightpipe import hub, pipeline
from lightpipe.loading import load_model, resolve_device, weight_files
from tiny import bart_checkpoint, encoder_checkpoint, sentences

pytestmark = pytest.mark.unit

TEXTS = sentences(4)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp("clf"), "distilbert", "sequence-classification",
                              id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})


@pytest.fixture(scope="module")
def expected(classifier):
    return pipeline("text-classification", model=classifier)(TEXTS)


def copy_of(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(folder, tmp_path / name))


def shard(folder: Path, pickled_suffix: str | None = ".bin") -> dict:
    """Split folder's model.safetensors into two shards named by model.safetensors.index.json:
    the first stays safetensors, the second is a torch.save pickle named `pytorch-part{suffix}`
    (or safetensors too when `pickled_suffix` is None)."""
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(state)
    first, second = names[: len(names) // 2], names[len(names) // 2:]
    save_file({k: state[k] for k in first}, folder / "part-1.safetensors")
    if pickled_suffix is None:
        second_name = "part-2.safetensors"
        save_file({k: state[k] for k in second}, folder / second_name)
    else:
        second_name = "pytorch-part" + pickled_suffix
        torch.save({k: state[k].clone() for k in second}, folder / second_name)
    weight_map = {k: "part-1.safetensors" for k in first} | {k: second_name for k in second}
    write_index(folder, weight_map)
    return weight_map


def write_index(folder: Path, weight_map: dict) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# -- an index naming pickled shards ----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_index_naming_a_pickled_shard_is_refused_without_allow_pickle(classifier, expected, tmp_path, suffix):
    folder = copy_of(classifier, tmp_path)
    shard(folder, suffix)
    with pytest.raises(ValueError, match=rf"model.safetensors.index.json names non-safetensors shards "
                                         rf"\(pytorch-part\{suffix}\).*allow_pickle=True"):
        pipeline("text-classification", model=folder)
    # allowed: read with torch.load(weights_only=True), same results as the safetensors original
    got = pipeline("text-classification", model=folder, allow_pickle=True)(TEXTS)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)


def test_an_all_safetensors_index_loads_without_allow_pickle(classifier, expected, tmp_path):
    folder = copy_of(classifier, tmp_path)
    shard(folder, None)
    got = pipeline("text-classification", model=folder)(TEXTS)
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_allowed_pickles_still_never_run_code(classifier, tmp_path, monkeypatch):
    folder = copy_of(classifier, tmp_path)
    weight_map = shard(folder, ".bin")
    torch.save({"x": RunsCode()}, folder / "pytorch-part.bin")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"pytorch-part.bin is not a weights-only pickle"):
        pipeline("text-classification", model=folder, allow_pickle=True)
    (folder / "pytorch-part.bin").write_bytes(pickle.dumps(RunsCode()))  # a bare pickle, not torch's zip format
    with pytest.raises(ValueError, match=r"pytorch-part.bin is not a weights-only pickle"):
        pipeline("text-classification", model=folder, allow_pickle=True)
    assert not (tmp_path / "pwned-by-pickle").exists()
    assert set(weight_map.values()) == {"part-1.safetensors", "pytorch-part.bin"}


def test_hub_refuses_an_index_naming_a_pickled_shard_before_downloading_it(hub_server, classifier, expected, tmp_path):
    folder = copy_of(classifier, tmp_path)
    shard(folder, ".bin")
    hub_server.add("org/mixed", folder)
    with pytest.raises(ValueError, match="names non-safetensors shards .*allow_pickle=True"):
        pipeline("text-classification", model="org/mixed")
    assert hub_server.downloads() == ["model.safetensors.index.json"]  # the index, read to decide; nothing else

    got = pipeline("text-classification", model="org/mixed", allow_pickle=True)(TEXTS)
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)
    snapshot = hub.resolve("org/mixed", allow_pickle=True)
    # the cache's files are symlinks into blobs/: inside the repo, so allowed
    assert (snapshot / "pytorch-part.bin").is_symlink()
    # cached now, and still refused without the flag
    with pytest.raises(ValueError, match="allow_pickle=True"):
        hub.resolve("org/mixed")


# -- file names from JSON stay inside the folder ---------------------------------------------

ESCAPES = ["/etc/passwd", "../outside.safetensors", "sub/../../outside.safetensors", "..\\outside.safetensors",
           "C:\\weights.safetensors", "C:weights.safetensors", "", 7]


@pytest.mark.parametrize("name", ESCAPES)
def test_shard_names_leaving_the_folder_are_refused(classifier, tmp_path, name):
    folder = copy_of(classifier, tmp_path)
    weight_map = shard(folder, None)
    (tmp_path / "outside.safetensors").write_bytes((folder / "part-2.safetensors").read_bytes())
    write_index(folder, {**weight_map, next(iter(weight_map)): name})
    with pytest.raises(ValueError, match=r"model.safetensors.index.json names file .*(outside the model folder|"
                                         r"non-empty relative path)"):
        weight_files(folder)
    with pytest.raises(ValueError, match="model.safetensors.index.json names file"):
        pipeline("text-classification", model=folder)


def test_symlinks_out_of_the_folder_are_refused(classifier, tmp_path):
    folder = copy_of(classifier, tmp_path)
    weight_map = shard(folder, None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "part-2.safetensors").rename(elsewhere / "part-2.safetensors")
    (folder / "part-2.safetensors").symlink_to(elsewhere / "part-2.safetensors")
    with pytest.raises(ValueError, match=r"names file 'part-2.safetensors', a symlink to .*elsewhere.* outside"):
        pipeline("text-classification", model=folder)

    # a symlinked folder on the way out, too
    (folder / "part-2.safetensors").unlink()
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    write_index(folder, {k: "linked/part-2.safetensors" if v == "part-2.safetensors" else v
                         for k, v in weight_map.items()})
    with pytest.raises(ValueError, match="a symlink to .* outside the model folder"):
        weight_files(folder)

    # a symlink that stays inside is fine
    (folder / "linked").unlink()
    (folder / "inner").mkdir()
    (elsewhere / "part-2.safetensors").rename(folder / "inner" / "part-2.safetensors")
    (folder / "linked").symlink_to(folder / "inner", target_is_directory=True)
    assert folder / "linked" / "part-2.safetensors" in weight_files(folder)


def test_hub_refuses_escaping_shard_names_before_downloading(hub_server, classifier, tmp_path):
    folder = copy_of(classifier, tmp_path)
    weight_map = shard(folder, None)
    write_index(folder, {**weight_map, next(iter(weight_map)): "../../../../escaped.safetensors"})
    hub_server.add("org/escape", folder)
    with pytest.raises(ValueError, match="outside the model folder"):
        hub.resolve("org/escape")
    assert hub_server.downloads() == ["model.safetensors.index.json"]
    assert not list(hub_server.cache.parent.rglob("escaped.safetensors"))


# -- the model name --------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["", "   ", "\t\n"])
def test_an_empty_model_name_is_an_error_not_the_current_directory(classifier, monkeypatch, model):
    monkeypatch.chdir(classifier)  # a loadable checkpoint right here: an empty name must not find it
    with pytest.raises(ValueError, match=r"model must be a Hub id .* or a local folder path, got"):
        pipeline("text-classification", model=model)
    with pytest.raises(ValueError, match="model must be"):
        hub.download(model)


# -- corrupt files name themselves -----------------------------------------------------------

CORRUPTIONS = {
    "truncated": ('{"model_type": "distilbert", "dim": 3', r"is not valid JSON \(.*: line 1 column \d+\)"),
    "empty": ("", "is empty"),
    "not an object": ("[1, 2, 3]", "must hold a JSON object, got an array"),
    "not UTF-8": (b'{"a": "\xff\xfe"}', "is not UTF-8 text"),
}


@pytest.mark.parametrize("file", ["config.json", "tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json", "model.safetensors.index.json"])
@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_json_files_are_named(classifier, tmp_path, file, kind):
    folder = copy_of(classifier, tmp_path)
    if file == "model.safetensors.index.json":
        shard(folder, None)
    content, message = CORRUPTIONS[kind]
    path = folder / file
    assert path.is_file()  # the checkpoint has it: the corruption is what's tested
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if file == "tokenizer.json":
        message = "could not be read as a tokenizer"  # the tokenizers library reads this one
    with pytest.raises(ValueError, match=rf"{path}.* {message}" if "could not" in message else
                       rf"^{path} {message}") as caught:
        pipeline("text-classification", model=folder)
    assert str(path) in str(caught.value)


def test_config_without_model_type(classifier, tmp_path):
    folder = copy_of(classifier, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{folder / 'config.json'} has no model_type.*supported model types"):
        pipeline("text-classification", model=folder)


def test_corrupt_index_through_the_hub_is_named(hub_server, classifier, tmp_path):
    folder = copy_of(classifier, tmp_path)
    shard(folder, None)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": ')
    hub_server.add("org/badindex", folder)
    with pytest.raises(ValueError, match=r"model.safetensors.index.json is not valid JSON"):
        hub.resolve("org/badindex")
    assert hub_server.downloads() == ["model.safetensors.index.json"]


def test_corrupt_generation_config_is_named(tmp_path):
    folder = bart_checkpoint(tmp_path / "bart", generation={"max_length": 12})
    path = folder / "generation_config.json"
    assert path.is_file()
    path.write_text('{"max_length": 12,')
    with pytest.raises(ValueError, match=rf"^{path} is not valid JSON"):
        pipeline("summarization", model=folder)


def test_corrupt_safetensors_and_tokenizer_files_are_named(classifier, tmp_path):
    folder = copy_of(classifier, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"^{weights} is not a readable safetensors file"):
        load_model(folder)

    folder = copy_of(classifier, tmp_path, "vocab")
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"vocab.txt could not be read as a tokenizer"):
        pipeline("text-classification", model=folder)


# -- devices ---------------------------------------------------------------------------------

def test_cuda_requested_without_cuda_names_device(classifier, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", 0, torch.device("cuda")):
        with pytest.raises(ValueError, match=r"device=.*CUDA is not available.*device='cpu'"):
            resolve_device(device)
    with pytest.raises(ValueError, match=r"^device='cuda'"):
        pipeline("text-classification", model=classifier, device="cuda")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(-1) == torch.device("cpu")


def test_a_missing_cuda_index_names_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device='cuda:2': there is no CUDA device 2 \(2 visible"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match=r"device=5"):
        resolve_device(5)
