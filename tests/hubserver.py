"""A fake Hugging Face Hub on 127.0.0.1 for tests: enough of the real Hub's HTTP API for
huggingface_hub 0.36 (snapshot_download, hf_hub_download, model_info, list_repo_tree,
list_models) and therefore for transformers' from_pretrained too.

    hub = HubServer().start()
    sha = hub.add("org/tiny", {"config.json": '{"model_type": "bert"}'}, pipeline_tag="fill-mask")
    hub.add("org/tiny", {...}, ref="v1")      # another commit, reachable as "v1" or by its sha
    hub.add("org/gated", {...}, gated="manual", tags=["en"], downloads=10)  # listing metadata
    ... HfApi(endpoint=hub.endpoint) ...
    hub.requests                               # [(method, path), ...]: assert no network was used
    hub.stop()

`use_hub(monkeypatch, hub, cache)` points huggingface_hub (and hence transformers and
lightpipe) at the server and at an empty cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import get_args
from urllib.parse import parse_qs, unquote, urlsplit

from huggingface_hub.hf_api import ExpandModelProperty_T

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".spm", ".pt", ".h5", ".msgpack")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    # The Hub stores weights (and anything over 10 MB) in LFS; its ETag is then the sha256.
    return path.endswith(LFS_SUFFIXES) or len(data) > 10_000_000


# what `expand` may ask for on a model listing: huggingface_hub's own list of the Hub's properties
EXPAND_PROPERTIES = set(get_args(ExpandModelProperty_T))
# the part of config.json that the Hub's API hands out as `config`
HUB_CONFIG_KEYS = ("architectures", "model_type", "auto_map", "quantization_config")


class BadRequest(ValueError):
    """A query the real Hub answers with 400."""


def hub_config(files: dict[str, bytes]) -> dict:
    """The Hub's `config` property for a commit: the identifying keys of its config.json (`{}`
    when there is none or it doesn't parse, as the Hub then has nothing to show)."""
    try:
        config = json.loads(files["config.json"])
    except (KeyError, ValueError):
        return {}
    return {k: config[k] for k in HUB_CONFIG_KEYS if isinstance(config, dict) and k in config}


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha → {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag → sha
    meta: dict = field(default_factory=dict)  # pipeline_tag, tags, downloads, likes, library_name, gated

    def sha_for(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        hits = [sha for sha in self.commits if sha.startswith(rev)] if len(rev) >= 7 else []
        return hits[0] if len(hits) == 1 else None


class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._httpd: ThreadingHTTPServer | None = None

    # -------------------------------------------------------------- content

    def add(self, repo_id: str, files: dict | str | Path, *, ref: str = "main", **meta) -> str:
        """Commit `files` ({path: bytes | str} or a folder) as the whole content of a new
        commit of `repo_id`, point branch/tag `ref` at it and return its sha."""
        if isinstance(files, (str, Path)):
            root = Path(files)
            files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        blobs = {path: data.encode() if isinstance(data, str) else bytes(data) for path, data in files.items()}
        repo = self.repos.setdefault(repo_id, Repo(meta={"downloads": 0, "likes": 0, "tags": []}))
        digest = hashlib.sha1(repo_id.encode() + ref.encode() + str(len(repo.commits)).encode())
        for path in sorted(blobs):
            digest.update(path.encode() + b"\0" + blobs[path])
        sha = digest.hexdigest()
        repo.commits[sha] = blobs
        repo.refs[ref] = sha
        repo.meta.update(meta)
        return sha

    # -------------------------------------------------------------- lifecycle

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        # a short poll keeps stop() quick: shutdown() waits for the loop to notice
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Shut down; the port then refuses connections, like a machine without network."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def downloads(self) -> list[str]:
        """Paths of the files fetched with GET (not HEAD), in request order."""
        return [unquote(p.split("/resolve/", 1)[1].split("/", 1)[1]) for m, p in self.requests
                if m == "GET" and "/resolve/" in p]

    # -------------------------------------------------------------- API answers

    def model_json(self, repo_id: str, repo: Repo, sha: str | None = None) -> dict:
        out = {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
               "private": False, "gated": False, "disabled": False, "library_name": "transformers",
               "downloads": 0, "likes": 0, "tags": [], "pipeline_tag": None, **repo.meta}
        main = repo.commits.get(repo.refs.get("main"), {})
        if "auto_map" in hub_config(main) and "custom_code" not in out["tags"]:
            out["tags"] = [*out["tags"], "custom_code"]  # the Hub tags a repo whose config maps to its own code
        if sha is not None:
            out["sha"] = sha
            out["siblings"] = [{"rfilename": p} for p in sorted(repo.commits[sha])]
        return out

    def tree(self, files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries, folders = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                folders.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                data = files[path]
                entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}
                if is_lfs(path, data):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
        dirs = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                for d in sorted(folders)]
        return dirs + entries

    def listed_json(self, repo_id: str, repo: Repo) -> dict:
        """A model with every property a listing can show: with `expand`, the Hub adds the main
        branch's file list (`siblings`) and its `config` (a digest of config.json)."""
        files = repo.commits.get(repo.refs.get("main"), {})
        return {**self.model_json(repo_id, repo), "siblings": [{"rfilename": p} for p in sorted(files)],
                "config": hub_config(files)}

    def search(self, query: dict[str, list[str]]) -> list[dict]:
        # huggingface_hub sends `expand=a&expand=b`; a browser's query string `expand[]=a`
        expand = query.get("expand", []) + query.get("expand[]", [])
        unknown = sorted(set(expand) - EXPAND_PROPERTIES)
        if unknown:  # the real Hub refuses an expand value it doesn't know
            raise BadRequest(f"invalid expand value(s) {unknown}")
        models = [self.listed_json(rid, repo) for rid, repo in self.repos.items()]
        for value in query.get("filter", []):  # tags, including languages; several: all of them
            models = [m for m in models if value in m["tags"] or value in (m["pipeline_tag"], m["library_name"])]
        for value in query.get("pipeline_tag", []):
            models = [m for m in models if m["pipeline_tag"] == value]
        for value in query.get("author", []):
            models = [m for m in models if m["id"].startswith(value + "/")]
        for value in query.get("search", []):
            models = [m for m in models if value.lower() in m["id"].lower()]
        if "sort" in query:
            key = query["sort"][0]
            models.sort(key=lambda m: m.get(key) or 0, reverse=query.get("direction", ["-1"])[0] != "1")
        if "limit" in query:
            models = models[: int(query["limit"][0])]
        if expand:  # the id and just the properties asked for
            return [{"_id": m["_id"], "id": m["id"], **{k: m[k] for k in expand if k in m}} for m in models]
        return [{k: v for k, v in m.items() if k not in ("siblings", "config")} for m in models]


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.0"  # one connection per request: nothing pooled survives stop()

    def log_message(self, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    # -------------------------------------------------------------- routing

    def _serve(self, body: bool) -> None:
        hub = self.server_hub
        hub.requests.append((self.command, self.path))
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        if path == "/api/models":
            try:
                return self._json(hub.search(query), body)
            except BadRequest as e:
                return self._error(400, None, str(e), body)
        if path.startswith("/api/models/"):
            return self._api_model(path[len("/api/models/"):], query, body)
        if "/resolve/" in path:
            return self._resolve(path, body)
        self._error(404, None, "Not Found", body)

    def _api_model(self, rest: str, query: dict, body: bool) -> None:
        hub = self.server_hub
        for kind in ("revision", "tree"):
            if f"/{kind}/" in rest:
                repo_id, tail = rest.split(f"/{kind}/", 1)
                rev, _, sub = tail.partition("/")
                break
        else:
            repo_id, kind, rev, sub = rest, "revision", "main", ""
        repo = self._repo(repo_id, body)
        sha = repo and self._sha(repo, unquote(rev), body)
        if sha is None:
            return
        if kind == "revision":
            return self._json(hub.model_json(repo_id, repo, sha), body)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        self._json(hub.tree(repo.commits[sha], unquote(sub), recursive), body)

    def _resolve(self, path: str, body: bool) -> None:
        repo_id, tail = path.lstrip("/").split("/resolve/", 1)
        rev, _, filename = tail.partition("/")
        repo = self._repo(repo_id, body)
        sha = repo and self._sha(repo, unquote(rev), body)
        if sha is None:
            return
        data = repo.commits[sha].get(unquote(filename))
        if data is None:
            return self._error(404, "EntryNotFound", "Entry not found", body, {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "Content-Type": "application/octet-stream"}
        if is_lfs(filename, data):
            # the Hub answers a HEAD on an LFS file with a CDN redirect carrying these two
            etag = f'"{hashlib.sha256(data).hexdigest()}"'
            headers.update({"ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._send(200, data, headers, body)

    # -------------------------------------------------------------- helpers

    def _repo(self, repo_id: str, body: bool) -> Repo | None:
        repo = self.server_hub.repos.get(unquote(repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", body)
        return repo

    def _sha(self, repo: Repo, rev: str, body: bool) -> str | None:
        sha = repo.sha_for(rev)
        if sha is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev, body)
        return sha

    def _json(self, obj, body: bool) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, body)

    def _error(self, status: int, code: str | None, message: str, body: bool, headers: dict | None = None) -> None:
        headers = {**(headers or {}), "X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, body)

    def _send(self, status: int, data: bytes, headers: dict, body: bool) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


def use_hub(monkeypatch, hub: HubServer, cache: Path) -> Path:
    """Point huggingface_hub, transformers and lightpipe at `hub` and the empty cache `cache`,
    online. huggingface_hub copies env vars into `constants` at import, so both are patched."""
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    cache = Path(cache)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    point_hub_at(monkeypatch, hub.endpoint)
    reset_sessions()  # a session made while offline keeps refusing requests
    return cache


def point_hub_at(monkeypatch, endpoint: str) -> None:
    """Set huggingface_hub's default endpoint. The URL template is a second frozen copy:
    hf_hub_url() builds from it and only swaps in `endpoint=` when the URL starts with
    constants.ENDPOINT, so patching ENDPOINT alone sends downloads to huggingface.co."""
    from huggingface_hub import constants, file_download

    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
