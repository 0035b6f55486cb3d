"""The docs' samples, run: every ```python block of README.md and docs/*.md, and every
`lightpipe ...` line of their ```bash blocks, as written.

- The Hub ids they name are served by the fake Hub (tests/hubserver.py) as tiny checkpoints with
  the real ones' conventions (tests/docs_hub.py), at the revisions lightpipe pins, into an empty
  HF cache; the embedded all-MiniLM-L6-v2 is the real one. Files the samples read (reviews.txt,
  reviews.parquet, articles.txt, article.txt, questions.jsonl) are written to the working
  directory first.
- A page's Python blocks run in order in one namespace, like a notebook. An expression followed
  by a comment that is a Python literal (`qa(...)` then `# {'score': 0.639, ...}`) must return
  that literal's shape: the same keys, container and value types (the values differ: the
  weights are random).
- `lightpipe` lines run through `lightpipe.cli.main` in this process, their words expanded by
  bash (quotes, `$(cat article.txt)`); each must exit 0. `lightpipe serve` starts the server on
  a free port, and the page's later blocks reach it where they say `127.0.0.1:8000`.
- A block whose first line is `# illustrative (not run by tests/test_docs.py): why` is only
  compiled. Keep those few, and say why.

Also checked: links between the pages and their #anchors, the `make` targets and
`benchmarks/` scripts (and flags) the docs name, and the README's first two commands.
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ILLUSTRATIVE = "# illustrative (not run by tests/test_docs.py):"
SERVER_URL = "127.0.0.1:8000"


# -- reading the pages --------------------------------------------------------------------------

@dataclass
class Sample:
    page: str  # relative to the repository root
    line: int  # 1-based line of the code's first line in the page
    lang: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> list[Sample]:
    """The fenced code blocks of a Markdown page."""
    found, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*(\S*)", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1)))
            found.append(Sample(str(path.relative_to(ROOT)), i + 2, fence.group(2), "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return found


def commands(sample: Sample) -> list[Sample]:
    """The `lightpipe ...` command lines of a bash block (continuation lines joined)."""
    out, pending, start = [], "", 0
    for n, line in enumerate(sample.code.splitlines()):
        if not pending:
            start = n
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.lstrip().startswith("lightpipe "):
            out.append(Sample(sample.page, sample.line + start, "command", pending.strip()))
        pending = ""
    return out


def samples() -> list:
    """Every sample as a pytest param, marked by what it needs, in page order."""
    params = []
    for page in PAGES:
        for block in blocks(page):
            if block.lang == "python":
                needs_server = SERVER_URL in block.code
                params.append(pytest.param(block, id=block.where,
                                           marks=pytest.mark.server if needs_server else pytest.mark.unit))
            elif block.lang in ("bash", "sh", "shell"):
                for cmd in commands(block):
                    serve = cmd.code.startswith("lightpipe serve")
                    params.append(pytest.param(cmd, id=f"{cmd.where} {' '.join(cmd.code.split()[:3])}",
                                               marks=pytest.mark.server if serve else pytest.mark.unit))
    return params


# -- the world the samples run in --------------------------------------------------------------

@dataclass
class Page:
    namespace: dict = field(default_factory=dict)
    server_url: str | None = None


@pytest.fixture(scope="module")
def docs_world(tmp_path_factory):
    """The fake Hub serving the docs' models, an empty HF cache, and a working directory with the
    samples' input files; one namespace (and server) per page."""
    import docs_hub
    from hubserver import HubServer, use_hub
    from tiny import sentences

    root = tmp_path_factory.mktemp("docs")
    folders = docs_hub.build(root / "checkpoints")
    work = root / "work"
    work.mkdir()
    texts = sentences(12, start=40)
    (work / "reviews.txt").write_text("\n".join(texts[:6]) + "\n")
    (work / "article.txt").write_text(" ".join(texts[:6]) + "\n")
    (work / "articles.txt").write_text("\n".join(" ".join(texts[i:i + 3]) for i in range(0, 9, 3)) + "\n")
    (work / "questions.jsonl").write_text("".join(
        json.dumps({"question": "What is described here?", "context": t}) + "\n" for t in texts[6:9]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(6)), "text": texts[6:12]}), work / "reviews.parquet")

    hub = HubServer().start()
    servers = []
    with pytest.MonkeyPatch.context() as mp:
        use_hub(mp, hub, root / "hf" / "hub")
        docs_hub.serve(hub, folders)
        mp.chdir(work)
        import lightpipe.server

        def serve_in_thread(models, host="127.0.0.1", port=8000, log_level="info", threads=None, **settings):
            """What `lightpipe serve` runs, on a free port and in a thread instead of the foreground."""
            running = lightpipe.server.start_in_thread(lightpipe.server.create_app(models, **settings), host=host)
            servers.append(running)
            wait_healthy(running.url)

        mp.setattr(lightpipe.server, "serve", serve_in_thread)
        pages: dict[str, Page] = {}
        yield pages, servers
    for running in servers:
        running.__exit__(None, None, None)
    hub.stop()


