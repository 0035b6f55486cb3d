"""Who may use the server and what it shows them: API keys (Bearer, /health open), CORS origins,
X-Request-Id on every response and log line, /api/load (Hub ids only unless allowed; one entry
per model however spelled; failed loads bounded and cleared; errors that reveal no server
folder), public model names (never a path), and the operator's flags reaching the pipelines."""

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

from lightpipe import pipeline
from lightpipe.server import create_app, start_in_thread
from lightpipe.server import registry as registry_module
from lightpipe.server.registry import ModelSpec, parse_model_spec
from test_server import MINILM, SST2, decoder_checkpoint, labels, wait_healthy
from tiny import encoder_checkpoint

pytestmark = pytest.mark.server

http = httpx.Client(timeout=60)  # patient: the test machine may be busy

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"cls": encoder_checkpoint(mk("cls"), "bert", "sequence-classification", **SST2),
                "other": encoder_checkpoint(mk("other"), "bert", "sequence-classification", **labels(["A", "B"])),
                "gpt": decoder_checkpoint(mk("gpt"))}


@pytest.fixture(autouse=True)
def clients_online(monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield
    reset_sessions()


# -- API keys ---------------------------------------------------------------------------------

def test_api_key_closes_everything_but_health_and_the_pages(folders):
    app = create_app([MINILM, f"gpt={folders['gpt']}"], api_keys=[KEY, "second-key-0000"], allow_load=True)
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        assert http.get(srv.url + "/health").status_code == 200
        page = http.get(srv.url + "/")
        assert page.status_code == 200 and 'id="api-key"' in page.text
        assert http.get(srv.url + "/static/app.js").status_code == 200
        closed = [("GET", "/info"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/v1/models"),
                  ("GET", "/api/models"), ("POST", "/api/load"), ("POST", "/embed"), ("POST", "/"),
                  ("POST", "/v1/embeddings"), ("POST", "/models/gpt/v1/chat/completions"), ("POST", "/tokenize")]
        for method, path in closed:
            for headers in ({}, {"Authorization": "Bearer wrong-key-00"}, {"Authorization": f"Basic {KEY}"},
                            {"Authorization": KEY}):
                r = http.request(method, srv.url + path, json={"inputs": "x"}, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
                error = r.json()["error"]
                if "/v1/" in path:
                    assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
                else:
                    assert r.json()["error_type"] == "unauthorized" and "Bearer" in error
        for key in (KEY, "second-key-0000"):
            r = http.get(srv.url + "/info", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json()["auth"] is True

        from huggingface_hub import InferenceClient
        from openai import AuthenticationError, OpenAI

        assert InferenceClient(srv.url + f"/models/{MINILM}", token=KEY).feature_extraction("hi").shape == (1, 384)
        assert OpenAI(base_url=srv.url + "/v1", api_key=KEY).embeddings.create(model=MINILM, input="hi").data
        with pytest.raises(AuthenticationError, match="a valid API key is required"):
            OpenAI(base_url=srv.url + "/v1", api_key="nope-nope-nope", max_retries=0).models.list()


def test_api_key_file_and_environment(tmp_path, monkeypatch):
    from lightpipe.cli import api_keys

    keys = tmp_path / "keys"
    keys.write_text("# rotated monthly\nfirst-key-123\n\n  second-key-456  \n")
    monkeypatch.setenv("LIGHTPIPE_API_KEY", "from-the-env-789")
    args = argparse.Namespace(api_key=["given-key-000"], api_key_file=str(keys))
    assert api_keys(args) == ["given-key-000", "first-key-123", "second-key-456", "from-the-env-789"]
    keys.write_text("short\n")
    with pytest.raises(ValueError, match="at least 8 characters"):
        api_keys(argparse.Namespace(api_key=None, api_key_file=str(keys)))


# -- CORS and request ids ------------------------------------------------------------------------

def test_cors_origins(folders):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    app = create_app([MINILM], cors_origins=["https://app.example"], api_keys=[KEY])
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        ok = http.options(srv.url + "/embed", headers=preflight)  # no key on a preflight: browsers send none
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        bad = http.options(srv.url + "/embed", headers={**preflight, "Origin": "https://evil.example"})
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        r = http.post(srv.url + "/embed", json={"inputs": "x"},
                       headers={"Origin": "https://app.example", "Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        denied = http.post(srv.url + "/embed", json={"inputs": "x"}, headers={"Origin": "https://app.example"})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"
    with start_in_thread(create_app([MINILM])) as srv:  # by default: no CORS at all
        wait_healthy(srv.url)
        r = http.get(srv.url + "/health", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers
        assert http.options(srv.url + "/embed", headers=preflight).status_code == 405


def test_request_ids_on_every_response_and_log_line(folders, caplog):
    app = create_app([MINILM], max_body_bytes=1000)
    with start_in_thread(app) as srv, caplog.at_level(logging.INFO, logger="lightpipe.access"):
        wait_healthy(srv.url)
        answers = [http.get(srv.url + "/health"), http.get(srv.url + "/nowhere"),
                   http.post(srv.url + "/embed", json={"inputs": 5}),
                   http.post(srv.url + "/embed", json={"inputs": "x" * 2000}),  # 413 from the middleware
                   http.post(srv.url + "/v1/embeddings", json={"input": "hi"})]
        ids = [r.headers["x-request-id"] for r in answers]
        assert [r.status_code for r in answers] == [200, 404, 422, 413, 200]
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == len(ids)
        mine = http.get(srv.url + "/health", headers={"X-Request-Id": "trace-42.a:b"})
        assert mine.headers["x-request-id"] == "trace-42.a:b"
        for insane in ("has spaces", "x" * 200, "ünïcode", "a\tb", "<script>"):
            r = http.get(srv.url + "/health", headers={"X-Request-Id": insane.encode()})
            assert r.headers["x-request-id"] != insane and len(r.headers["x-request-id"]) == 32
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "lightpipe.access"]
    for rid, path in zip(ids, ["/health", "/nowhere", "/embed", "/embed", "/v1/embeddings"]):
        assert any(f"id={rid}" in line and path in line for line in lines), (rid, lines[:6])
    assert any('"GET /health" 200' in line and "id=trace-42.a:b" in line for line in lines)


# -- names -------------------------------------------------------------------------------------

def test_model_specs_parse():
    assert parse_model_spec("org/model") == ModelSpec("org/model")
    assert parse_model_spec("org/model@v1.2") == ModelSpec("org/model", revision="v1.2")
    assert parse_model_spec("ner=org/model") == ModelSpec("org/model", task="ner")
    assert parse_model_spec("sst2=org/model") == ModelSpec("org/model", name="sst2")
    assert parse_model_spec("sst2=text-classification=org/model@abc1234") == \
        ModelSpec("org/model", task="text-classification", name="sst2", revision="abc1234")
    # a name that is also a task's name, before a task
    assert parse_model_spec("ner=ner=org/model") == ModelSpec("org/model", task="ner", name="ner")
    assert parse_model_spec("ner=text-classification=org/model") == \
        ModelSpec("org/model", task="text-classification", name="ner")
    with pytest.raises(ValueError, match="names no revision"):
        parse_model_spec("org/model@")


def test_spec_that_is_a_folder_stays_a_folder(tmp_path):
    odd = tmp_path / "a=b@c"
    odd.mkdir()
    assert parse_model_spec(str(odd)) == ModelSpec(str(odd))


def test_public_names_never_a_path(folders, tmp_path):
    """A folder is served under its own name (or the one given); /v1/models, /info, errors and
    log lines never show the server's paths — not even in a pipeline's own error message."""
    app = create_app([f"{folders['cls']}", f"sst2-copy=text-classification={folders['other']}",
                      f"gpt={folders['gpt']}", str(tmp_path / "missing-folder")])
    with start_in_thread(app) as srv:
        deadline = time.monotonic() + 60
        while any(m["status"] == "loading" for m in http.get(srv.url + "/info").json()["models"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        info = http.get(srv.url + "/info").text
        models = http.get(srv.url + "/v1/models").json()["data"]
        assert [m["id"] for m in models] == [Path(folders["cls"]).name, "sst2-copy", "gpt", "missing-folder"]
        long = http.post(srv.url + "/models/sst2-copy", json={"inputs": "word " * 500})  # the pipeline's message
        health = http.get(srv.url + "/health").json()["error"]
        assert "missing-folder failed to load" in health
        for text in (info, json.dumps(models), long.text, health):
            assert str(tmp_path) not in text and str(Path(folders["cls"]).parent) not in text, text[:300]
            assert "/tmp/" not in text
        assert long.status_code == 422 and "sst2-copy accepts at most" in long.json()["error"]
        # a client that knows a model's folder may name it so: that model, never another one
        by_folder = http.post(f"{srv.url}/models/{folders['other']}", json={"inputs": "x"})
        assert by_folder.status_code == 200
        assert by_folder.json() == http.post(srv.url + "/models/sst2-copy", json={"inputs": "x"}).json()
        chat = http.post(f"{srv.url}/models/{folders['other']}/v1/chat/completions",
                         json={"messages": [{"role": "user", "content": "x"}]})  # gpt is the one chat model
        assert chat.status_code == 422 and "sst2-copy serves text-classification" in chat.json()["error"]["message"]
        assert "/tmp/" not in chat.text
    with pytest.raises(ValueError, match="two models would be served as 'x'"):
        create_app([f"x={folders['cls']}", f"x={folders['other']}"])


def test_revision_and_hub_names(hub_server, folders):
    """MODEL@REVISION serves that revision, under the Hub id."""
    hub_server.add("org/tiny", folders["cls"])
    hub_server.add("org/tiny", folders["other"], ref="v1")
    app = create_app(["org/tiny@v1", "main-one=org/tiny"])
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        info = {m["id"]: m for m in http.get(srv.url + "/info").json()["models"]}
        assert info["org/tiny"]["labels"] == ["A", "B"] and info["org/tiny"]["revision"] == "v1"
        assert info["main-one"]["labels"] == ["NEGATIVE", "POSITIVE"]


def test_dtype_and_quantize_reach_the_pipelines(folders):
    app = create_app([f"gpt={folders['gpt']}"], dtype="bfloat16")
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        model = http.get(srv.url + "/info").json()["models"][0]
        assert model["dtype"] == "torch.bfloat16" and model["quantized"] is False
    app = create_app([f"gpt={folders['gpt']}"], quantize="int8")
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        assert http.get(srv.url + "/info").json()["models"][0]["quantized"] is True
        r = http.post(srv.url + "/models/gpt", json={"inputs": "hello", "parameters": {"max_new_tokens": 3}})
        assert r.status_code == 200


def test_serve_flags_reach_the_server(monkeypatch, tmp_path, folders):
    import lightpipe.server
    from lightpipe.cli import main

    got = {}
    monkeypatch.setattr(lightpipe.server, "serve", lambda models, **kw: got.update(models=models, **kw))
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    assert main(["serve", "--model", f"sst2=text-classification={folders['cls']}", "--dtype", "bfloat16",
                 "--quantize", "int8", "--threads", "3", "--api-key-file", str(keys), "--cors-origin", "https://a.b",
                 "--cors-origin", "https://c.d", "--max-input-tokens", "100", "--max-total-tokens", "200",
                 "--max-sequences", "4", "--shutdown-timeout", "7", "--header-timeout", "3", "--body-timeout", "9",
                 "--allow-load", "--allow-load-local", "--revision", "main"]) == 0
    assert got["models"] == [ModelSpec(str(folders["cls"]), "text-classification", "sst2")]
    assert {k: got[k] for k in ("dtype", "quantize", "threads", "api_keys", "cors_origins", "max_input_tokens",
                                "max_total_tokens", "max_sequences", "shutdown_timeout", "header_timeout",
                                "body_timeout", "allow_load", "allow_load_local", "revision")} == {
        "dtype": "bfloat16", "quantize": "int8", "threads": 3, "api_keys": [KEY],
        "cors_origins": ["https://a.b", "https://c.d"], "max_input_tokens": 100, "max_total_tokens": 200,
        "max_sequences": 4, "shutdown_timeout": 7.0, "header_timeout": 3.0, "body_timeout": 9.0, "allow_load": True,
        "allow_load_local": True, "revision": "main"}
    assert got["max_client_batch_size"] == 2048  # OpenAI's embeddings batches fit
    assert main(["serve", "--model", str(folders["cls"]), "--allow-load-local"]) == 2  # needs --allow-load


def test_default_threads_leave_a_core_to_the_event_loop(monkeypatch):
    import torch

    from lightpipe.server import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.default_threads() == 1
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    assert threads.default_threads() == 1
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(None) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            threads.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_embedding_batches_the_openai_client_sends(folders):
    """The OpenAI client sends up to 2048 inputs a request: the default cap takes them (the
    batcher's token budget is separate); 2049 is 413."""
    from openai import APIStatusError, OpenAI

    app = create_app([MINILM])
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        client = OpenAI(base_url=srv.url + "/v1", api_key="-", max_retries=0)
        hundred = [f"sentence number {i}" for i in range(100)]
        out = client.embeddings.create(model=MINILM, input=hundred, encoding_format="float")
        expected = pipeline("feature-extraction", model=MINILM).embed(hundred).numpy()
        np.testing.assert_allclose([d.embedding for d in out.data], expected, atol=1e-4)
        assert len(client.embeddings.create(model=MINILM, input=["x"] * 2048).data) == 2048
        with pytest.raises(APIStatusError, match="batch size 2049 > maximum allowed batch size 2048") as err:
            client.embeddings.create(model=MINILM, input=["x"] * 2049)
        assert err.value.status_code == 413


# -- /api/load ----------------------------------------------------------------------------------

def wait_loaded(url, name, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        entry = next((m for m in http.get(url + "/info").json()["models"] if m["id"] == name), None)
        if entry is not None and entry["status"] != "loading":
            return entry
        time.sleep(0.05)
    raise AssertionError(f"{name} still loading")


def test_load_takes_hub_ids_only_and_reveals_no_folder(folders, hub_server, monkeypatch, tmp_path):
    """Without --allow-load-local a server folder can't be loaded, and the answer is the same
    whether the folder exists or not; a Hub id is fetched from the Hub even when a folder of
    that name sits in the server's working directory."""
    hub_server.add("org/tiny", folders["other"])
    local = tmp_path / "org" / "tiny"  # a folder spelled like the Hub id, holding another model
    local.parent.mkdir()
    os.symlink(folders["cls"], local)
    monkeypatch.chdir(tmp_path)
    app = create_app([], allow_load=True)
    with start_in_thread(app) as srv:
        answers = [http.post(srv.url + "/api/load", json={"model": m})
                   for m in (str(folders["cls"]), "/no/such/folder", "./org/tiny", "../etc", "~/x", "/etc/passwd")]
        assert {r.status_code for r in answers} == {422}
        assert len({r.json()["error"] for r in answers}) == 1  # the same words, whatever exists
        assert "--allow-load-local" in answers[0].json()["error"]
        r = http.post(srv.url + "/api/load", json={"model": "org/tiny"})
        assert r.status_code == 202 and r.json()["id"] == "org/tiny"
        assert wait_loaded(srv.url, "org/tiny")["labels"] == ["A", "B"]  # the Hub's, not the local folder's
        missing = http.post(srv.url + "/api/load", json={"model": "org/missing"})
        error = wait_loaded(srv.url, "org/missing")["error"]
        assert missing.status_code == 202 and "org/missing" in error
        for secret in (str(hub_server.cache), str(tmp_path), os.path.expanduser("~")):
            assert secret not in error, error


def test_load_is_one_entry_per_model_however_spelled(folders, tmp_path, monkeypatch):
    calls = []
    real = registry_module.load_pipeline

    def counted(task, model, **kw):
        calls.append(model)
        return real(task, model, **kw)

    monkeypatch.setattr(registry_module, "load_pipeline", counted)
    folder = Path(folders["cls"])
    monkeypatch.chdir(folder.parent)
    link = tmp_path / "link"
    os.symlink(folder, link)
    spellings = [str(folder), str(folder) + "/", f"./{folder.name}", folder.name, f"{folder.name}/.",
                 f"{folder}/../{folder.name}", f"//{str(folder).lstrip('/')}", str(link), f"{link}/"]
    spellings = (spellings * 4)[:30]
    app = create_app([], allow_load=True, allow_load_local=True)
    with start_in_thread(app) as srv:
        ids = {http.post(srv.url + "/api/load", json={"model": m}).json()["id"] for m in spellings}
        assert ids == {folder.name}
        wait_loaded(srv.url, folder.name)
        assert len(calls) == 1 and len(http.get(srv.url + "/v1/models").json()["data"]) == 1
        # another task for the same folder is another pipeline
        other = http.post(srv.url + "/api/load", json={"model": str(folder), "task": "feature-extraction",
                                                        "name": "cls-features"})
        assert other.json()["id"] == "cls-features"


def test_failed_loads_are_bounded_and_cleared(hub_server):
    app = create_app([], allow_load=True, max_models=3, failed_load_ttl=60.0)
    with start_in_thread(app) as srv:
        for name in ("org/gone-1", "org/gone-2", "org/gone-3"):
            assert http.post(srv.url + "/api/load", json={"model": name}).status_code == 202
            assert wait_loaded(srv.url, name)["status"] == "error"
        # full: a fourth load makes room by forgetting the oldest failure
        assert http.post(srv.url + "/api/load", json={"model": "org/gone-4"}).status_code == 202
        ids = [m["id"] for m in http.get(srv.url + "/v1/models").json()["data"]]
        assert ids == ["org/gone-2", "org/gone-3", "org/gone-4"]
        wait_loaded(srv.url, "org/gone-4")
        app.state.lightpipe.registry.failed_ttl = 0.5  # failed_load_ttl: the failures leave /info and /v1/models
        time.sleep(0.7)
        assert http.get(srv.url + "/info").json()["models"] == []
        assert http.get(srv.url + "/v1/models").json()["data"] == []
        retry = http.post(srv.url + "/api/load", json={"model": "org/gone-1"})  # a retry is a new attempt
        assert retry.status_code == 202 and retry.json()["status"] == "loading"


def test_loaded_models_are_capped(folders, hub_server):
    hub_server.add("org/a", folders["cls"])
    hub_server.add("org/b", folders["other"])
    app = create_app([MINILM], allow_load=True, max_models=2)
    with start_in_thread(app) as srv:
        wait_healthy(srv.url)
        assert http.post(srv.url + "/api/load", json={"model": "org/a"}).status_code == 202
        full = http.post(srv.url + "/api/load", json={"model": "org/b"})
        assert full.status_code == 409 and "--max-models" in full.json()["error"]
        assert http.post(srv.url + "/api/load", json={"model": "ORG/A"}).json()["id"] == "org/a"  # the same model
