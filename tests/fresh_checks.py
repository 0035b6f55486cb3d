"""Every course task through `from lightpipe import pipeline`, as one list of named checks.

The fresh-process tier runs this file as a script in a child without transformers
(`python fresh_checks.py FOLDERS.json RESULTS.json`) and calls the same checks in-process in
the test process as the reference, so each check's output is compared, not just its survival.
Only lightpipe is imported here: never transformers, never the fixture builders.
"""

from __future__ import annotations

import json
import sys
import traceback

from lightpipe import pipeline

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["The assert statement is a convenient way to insert debugging assertions into a program.",
         "Python lists are mutable sequences, typically used to store collections of items.",
         "A class creates a new local namespace where all its attributes are defined."]
QUESTION = {"question": "What are lists used for?", "context": TEXTS[1]}
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain assert statements."}]
GREEDY = {"do_sample": False, "max_new_tokens": 8}


class Checks:
    """The checks over one set of checkpoint folders, pipelines built once each."""

    def __init__(self, folders: dict):
        self.folders = folders
        self.pipes: dict = {}

    def pipe(self, task, model=None, **kwargs):
        key = (task, model, *sorted(kwargs.items()))
        if key not in self.pipes:
            self.pipes[key] = pipeline(task, model=self.folders.get(model, model), **kwargs)
        return self.pipes[key]

    def run(self, name: str):
        return getattr(self, "check_" + name.replace("-", "_").replace("/", "__"))()

    # -- encoders ----------------------------------------------------------------------------

    def check_feature_extraction__pooled(self):  # the task's default: the embedded MiniLM
        return self.pipe("feature-extraction")(TEXTS, pooling="auto", normalize=True)

    def check_feature_extraction__per_token(self):
        return self.pipe("feature-extraction", MINILM)(TEXTS[0])

    def check_sentence_similarity(self):
        return self.pipe("sentence-similarity")({"source_sentence": TEXTS[0], "sentences": TEXTS[1:]})

    def check_text_classification(self):
        pipe = self.pipe("text-classification", "cls")
        return [pipe(TEXTS, top_k=None), pipe({"text": TEXTS[0], "text_pair": TEXTS[1]})]

    def check_text_classification__int8(self):
        return self.pipe("text-classification", "cls", quantize="int8")(TEXTS, top_k=None)

    def check_fill_mask(self):
        return self.pipe("fill-mask", "mlm")(["Python lists are <mask> sequences.", "A <mask> creates a namespace."],
                                             top_k=3)

    def check_token_classification(self):
        return [self.pipe("ner", "ner")(TEXTS[2]),
                self.pipe("token-classification", "ner")(TEXTS[:2], aggregation_strategy="simple")]

    def check_question_answering(self):
        pipe = self.pipe("question-answering", "qa")
        return [pipe(**QUESTION), pipe(**QUESTION, top_k=2)]

    def check_zero_shot_classification__nli(self):
        pipe = self.pipe("zero-shot-classification", "nli")
        labels = ["programming", "cooking", "politics"]
        return [pipe(TEXTS[0], candidate_labels=labels), pipe(TEXTS[1:], candidate_labels=labels, multi_label=True)]

    def check_zero_shot_classification__deberta_v3(self):
        """A DeBERTa-v3 NLI model (the most-used zero-shot family) whose tokenizer is spm.model alone."""
        return self.pipe("zero-shot-classification", "deberta")(TEXTS[:2], candidate_labels=["programming", "cooking"])

    def check_fill_mask__albert(self):
        """ALBERT with its spiece.model converted (no tokenizer.json)."""
        return self.pipe("fill-mask", "albert")(["Python lists are [MASK] sequences.", "A [MASK] creates a namespace."],
                                                top_k=3)

    def check_zero_shot_classification__embedding(self):
        return self.pipe("zero-shot-classification", MINILM)(TEXTS[0], candidate_labels=["programming", "cooking"])

    # -- generation --------------------------------------------------------------------------

    def check_text_generation__prompt(self):
        return self.pipe("text-generation", "chat")([TEXTS[0], "A class"], **GREEDY)

    def check_text_generation__chat(self):
        return self.pipe("text-generation", "chat")(CHAT, **GREEDY)

    def check_text_generation__stream_prompt(self):
        return list(self.pipe("text-generation", "chat").stream("A class", **GREEDY))

    def check_text_generation__stream_chat(self):
        return list(self.pipe("text-generation", "chat").stream(CHAT, **GREEDY))

    def check_text_generation__refused_chat(self):
        """A template's raise_exception is the caller's bad input: a ValueError with its message."""
        try:
            self.pipe("text-generation", "chat")(CHAT + [{"role": "tool", "content": "42"}], **GREEDY)
        except ValueError as e:
            return str(e)
        raise AssertionError("the chat template accepted a tool message")

    def check_text_generation__ctranslate2(self):
        """backend="ctranslate2": a CTranslate2 Generator built from the loaded weights, called and streamed."""
        pipe = self.pipe("text-generation", "chat", backend="ctranslate2")
        return [pipe([TEXTS[0], "A class"], **GREEDY), list(pipe.stream("A class", **GREEDY))]

    def check_summarization(self):
        return self.pipe("summarization", "bart")(TEXTS[:2], max_new_tokens=8)

    def check_summarization__ctranslate2(self):  # a CTranslate2 Translator, the checkpoint's beams
        return self.pipe("summarization", "bart", backend="ctranslate2")(TEXTS[:2], max_new_tokens=8)

    def check_translation__t5(self):
        return self.pipe("translation_en_to_fr", "t5")("Python lists are mutable.", max_length=48)

    def check_translation__marian(self):
        return self.pipe("translation", "marian")(TEXTS[1:], max_new_tokens=8)

    def check_text2text_generation(self):
        return self.pipe("text2text-generation", "t5")("summarize: " + TEXTS[2])


NAMES = sorted(n[len("check_"):].replace("__", "/").replace("_", "-") for n in dir(Checks) if n.startswith("check_"))


def main(folders_json: str, results_json: str) -> None:
    """Run every check, recording each result or the error's traceback under the check's name."""
    import torch

    torch.set_num_threads(1)  # as the test process: same kernels, same floats
    with open(folders_json, encoding="utf-8") as f:
        checks = Checks(json.load(f))
    results = {}
    for name in NAMES:
        try:
            results[name] = {"result": checks.run(name)}
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    with open(results_json, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