def wait_healthy(url: str, seconds: float = 120) -> None:
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if httpx.get(url + "/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server at {url} never became healthy: {httpx.get(url + '/info').text}")


@pytest.fixture
def clients_online(monkeypatch):
    """The openai and huggingface_hub clients talk to the local server even if offline mode is set."""
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()


# -- running ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sample", samples())
def test_sample_runs(sample, docs_world, capsys, clients_online):
    pages, servers = docs_world
    page = pages.setdefault(sample.page, Page())
    if sample.lang == "command":
        run_command(sample, page, servers, capsys)
    else:
        run_python(sample, page)


def run_command(sample: Sample, page: Page, servers: list, capsys) -> None:
    from lightpipe.cli import main

    argv = bash_words(sample.code[len("lightpipe "):])
    before = len(servers)
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 0, f"{sample.where}: `{sample.code}` exited {code}:\n{err[-2000:]}"
    if argv[0] == "serve":
        assert len(servers) == before + 1, f"{sample.where}: `{sample.code}` started no server"
        page.server_url = servers[-1].url
    elif argv[0] == "run" and "--output" not in argv and argv[1] != "text-generation":
        json.loads(out) if "--input" not in argv else [json.loads(line) for line in out.splitlines()]


def bash_words(text: str) -> list[str]:
    """The words bash makes of `text` (quotes, `$(...)`), in the working directory."""
    proc = subprocess.run(["bash", "-c", "printf '%s\\0' " + text], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\0")[:-1]


def run_python(sample: Sample, page: Page) -> None:
    code = sample.code
    if code.startswith(ILLUSTRATIVE):
        reason = code.splitlines()[0][len(ILLUSTRATIVE):].strip()
        assert len(reason) > 10, f"{sample.where}: say why the block is illustrative only"
        compile(code, sample.where, "exec")
        return
    if SERVER_URL in code:
        assert page.server_url, f"{sample.where}: needs the server that the page's `lightpipe serve` starts, before it"
        code = code.replace("http://" + SERVER_URL, page.server_url)
    tree = ast.parse(code, sample.where)
    expected = expected_outputs(code, tree)
    checked = []

    def check(line, value):
        checked.append(line)
        assert_shape(value, expected[line], f"{sample.page}:{sample.line + line - 1}")
        return value

    tree.body = [wrap(stmt, expected) for stmt in tree.body]
    ast.fix_missing_locations(tree)
    ast.increment_lineno(tree, sample.line - 1)  # tracebacks point into the page
    page.namespace["__docs_check__"] = check
    exec(compile(tree, sample.page, "exec"), page.namespace)
    assert sorted(checked) == sorted(expected)


def wrap(stmt: ast.stmt, expected: dict) -> ast.stmt:
    """`expr` → `__docs_check__(line, expr)` for the expressions whose output is spelled out."""
    if isinstance(stmt, ast.Expr) and stmt.end_lineno in expected:
        call = ast.Call(ast.Name("__docs_check__", ast.Load()), [ast.Constant(stmt.end_lineno), stmt.value], [])
        return ast.copy_location(ast.Expr(ast.copy_location(call, stmt)), stmt)
    return stmt


def expected_outputs(code: str, tree: ast.Module) -> dict[int, object]:
    """{line of an expression statement: the literal its comment shows} — the comment on the
    statement's last line, or else the comment lines right under it."""
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(code).readline) if tok.type == tokenize.COMMENT}
    lines = code.splitlines()
    found = {}
    for stmt in tree.body:
        if not isinstance(stmt, ast.Expr):
            continue
        end = stmt.end_lineno
        candidates = [comments.get(end)]
        following, n = [], end + 1
        while n <= len(lines) and lines[n - 1].lstrip().startswith("#"):
            following.append(comments[n])
            n += 1
        candidates.append(" ".join(following))
        for text in candidates:
            if text:
                try:
                    found[end] = ast.literal_eval(text)
                    break
                except (ValueError, SyntaxError):
                    continue
    return found


