"""Summarization throughput, lightpipe vs transformers 4.57.6, in one process on the same real
documents (paragraphs of Python's own docs, `pydoc_data.topics`).

    python benchmarks/summarization.py [--n 8] [--shape distilbart|bart-base] [--device cpu|cuda]

The checkpoint has sshleifer/distilbart-cnn-12-6's shape (12 encoder and 6 decoder layers,
width 1024, BART's 50265-token vocabulary) and its generation settings (4 beams, max_length
142, min_length 56, no_repeat_ngram_size 3, length_penalty 2.0, early_stopping), with random
weights: speed doesn't depend on weight values, except that random weights never pick eos, so
every summary runs the full 142 tokens. The tokenizer is a byte-level BPE trained on the same
docs, the documents 250-750 tokens (runs of paragraphs), as news articles. Both pipelines are
called the way a user calls them: the list of documents, defaults. The outputs are checked to
be the same text. About 12 minutes on a 2-core CPU, mostly transformers' one-document-at-a-time
run (`--shape bart-base` or a smaller `--n` for a quicker look).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import corpus  # noqa: E402

SHAPES = {
    # sshleifer/distilbart-cnn-12-6
    "distilbart": dict(d_model=1024, encoder_layers=12, decoder_layers=6, encoder_attention_heads=16,
                       decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
    # facebook/bart-base
    "bart-base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
}
# distilbart-cnn-12-6's summarization settings
GENERATION = dict(num_beams=4, max_length=142, min_length=56, no_repeat_ngram_size=3, length_penalty=2.0,
                  early_stopping=True)


def documents(n: int) -> list[str]:
    """`n` real documents of about 250 to 750 tokens (news-article size, mixed in order): runs of
    consecutive paragraphs of the docs."""
    paragraphs = [p for p in corpus() if len(p) > 200]
    docs, i = [], 0
    for k in range(n):
        target = 1200 + (k * 7919) % 2400  # 1200-3600 characters, scattered
        doc = ""
        while len(doc) < target:
            doc = (doc + " " + paragraphs[i % len(paragraphs)]).strip()
            i += 1
        docs.append(doc)
    return docs


def checkpoint(shape: str) -> Path:
    """The random checkpoint, built once and kept in the temp folder for later runs."""
    import transformers
    from tokenizers.implementations import ByteLevelBPETokenizer

    folder = Path(tempfile.gettempdir()) / f"lightpipe-bench-summarization-{shape}"
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=8000, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tokenizer = transformers.BartTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                               model_max_length=1024)
    config = transformers.BartConfig(vocab_size=50265, max_position_embeddings=1024, **SHAPES[shape],
                                     pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                                     forced_bos_token_id=0, forced_eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(config).eval()
    model.generation_config.update(**GENERATION)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8, help="documents to summarize")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="distilbart")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference-batch-size", type=int, default=None,
                        help="also time transformers with this batch_size (its default is 1)")
    args = parser.parse_args()

    import transformers

    from lightpipe import pipeline

    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    docs = documents(args.n)
    folder = checkpoint(args.shape)
    ours = pipeline("summarization", model=folder, device=args.device)
    theirs = transformers.pipeline("summarization", model=str(folder), device=args.device)
    lengths = [len(e.ids) for e in ours.tokenizer.encode_batch(docs)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"summarization, {args.shape} shape (random weights), {len(docs)} documents of {min(lengths)}-"
          f"{max(lengths)} tokens, 4 beams, {GENERATION['max_length']} tokens each")
    ours(docs[:1]), theirs(docs[:1])  # warm-up

    t_theirs, expected = timed(lambda: theirs(docs))
    print(f"  {'transformers pipeline (batch_size=1, its default)':<52} {len(docs) / t_theirs:7.3f} docs/s")
    if args.reference_batch_size:
        t_batched, _ = timed(lambda: theirs(docs, batch_size=args.reference_batch_size))
        print(f"  {f'transformers pipeline (batch_size={args.reference_batch_size})':<52} "
              f"{len(docs) / t_batched:7.3f} docs/s  {t_theirs / t_batched:5.2f}x")
    t_ours, got = timed(lambda: ours(docs))
    print(f"  {'lightpipe':<52} {len(docs) / t_ours:7.3f} docs/s  {t_theirs / t_ours:5.2f}x")
    same = sum(a == b for a, b in zip(got, expected))
    print(f"  same summaries: {same}/{len(docs)}")


if __name__ == "__main__":
    main()
