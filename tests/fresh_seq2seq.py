"""The issue-14 seq2seq families' tasks through `from lightpipe import pipeline`, for the
fresh-process check of tests/test_seq2seq_family_pipelines.py.

Run as a script in a child without transformers (`python fresh_seq2seq.py FOLDERS.json
RESULTS.json`, FOLDERS mapping each family to its checkpoint folder), and called in the test
process as the reference. Only lightpipe is imported here.
"""

from __future__ import annotations

import fresh_script
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
    return fresh_script.run_calls(calls)


if __name__ == "__main__":
    fresh_script.main(checks)
