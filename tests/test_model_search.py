"""Hub model search that offers what loads (`lightpipe models`, `GET /api/models`), against the
fake Hub (tests/hubserver.py), whose listing honours `expand` as the real Hub's does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lightpipe import hub_search
from lightpipe.cli import main

pytestmark = pytest.mark.unit

SRC = str(Path(__file__).resolve().parents[1] / "src")
WEIGHTS = {"model.safetensors": b"\0" * 8}
UNSUPPORTED = "funnel"  # a transformers model type lightpipe has no family for


def config(model_type: str | None, *architectures: str, **extra) -> str:
    return json.dumps({**({"model_type": model_type} if model_type else {}), "architectures": list(architectures),
                       **extra})


def add_catalog(hub) -> None:
    """Text-classification models, one per verdict, most downloaded first in this order."""
    assert UNSUPPORTED not in hub_search.supported_model_types()  # the premise of "unsupported"
    tc = dict(pipeline_tag="text-classification")
    hub.add("org/funnel-sst2", {"config.json": config(UNSUPPORTED, "FunnelForSequenceClassification"), **WEIGHTS},
            tags=["en"], downloads=9000, likes=40, **tc)
    hub.add("org/distilbert-sst2", {"config.json": config("distilbert", "DistilBertForSequenceClassification"),
                                    **WEIGHTS, "tokenizer.json": "{}"}, tags=["en"], downloads=8000, likes=30, **tc)
    hub.add("org/nomic-cls", {"config.json": config("nomic_bert", "NomicBertForSequenceClassification",
                                                    auto_map={"AutoConfig": "org/code--configuration.NomicConfig"}),
                              **WEIGHTS}, downloads=7000, **tc)
    hub.add("org/jina-cls", {"config.json": config("bert", "JinaBertForSequenceClassification", auto_map={
        "AutoModelForSequenceClassification": "org/impl--modeling_bert.JinaBertForSequenceClassification"}),
        **WEIGHTS}, downloads=6000, **tc)
    hub.add("org/bert-pickle", {"config.json": config("bert", "BertForSequenceClassification"),
                                "pytorch_model.bin": b"\0" * 8}, tags=["fr"], downloads=5000, **tc)
    hub.add("org/roberta-sharded", {"config.json": config("roberta", "RobertaForSequenceClassification"),
                                    "model.safetensors.index.json": "{}", "model-00001-of-00001.safetensors": b"\0"},
            tags=["fr"], downloads=4000, likes=2, **tc)
    hub.add("org/bert-onnx", {"config.json": config("bert", "BertForSequenceClassification"),
                              "onnx/model.onnx": b"\0" * 8}, downloads=3000, **tc)
    hub.add("org/llama-gptq", {"config.json": config("llama", "LlamaForSequenceClassification",
                                                     quantization_config={"quant_method": "gptq", "bits": 4}),
                               **WEIGHTS}, downloads=2500, **tc)
    hub.add("org/gated-bert", {"config.json": config("bert", "BertForSequenceClassification"), **WEIGHTS},
            gated="manual", downloads=2000, **tc)
    hub.add("org/no-config", WEIGHTS, downloads=1000, **tc)
    # an upstreamed family whose repo still maps to the library's own class (as Phi-3's does)
    hub.add("org/qwen2-chat", {"config.json": config("qwen2", "Qwen2ForCausalLM", auto_map={
        "AutoModelForCausalLM": "modeling_qwen2.Qwen2ForCausalLM"}), **WEIGHTS},
        pipeline_tag="text-generation", downloads=99999)
    hub.add("org/bert-ner", {"config.json": config("bert", "BertForTokenClassification"), **WEIGHTS},
            pipeline_tag="token-classification", tags=["en"], downloads=500)


EXPECTED = {  # id → (model_type, loads, words the reason holds)
    "org/funnel-sst2": (UNSUPPORTED, False, f"model type '{UNSUPPORTED}' is not supported"),
    "org/distilbert-sst2": ("distilbert", True, None),
    "org/nomic-cls": ("nomic_bert", False, "needs trust_remote_code: model type 'nomic_bert'"),
    "org/jina-cls": ("bert", False, "needs trust_remote_code: its model class JinaBertForSequenceClassification"),
    "org/bert-pickle": ("bert", False, "pickle weights only"),
    "org/roberta-sharded": ("roberta", True, None),
    "org/bert-onnx": ("bert", False, "no weights lightpipe reads"),
    "org/llama-gptq": ("llama", False, "quantized checkpoint (gptq)"),
    "org/gated-bert": ("bert", True, "gated: accept its terms"),
    "org/no-config": (None, False, "no model_type in its config.json"),
}


def listings(hub) -> list[str]:
    return [path for method, path in hub.requests if path.startswith("/api/models")]


# -- the library ---------------------------------------------------------------------------------

def test_task_aliases_name_the_hubs_pipeline_tags():
    assert hub_search.hub_filters("sentiment-analysis", None) == ("text-classification", [])
    assert hub_search.hub_filters("ner", "de") == ("token-classification", ["de"])
    assert hub_search.hub_filters("translation_en_to_fr", None) == ("translation", ["en", "fr"])
    assert hub_search.hub_filters("translation_en_to_fr", "fr") == ("translation", ["fr", "en"])
    for task in ("sentence-similarity", "feature-extraction", "zero-shot-classification", "text2text-generation"):
        assert hub_search.hub_filters(task, None) == (task, [])
    with pytest.raises(ValueError, match="unknown task 'sentiment'.*known tasks"):
        hub_search.hub_filters("sentiment", None)


def test_every_verdict_from_one_listing_request(hub_server):
    add_catalog(hub_server)
    found = hub_search.list_models(task="sentiment-analysis", include_unloadable=True, limit=50)
    assert [path.split("?")[0] for path in listings(hub_server)] == ["/api/models"]  # no request per model
    assert "pipeline_tag=text-classification" in listings(hub_server)[0]
    got = {m["id"]: m for m in found}
    assert set(got) == set(EXPECTED)
    for model_id, (model_type, loads, reason) in EXPECTED.items():
        m = got[model_id]
        assert (m["model_type"], m["loads"]) == (model_type, loads), m
        assert (m["reason"] is None) if reason is None else (reason in m["reason"]), m
    # loadable first, each group most downloaded first
    assert [m["id"] for m in found] == ["org/distilbert-sst2", "org/roberta-sharded", "org/gated-bert",
                                        "org/funnel-sst2", "org/nomic-cls", "org/jina-cls", "org/bert-pickle",
                                        "org/bert-onnx", "org/llama-gptq", "org/no-config"]
    assert got["org/distilbert-sst2"] == {"id": "org/distilbert-sst2", "downloads": 8000, "likes": 30,
                                         "pipeline_tag": "text-classification", "model_type": "distilbert",
                                         "loads": True, "reason": None}


def test_by_default_only_what_loads(hub_server):
    add_catalog(hub_server)
    ids = lambda **kw: [m["id"] for m in hub_search.list_models(**kw)]  # noqa: E731
    assert ids(task="text-classification") == ["org/distilbert-sst2", "org/roberta-sharded", "org/gated-bert"]
    # the limit counts the models shown, not the ones looked at
    assert ids(task="text-classification", limit=2) == ["org/distilbert-sst2", "org/roberta-sharded"]
    assert ids(task="text-classification", language="fr") == ["org/roberta-sharded"]
    assert ids(search="bert", limit=3) == ["org/distilbert-sst2", "org/roberta-sharded", "org/gated-bert"]
    assert ids(task="ner") == ["org/bert-ner"]
    # a repo that once shipped its code, mapping to the library's own class, loads
    assert ids(task="text-generation") == ["org/qwen2-chat"]
    # with --all, the limit takes the most downloaded, marked
    assert ids(task="text-classification", limit=2, include_unloadable=True) == ["org/distilbert-sst2",
                                                                                 "org/funnel-sst2"]
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        hub_search.list_models(limit=0)


def test_translation_pairs_filter_by_both_languages(hub_server):
    for model_id, tags, downloads in [("org/opus-en-fr", ["en", "fr"], 10), ("org/opus-en-de", ["en", "de"], 90),
                                      ("org/opus-fr-only", ["fr"], 50)]:
        hub_server.add(model_id, {"config.json": config("marian", "MarianMTModel"), **WEIGHTS},
                       pipeline_tag="translation", tags=tags, downloads=downloads)
    assert [m["id"] for m in hub_search.list_models(task="translation_en_to_fr")] == ["org/opus-en-fr"]
    assert [m["id"] for m in hub_search.list_models(task="translation")] == ["org/opus-en-de", "org/opus-fr-only",
                                                                            "org/opus-en-fr"]


def test_the_fake_hub_refuses_an_unknown_expand_as_the_hub_does(hub_server):
    r = httpx.get(hub_server.endpoint + "/api/models", params={"expand": ["config", "modelType"]})
    assert r.status_code == 400 and "modelType" in r.json()["error"]
    listed = httpx.get(hub_server.endpoint + "/api/models", params={"expand": ["config"]}).json()
    assert listed == []
    hub_server.add("org/x", {"config.json": config("bert", "BertModel", hidden_size=8)})
    (listed,) = httpx.get(hub_server.endpoint + "/api/models", params={"expand": ["config"]}).json()
    assert listed == {"_id": listed["_id"], "id": "org/x", "config": {"model_type": "bert", "architectures": ["BertModel"]}}


# -- `lightpipe models` ------------------------------------------------------------------------

def table_rows(text: str) -> list[list[str]]:
    """The table's cells: columns are separated by two spaces or more (the verdict may hold single ones)."""
    import re

    return [re.split(r" {2,}", line.strip(), maxsplit=5) for line in text.splitlines()]


