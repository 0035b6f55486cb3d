"""Rows in, columns out: how a table row becomes a pipeline input and how a pipeline result
becomes columns — the same rules for files (`fileio`) and Ray Data (`integrations.ray`)."""

from __future__ import annotations

from dataclasses import dataclass

GENERATION_KEYS = {"text-generation": "generated_text", "text2text-generation": "generated_text",
                   "summarization": "summary_text", "translation": "translation_text"}
LIST_COLUMNS = {"token-classification": "entities", "fill-mask": "predictions", "question-answering": "answers",
                "feature-extraction": "embedding", "sentence-similarity": "scores"}


# -- rows → pipeline inputs ---------------------------------------------------------------

@dataclass
class Columns:
    """Which input columns feed the pipeline. None means the default: "text" (with
    "text_pair" when a row has one), "question"/"context" for question-answering."""
    text: str | None = None
    pair: str | None = None
    question: str | None = None
    context: str | None = None


def canonical_task(task: str) -> str:
    from .tasks import ALIASES

    return ALIASES.get(task, task)


def base_task(task: str) -> str:
    return "translation" if task.startswith("translation") else task


def row_input(row: dict, number: int, task: str, cols: Columns):
    """One row → the pipeline's input for `task`. `number` (1-based) names the row in errors."""
    task = base_task(task)
    if task == "question-answering":
        return {"question": _field(row, cols.question or "question", number, "--question-column"),
                "context": _field(row, cols.context or "context", number, "--context-column")}
    if task == "sentence-similarity" and not cols.text:
        if "source_sentence" in row and "sentences" in row:
            return {"source_sentence": row["source_sentence"], "sentences": row["sentences"]}
        raise ValueError(f"row {number}: sentence-similarity rows need 'source_sentence' and 'sentences' "
                         f"(a JSON lines object), got columns {sorted(row)}")
    text = _field(row, cols.text or "text", number, "--column")
    pair = cols.pair or ("text_pair" if cols.text is None and row.get("text_pair") is not None else None)
    if pair:
        return {"text": text, "text_pair": _field(row, pair, number, "--pair-column")}
    return text


def _field(row: dict, name: str, number: int, flag: str):
    if name not in row:
        raise ValueError(f"row {number}: no column {name!r} (columns: {', '.join(map(str, row))}); pick one with {flag}")
    value = row[name]
    if value is None:
        raise ValueError(f"row {number}: column {name!r} is empty (null)")
    return value


# -- results → columns --------------------------------------------------------------------

# tasks that answer a list of one input with that input's bare result, as transformers does
UNWRAPS_LIST_OF_ONE = {"question-answering", "fill-mask"}


def one_per_input(task: str, inputs: list, results) -> list:
    """`pipe(inputs)`'s results as a list with one result per input."""
    if len(inputs) == 1 and base_task(task) in UNWRAPS_LIST_OF_ONE:
        return [results]
    return results


def flatten_result(task: str, result) -> dict:
    """One result → {column: value}, the same columns for every row of a run:

    - a dict of values becomes its keys: text-classification `label`, `score`; question-answering
      `score`, `start`, `end`, `answer`; zero-shot `labels`, `scores` (its `sequence` is the input)
    - text-classification with top_k (a list): `labels`, `scores`, best first
    - generation: `generated_text` / `summary_text` / `translation_text` (a list of them with
      num_return_sequences > 1)
    - lists: token-classification `entities`, fill-mask `predictions`, question-answering with
      top_k `answers`, feature-extraction `embedding`, sentence-similarity `scores`
    - anything else: `result`
    """
    task = base_task(task)
    if task in GENERATION_KEYS and isinstance(result, list) and all(isinstance(r, dict) and len(r) == 1 for r in result):
        key = GENERATION_KEYS[task]
        values = [next(iter(r.values())) for r in result]
        return {key: values[0] if len(values) == 1 else values}
    if task == "zero-shot-classification" and isinstance(result, dict):
        return {k: v for k, v in result.items() if k != "sequence"}
    if isinstance(result, dict):
        return dict(result)
    if task == "text-classification" and isinstance(result, list) and all(isinstance(r, dict) for r in result):
        return {"labels": [r["label"] for r in result], "scores": [r["score"] for r in result]}
    if task in LIST_COLUMNS and isinstance(result, list):
        return {LIST_COLUMNS[task]: result}
    return {"result": result}
