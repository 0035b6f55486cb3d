"""The issue-14 seq2seq families' tasks through `from lightpipe import pipeline`, for the
fresh-process check of tests/test_seq2seq_family_pipelines.py.

Run as a script in a child without transformers (`python fresh_seq2seq.py FOLDERS.json
RESULTS.json`, FOLDERS mapping each family to its checkpoint folder), and called in the test
process as the reference. Only lightpipe is imported here.
"""

from __future__ import annotations

import json
import sys
import traceback

from lightpipe import pipeline

FAMILIES = {"nllb": "nllb", "m2m100": "m2m100", "pegasus": "pegasus", "mt5": "mt5"}
TEXTS = ["The assert statement is a convenient way to insert debugging assertions into a program.",
         "Python lists are mutable sequences, typically used to store collections of items."]
KW = dict(num_beams=2, max_new_tokens=8)


def checks(folders: dict) -> dict:
    """{family: its output} (or {family: {"error": traceback}})."""
    calls = {
        "nllb": lambda: pipeline("translation", model=folders["nllb"], src_lang="eng_Latn", tgt_lang="fra_Latn")(
            TEXTS, **KW),
        "m2m100": lambda: pipeline("translation", model=folders["m2m100"])(TEXTS, src_lang="en", tgt_lang="de", **KW),
        "pegasus": lambda: pipeline("summarization", model=folders["pegasus"])(TEXTS, **KW),
        "mt5": lambda: pipeline("text2text-generation", model=folders["mt5"])(TEXTS, **KW),
    }
    results = {}
    for family, call in calls.items():
        try:
            results[family] = call()
        except Exception:
            results[family] = {"error": traceback.format_exc()}
    return results


def main(folders_json: str, results_json: str) -> None:
    import torch

    torch.set_num_threads(1)  # as the test process: same kernels, same floats
    with open(folders_json, encoding="utf-8") as f:
        results = checks(json.load(f))
    with open(results_json, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