def test_cli_table_lists_what_loads(hub_server, capsys):
    add_catalog(hub_server)
    assert main(["models", "--task", "sentiment-analysis"]) == 0
    out, err = capsys.readouterr()
    rows = table_rows(out)
    assert rows[0] == ["id", "downloads", "likes", "task", "type", "loads?"]
    assert rows[1] == ["org/distilbert-sst2", "8,000", "30", "text-classification", "distilbert", "yes"]
    assert [r[0] for r in rows[1:]] == ["org/distilbert-sst2", "org/roberta-sharded", "org/gated-bert"]
    assert rows[3][5].startswith("yes (gated: accept its terms")
    # columns line up: the task column starts, and the numbers end, at the same place on every line
    lines = out.splitlines()
    assert len({line.index(row[3]) for line, row in zip(lines, rows)}) == 1
    assert len({line.index(row[1]) + len(row[1]) for line, row in zip(lines, rows)}) == 1
    assert err == ("lightpipe: left out 7 of the 10 most downloaded matches: lightpipe can't load them "
                   "(`--all` lists them, saying why)\n")


def test_cli_all_marks_the_others_and_json(hub_server, capsys):
    add_catalog(hub_server)
    assert main(["models", "--task", "text-classification", "--all", "--limit", "4"]) == 0
    out, err = capsys.readouterr()
    rows = table_rows(out)
    assert [r[0] for r in rows[1:]] == ["org/distilbert-sst2", "org/funnel-sst2", "org/nomic-cls", "org/jina-cls"]
    assert rows[2][5] == f"no: model type '{UNSUPPORTED}' is not supported" and err == ""
    assert rows[3][4] == "nomic_bert" and rows[3][5].startswith("no: needs trust_remote_code")

    assert main(["models", "--task", "text-classification", "--all", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == hub_search.list_models(task="text-classification", include_unloadable=True)
    assert {m["id"]: m["loads"] for m in lines} == {k: v[1] for k, v in EXPECTED.items()}


def test_cli_nothing_found(hub_server, capsys):
    assert main(["models", "--search", "nothing-like-this"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == "lightpipe: no Hub model matches\n"


def test_cli_offline_is_one_line(hub_server, capsys, monkeypatch):
    add_catalog(hub_server)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "--task", "ner"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("lightpipe: error: cannot search the Hub: offline mode is on (HF_HUB_OFFLINE=1)")
    assert listings(hub_server) == []
    assert main(["models", "--task", "sentiment"]) == 2
    assert "unknown task 'sentiment'" in capsys.readouterr().err


@pytest.mark.fresh
def test_cli_unreachable_hub_is_one_line_in_a_fresh_process(hub_server):
    endpoint = hub_server.endpoint
    hub_server.stop()  # the port now refuses connections
    env = {**{k: v for k, v in os.environ.items() if k not in ("LIGHTPIPE_DEBUG", "HF_HUB_OFFLINE")},
           "PYTHONPATH": SRC, "HF_ENDPOINT": endpoint}
    proc = subprocess.run([sys.executable, "-m", "lightpipe.cli", "models", "--task", "ner"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"lightpipe: error: cannot search the Hub at {endpoint}: ")
    assert "Connection refused" in proc.stderr and " object at 0x" not in proc.stderr


# -- the playground's search route ---------------------------------------------------------------

@pytest.mark.server
def test_search_route_marks_the_models(hub_server, monkeypatch):
    from lightpipe.server import create_app, start_in_thread

    add_catalog(hub_server)
    with start_in_thread(create_app()) as srv:
        shown = httpx.get(srv.url + "/api/models", params={"task": "sentiment-analysis"}).json()
        assert [m["id"] for m in shown] == ["org/distilbert-sst2", "org/roberta-sharded", "org/gated-bert"]
        marked = httpx.get(srv.url + "/api/models", params={"task": "text-classification", "all": "true"}).json()
        assert marked == hub_search.list_models(task="text-classification", limit=20, include_unloadable=True)
        assert [m["loads"] for m in marked] == [True] * 3 + [False] * 7
        assert marked[3]["reason"] == f"model type '{UNSUPPORTED}' is not supported"
        bad = httpx.get(srv.url + "/api/models", params={"task": "sentiment"})
        assert bad.status_code == 422 and "known tasks" in bad.json()["error"]
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        offline = httpx.get(srv.url + "/api/models", params={"task": "ner"})
        assert offline.status_code == 503 and "offline" in offline.json()["error"]
