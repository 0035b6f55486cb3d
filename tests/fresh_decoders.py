"""The issue-14 decoder families through `from lightpipe import pipeline`, for the fresh-process
check of tests/test_decoder_family_pipelines.py.

Run as a script in a child without transformers (`python fresh_decoders.py FOLDERS.json
RESULTS.json`, FOLDERS mapping names — qwen3, gemma2, gemma3_text, phi3, qwen3-embedding,
embeddinggemma — to checkpoint folders), and called in the test process as the reference. Only
lightpipe is imported here.
"""

from __future__ import annotations

import fresh_script
from lightpipe import pipeline

PROMPTS = ["The assert statement", "Python lists are mutable sequences, typically used to store"]
CHAT = [{"role": "user", "content": "Explain assert statements."}]
GREEDY = {"do_sample": False, "max_new_tokens": 8}
TEXTS = ["The assert statement is a convenient way to insert debugging assertions into a program.",
         "Python lists are mutable sequences."]


def generation(folder: str, chat_options: dict | None = None) -> dict:
    generate = pipeline("text-generation", model=folder)
    return {"prompts": generate(PROMPTS, **GREEDY),
            "beams": generate(PROMPTS[0], num_beams=3, num_return_sequences=2, **GREEDY),
            "chat": generate(CHAT, **GREEDY, **(chat_options or {})),
            "stream": "".join(generate.stream(CHAT, **GREEDY, **(chat_options or {})))}


def embedding(folder: str) -> dict:
    embed = pipeline("feature-extraction", model=folder)
    return {"documents": embed(TEXTS, pooling="auto"), "queries": embed(TEXTS, pooling="auto", prompt_name="query")}


CHECKS = {
    "qwen3": lambda f: generation(f, {"tokenizer_encode_kwargs": {"enable_thinking": False}}),
    "gemma2": generation,
    "gemma3_text": generation,
    "phi3": generation,
    "qwen3-embedding": embedding,
    "embeddinggemma": embedding,
}


def checks(folders: dict) -> dict:
    """{name: its outputs} (or {name: {"error": traceback}})."""
    return fresh_script.run_calls({name: lambda name=name, folder=folder: CHECKS[name](folder)
                                   for name, folder in folders.items()})


if __name__ == "__main__":
    fresh_script.main(checks)
