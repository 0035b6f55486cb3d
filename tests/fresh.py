"""Run lightpipe as a user does: a fresh interpreter of this venv in which `transformers` and
`sentence_transformers` can't be imported.

The rest of the suite imports transformers (fixtures, references), and transformers imports
modules lightpipe may have forgotten to import itself (`jinja2.ext` was one): such bugs pass
in-process and fail for users. A child started here gets a `sitecustomize.py` (found through
PYTHONPATH, so it covers `python -c`, `python -m`, console scripts and servers alike) that

- puts a finder first on `sys.meta_path` that refuses both packages, as if they weren't
  installed, and records every attempt with its stack (a caught ImportError can't hide one);
- at exit writes {"loaded": [...], "attempts": [...]} to $LIGHTPIPE_FRESH_REPORT.

(It shadows any other sitecustomize on the path; this venv has none.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

BLOCKED = ("transformers", "sentence_transformers")
REPORT_VAR = "LIGHTPIPE_FRESH_REPORT"

SITECUSTOMIZE = f'''\
"""Written by tests/fresh.py: this interpreter runs without {" and ".join(BLOCKED)}."""
import atexit
import json
import os
import sys
import traceback

_BLOCKED = {set(BLOCKED)!r}
_attempts = []


class _RefuseBlocked:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            _attempts.append({{"module": name, "stack": "".join(traceback.format_stack()[:-1][-12:])}})
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked in this fresh-process test: "
                                      "lightpipe must not need it)", name=name)
        return None


sys.meta_path.insert(0, _RefuseBlocked)


@atexit.register
def _report():
    path = os.environ.get({REPORT_VAR!r})
    if path:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in _BLOCKED)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({{"loaded": loaded, "attempts": _attempts}}, f)
'''


class Fresh:
    """Where children get their blocker, their (empty, offline) HF cache and their reports."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.site = self.root / "site"
        self.site.mkdir(parents=True, exist_ok=True)
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        self.hf_home = self.root / "hf"  # empty: the embedded MiniLM is what resolves, with no network
        self.hf_home.mkdir(exist_ok=True)
        self.reports = 0

    def env(self, report: Path, **extra) -> dict:
        """The parent's environment, the blocker first on PYTHONPATH (the parent's entries kept,
        so the child runs this tree's src), offline, one torch thread like the parent's."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
        env.update(HF_HOME=str(self.hf_home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   PYTHONIOENCODING="utf-8", **{REPORT_VAR: str(report)})
        for name in ("HF_HUB_CACHE", "HF_ENDPOINT", "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME"):
            env.pop(name, None)
        env.update(extra)
        return env

    def new_report(self, name: str) -> Path:
        self.reports += 1
        path = self.root / f"report-{self.reports}-{name}.json"
        path.unlink(missing_ok=True)
        return path

    def run(self, args: list, name: str, timeout: float = 300, env: dict | None = None
            ) -> tuple[subprocess.CompletedProcess, Path]:
        """Run `args` (a command line) in a fresh child (`env`: variables to change); returns the
        finished process and its report's path."""
        report = self.new_report(name)
        proc = subprocess.run([str(a) for a in args], env=self.env(report, **(env or {})), capture_output=True,
                              text=True, encoding="utf-8", timeout=timeout)
        return proc, report


def lightpipe_command() -> list[str]:
    """The venv's `lightpipe` console script (what users type), else `python -m lightpipe.cli`."""
    script = Path(sys.executable).with_name("lightpipe")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lightpipe.cli"]


def assert_clean(report: Path, what: str, output: str = "") -> None:
    """The child exited through atexit and never imported (nor tried to import) a blocked package."""
    assert report.is_file(), f"{what}: the child wrote no import report (did it exit abnormally?)\n{output[-3000:]}"
    data = json.loads(report.read_text(encoding="utf-8"))
    attempts = "\n".join(f"--- import {a['module']}\n{a['stack']}" for a in data["attempts"])
    assert not data["loaded"] and not data["attempts"], (
        f"{what}: the fresh process imported {data['loaded']} / tried {len(data['attempts'])} times:\n{attempts}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
