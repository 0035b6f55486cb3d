"""The Hub ids the docs name, as tiny checkpoints for the fake Hub (tests/hubserver.py), so the
docs' samples run unchanged and offline (tests/test_docs.py).

Each stands in for the real checkpoint with the conventions a sample relies on: the task head
and its labels, the tokenizer kind (cased or not, `<mask>` or `[MASK]`), the position table,
generation settings, task_specific_params, a chat template, a language pair. Weights are
random: outputs have the real ones' shapes, not their values. The course's default models are
also served at the revisions lightpipe pins, as on the Hub. The embedded
sentence-transformers/all-MiniLM-L6-v2 is not here: it is the real one, from its package.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from tiny import (T5_TASKS, bart_checkpoint, bpe_tokenizer, causal_lm_checkpoint, encoder_checkpoint,
                  labels, marian_checkpoint, mbart50_checkpoint, qwen2_tokenizer, save_checkpoint, t5_checkpoint)
from tiny_seq2seq import nllb_checkpoint


SST2 = labels(["NEGATIVE", "POSITIVE"])
CONLL = labels(["O", "B-MISC", "I-MISC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"])
MNLI = labels(["contradiction", "neutral", "entailment"])


def update_json(path: Path, **values) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(values)
    path.write_text(json.dumps(data, indent=2))


def gpt2(folder: Path) -> Path:
    """GPT-2's 1024 positions and its task_specific_params (max_length 50, sampling)."""
    tok = bpe_tokenizer(folder, "gpt2")
    causal_lm_checkpoint(folder, "gpt2", tok, n_positions=1024,
                         task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}})
    update_json(folder / "tokenizer_config.json", model_max_length=1024)
    return folder


def qwen2_instruct(folder: Path) -> Path:
    """Qwen2-Instruct's tokenizer conventions and ChatML template, eos <|im_end|>."""
    tok = qwen2_tokenizer(folder)
    return causal_lm_checkpoint(folder, "qwen2", tok, max_position_embeddings=1024, tie_word_embeddings=True)


def bart_mnli(folder: Path) -> Path:
    """BartForSequenceClassification with bart-large-mnli's labels."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    bpe_tokenizer(folder, "roberta")
    tok = transformers.BartTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=1024)
    config = transformers.BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id, init_std=0.2, **MNLI)
    torch.manual_seed(0)
    return save_checkpoint(folder, transformers.BartForSequenceClassification(config).eval(), tok)


def distilbart_cnn(folder: Path) -> Path:
    """BART with 1024 positions and distilbart-cnn-12-6's summarization settings."""
    bart_checkpoint(folder, max_position_embeddings=1024,
                    generation=dict(num_beams=4, max_length=142, min_length=56, no_repeat_ngram_size=3,
                                    length_penalty=2.0, early_stopping=True))
    update_json(folder / "tokenizer_config.json", model_max_length=1024)
    return folder


# Hub id → builder(folder). distilgpt2 shares GPT-2's files.
BUILDERS = {
    "distilbert/distilbert-base-uncased-finetuned-sst-2-english":
        lambda f: encoder_checkpoint(f, "distilbert", "sequence-classification", **SST2),
    "facebook/bart-large-mnli": bart_mnli,
    "dbmdz/bert-large-cased-finetuned-conll03-english":
        lambda f: encoder_checkpoint(f, "bert", "token-classification", lowercase=False, **CONLL),
    "distilbert/distilbert-base-cased-distilled-squad":
        lambda f: encoder_checkpoint(f, "distilbert", "question-answering", lowercase=False),
    "distilbert/distilroberta-base": lambda f: encoder_checkpoint(f, "roberta", "masked-lm"),
    "openai-community/gpt2": gpt2,
    "sshleifer/distilbart-cnn-12-6": distilbart_cnn,
    "google-t5/t5-base": lambda f: t5_checkpoint(f, task_specific_params=T5_TASKS),
    "Helsinki-NLP/opus-mt-fr-en": lambda f: marian_checkpoint(f, source_lang="fr", target_lang="en"),
    "facebook/mbart-large-50-many-to-many-mmt": mbart50_checkpoint,
    "facebook/nllb-200-distilled-600M": nllb_checkpoint,
    "Qwen/Qwen2.5-0.5B-Instruct": qwen2_instruct,
}
SAME_FILES = {"distilbert/distilgpt2": "openai-community/gpt2"}


def build(root: Path) -> dict[str, Path]:
    """Every checkpoint, written under `root` (about half a minute): Hub id → folder."""
    folders = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for repo_id, builder in BUILDERS.items():
            folders[repo_id] = Path(builder(root / repo_id.replace("/", "--")))
    for repo_id, twin in SAME_FILES.items():
        folders[repo_id] = folders[twin]
    return folders


def serve(hub, folders: dict[str, Path]) -> None:
    """Add every checkpoint to `hub` on `main`, and the defaults at lightpipe's pinned revisions."""
    from lightpipe.tasks import TASKS

    for repo_id, folder in folders.items():
        hub.add(repo_id, folder)
    for task in TASKS.values():
        if task.default_revision and task.default_model in hub.repos:
            repo = hub.repos[task.default_model]
            repo.refs[task.default_revision] = repo.refs["main"]
