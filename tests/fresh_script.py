"""What the fresh-process scripts (fresh_families.py, fresh_decoders.py, fresh_seq2seq.py)
share: running named calls with each failure kept as its traceback, and the command line
`python SCRIPT FOLDERS.json RESULTS.json` a child runs them with. Imports nothing but the
standard library (and torch, in the child), so the child's import report stays the script's own.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable


def run_calls(calls: dict[str, Callable]) -> dict:
    """{name: call()} — or {name: {"error": traceback}} for a call that raised, so one failure
    doesn't hide the others' results."""
    results = {}
    for name, call in calls.items():
        try:
            results[name] = call()
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    return results


def main(checks: Callable[[dict], dict]) -> None:
    """The child's entry point: `checks(folders)` from FOLDERS.json (argv[1]) into RESULTS.json (argv[2])."""
    import torch

    torch.set_num_threads(1)  # as the test process: same kernels, same floats
    folders_json, results_json = sys.argv[1:3]
    with open(folders_json, encoding="utf-8") as f:
        results = checks(json.load(f))
    with open(results_json, "w", encoding="utf-8") as f:
        json.dump(results, f)