def assert_shape(value, expected, where: str, path: str = "result") -> None:
    """`value` has the shape the literal `expected` shows: containers and their keys, value types.
    A list's elements are compared with the literal's first (their number is the model's)."""
    if expected is Ellipsis:
        return
    if isinstance(expected, dict):
        assert isinstance(value, dict), f"{where}: {path} is a {type(value).__name__}, the docs show a dict"
        assert set(value) == set(expected), f"{where}: {path} has keys {sorted(value)}, the docs show {sorted(expected)}"
        for key in expected:
            assert_shape(value[key], expected[key], where, f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(value, list), f"{where}: {path} is a {type(value).__name__}, the docs show a list"
        if expected and value:
            for i, item in enumerate(value):
                assert_shape(item, expected[0], where, f"{path}[{i}]")
    elif isinstance(expected, bool) or expected is None:
        assert value is expected or type(value) is type(expected), f"{where}: {path} is {value!r}, the docs show {expected!r}"
    elif isinstance(expected, (int, float, str)):
        kinds = (int, float) if isinstance(expected, float) else type(expected)
        assert isinstance(value, kinds) and not isinstance(value, bool), \
            f"{where}: {path} is {value!r} ({type(value).__name__}), the docs show a {type(expected).__name__}"


# -- the pages' other promises -----------------------------------------------------------------

def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.unit
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_reach_their_pages_and_anchors(page):
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        dest = (page.parent / target).resolve() if target else page
        assert dest.exists(), f"{page.name} links to {target}, which doesn't exist"
        if anchor:
            assert anchor in anchors(dest), f"{page.name} links to {target}#{anchor}: no such heading"


@pytest.mark.unit
def test_readme_starts_with_the_two_commands():
    first = blocks(ROOT / "README.md")[0]
    commands_ = [line.split("#")[0].strip() for line in first.code.splitlines() if line.split("#")[0].strip()]
    assert commands_ == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.unit
def test_make_targets_and_benchmarks_named_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    texts = [page.read_text() for page in PAGES] + [makefile]
    for text in texts:
        named = re.findall(r"`make ([\w-]+)", text) + re.findall(r"^\s*make ([\w-]+)", text, flags=re.M)
        for target in named:
            assert target in targets, f"`make {target}` is named but the Makefile has no such target"
        for script, flags in re.findall(r"benchmarks/(\w+\.py)((?: +--[\w-]+(?:[ =][^\s`-][^\s`]*)?)*)", text):
            source = ROOT / "benchmarks" / script
            assert source.is_file(), f"benchmarks/{script} is named but doesn't exist"
            for flag in re.findall(r"--[\w-]+", flags):
                assert f'"{flag}"' in source.read_text(), f"benchmarks/{script} has no {flag} flag"
