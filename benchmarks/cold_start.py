"""Cold start (issue 15, point 4): seconds from a fresh `python` to the first result of lightpipe's
sentiment and embedding pipelines, vs `python -c "import torch"` alone.

    python benchmarks/cold_start.py [--repeat 3] [--sentiment-model FOLDER]

(benchmarks/rivals.py runs it too, as its cold-start workload.) Each row is a fresh subprocess
with HF_HUB_OFFLINE=1, timed from outside: interpreter start, imports, load, first result, exit.
Every row runs once untimed first, so all of them read their files from the OS cache (a
restart, not a first install); then the best of --repeat. The sentiment model is a local
checkpoint shaped like the task's default (distilbert-base-uncased-finetuned-sst-2-english:
DistilBERT-base, 2 labels; random weights, from rivals.py's cache unless --sentiment-model);
the embedding model is the embedded all-MiniLM-L6-v2, named by its Hub id as a user would.
transformers' and sentence-transformers' cold starts on the same models are printed for
reference. Target: lightpipe within 0.5 s of `import torch`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXT = "I've been waiting for a course my whole life."


def programs(sentiment: Path, minilm: Path) -> list[tuple[str, str]]:
    """(row label, program) pairs; each program prints its first result."""
    return [
        ("python -c pass", "pass"),
        ("python -c 'import torch'", "import torch"),
        ("lightpipe sentiment-analysis", f"from lightpipe import pipeline\n"
                                         f"print(pipeline('sentiment-analysis', model={str(sentiment)!r})({TEXT!r}))"),
        ("lightpipe embeddings (MiniLM)", f"from lightpipe import pipeline\n"
                                          f"p = pipeline('feature-extraction', model={MINILM!r})\n"
                                          f"print(len(p({TEXT!r}, pooling='auto')))"),
        ("transformers sentiment-analysis", f"from transformers import pipeline\n"
                                            f"print(pipeline('sentiment-analysis', model={str(sentiment)!r})({TEXT!r}))"),
        ("sentence-transformers (MiniLM)", f"from sentence_transformers import SentenceTransformer\n"
                                           f"print(SentenceTransformer({str(minilm)!r}, device='cpu').encode([{TEXT!r}]).shape)"),
    ]


def fresh_run(program: str) -> float:
    """Wall seconds of `python -c program` in a new process (which must succeed)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return seconds


def cold_start(sentiment: Path, repeat: int = 3) -> dict[str, float | None]:
    """Print and return each row's best seconds (None where the program failed)."""
    from lightpipe.hub import resolve

    rows = programs(sentiment, resolve(MINILM))
    best: dict[str, float | None] = {}
    errors = {}
    for label, program in rows:  # untimed: fills the OS file cache
        try:
            fresh_run(program)
        except RuntimeError as e:
            errors[label] = str(e)
    for _ in range(repeat):
        for label, program in rows:
            if label not in errors:
                seconds = fresh_run(program)
                best[label] = min(best.get(label) or seconds, seconds)
    torch_alone = best.get("python -c 'import torch'")
    load = os.getloadavg()
    print(f"\ncold start, fresh process each, best of {repeat} (load average {load[0]:.2f}); "
          f"target: lightpipe within 0.5 s of import torch")
    for label, _ in rows:
        if label in errors:
            print(f"  {label:<34} {'–':>7}    failed: {errors[label][:100]}")
            best[label] = None
            continue
        extra = f"  {best[label] - torch_alone:+6.2f} s vs import torch" if torch_alone and "python -c" not in label else ""
        print(f"  {label:<34} {best[label]:6.2f} s{extra}")
    sys.stdout.flush()
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sentiment-model", type=Path, help="a DistilBERT sst-2-shaped folder (default: rivals.py's)")
    args = parser.parse_args()
    if args.sentiment_model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from rivals import CACHE, sst2_checkpoint

        CACHE.mkdir(parents=True, exist_ok=True)
        args.sentiment_model = sst2_checkpoint()
    cold_start(args.sentiment_model, args.repeat)


if __name__ == "__main__":
    main()
