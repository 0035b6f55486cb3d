"""Text generation throughput, lightpipe vs transformers 4.57.6, in one process, on a
GPT-2-small-size checkpoint with random weights (speed doesn't depend on weight values).

    python benchmarks/generation.py [--new-tokens 64]

Rows: one prompt greedy (tokens/s); 8 prompts decoded together vs the transformers pipeline's
default one-at-a-time; weight-only int8 vs float32. Every run generates exactly
`--new-tokens` tokens (min = max), so the work is the same on both sides.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import bpe_tokenizer, sentences  # noqa: E402


def gpt2_small(folder: Path | None = None, **config) -> Path:
    """A GPT-2-small-shaped checkpoint with random weights, in `folder` (default: a new temporary one);
    `config` overrides GPT2Config's fields (n_layer=2: a quick check's smaller model)."""
    import transformers

    folder = Path(folder or tempfile.mkdtemp(prefix="lp-bench-gpt2-"))
    tokenizer = bpe_tokenizer(folder, "gpt2", vocab_size=2000)
    config = transformers.GPT2Config(vocab_size=50257, bos_token_id=tokenizer.eos_token_id,
                                     eos_token_id=tokenizer.eos_token_id, **config)  # 12 layers x 768: GPT-2 small
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def best_of(fn, repeat=2):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    import transformers

    from lightpipe import pipeline

    n = args.new_tokens
    folder = gpt2_small()
    fixed = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n)
    ours = pipeline("text-generation", model=folder)
    theirs = transformers.pipeline("text-generation", model=str(folder))
    prompt = "In this course, we will teach you how to"
    prompts = [s for s in sentences(40) if 20 < len(s) < 120][:8]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GPT-2 small (124M), random weights, "
          f"{n} new tokens per sequence")
    ours(prompt, **dict(fixed, max_new_tokens=4, min_new_tokens=4)), theirs(prompt, **dict(fixed, max_new_tokens=4, min_new_tokens=4))

    t_theirs = best_of(lambda: theirs(prompt, **fixed))
    t_ours = best_of(lambda: ours(prompt, **fixed))
    print(f"  one prompt, greedy      transformers {n / t_theirs:6.1f} tok/s   lightpipe {n / t_ours:6.1f} tok/s   "
          f"{t_theirs / t_ours:4.2f}x")

    t_theirs8 = best_of(lambda: theirs(prompts, **fixed), repeat=1)
    t_ours8 = best_of(lambda: ours(prompts, **fixed), repeat=1)
    total = n * len(prompts)
    print(f"  8 prompts               transformers {total / t_theirs8:6.1f} tok/s   lightpipe {total / t_ours8:6.1f} tok/s   "
          f"{t_theirs8 / t_ours8:4.2f}x  (transformers: its default, one prompt at a time)")

    int8 = pipeline("text-generation", model=folder, quantize="int8")
    int8(prompt, **dict(fixed, max_new_tokens=4, min_new_tokens=4))
    t_int8 = best_of(lambda: int8(prompt, **fixed))
    print(f"  int8 vs float32         float32 {n / t_ours:6.1f} tok/s   int8 {n / t_int8:6.1f} tok/s   "
          f"{t_ours / t_int8:4.2f}x")


if __name__ == "__main__":
    main()
