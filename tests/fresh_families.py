"""One family's course encoder tasks through `from lightpipe import pipeline`, for the
fresh-process check of tests/test_encoder_families.py.

Run as a script in a child without transformers (`python fresh_families.py FOLDERS.json
RESULTS.json`, FOLDERS mapping roles — cls, ner, qa, mlm, st, nli — to checkpoint folders), and
called in the test process as the reference. Only lightpipe is imported here.
"""

from __future__ import annotations

import fresh_script
from lightpipe import pipeline

TEXTS = ["The assert statement is a convenient way to insert debugging assertions into a program.",
         "Python lists are mutable sequences, typically used to store collections of items."]


def checks(folders: dict) -> dict:
    """{task: its output} (or {task: {"error": traceback}}), each task on its checkpoint."""
    mlm = pipeline("fill-mask", model=folders["mlm"])
    calls = {
        "text-classification": lambda: pipeline("text-classification", model=folders["cls"])(TEXTS, top_k=None),
        "token-classification": lambda: pipeline("ner", model=folders["ner"])(TEXTS, aggregation_strategy="simple"),
        "question-answering": lambda: pipeline("question-answering", model=folders["qa"])(
            question="What are lists used for?", context=TEXTS[1], top_k=2),
        "fill-mask": lambda: mlm(f"Python lists are {mlm.tokenizer.mask_token} sequences.", top_k=3),
        "feature-extraction": lambda: pipeline("feature-extraction", model=folders["st"])(TEXTS, pooling="auto"),
        "zero-shot-classification": lambda: pipeline("zero-shot-classification", model=folders["nli"])(
            TEXTS[0], candidate_labels=["programming", "cooking", "politics"]),
    }
    return fresh_script.run_calls(calls)


if __name__ == "__main__":
    fresh_script.main(checks)
