"""Rows in, columns out, for files (`fileio`) and Ray Data (`integrations.ray`): reading a row's
columns, running a window of rows through `pipe.batch` with each failure told apart, and a
result's columns. What differs per task is asked of the pipeline's class (`row_input`,
`columns`): this module knows no task."""

from __future__ import annotations

from dataclasses import dataclass

# -- rows → pipeline inputs ---------------------------------------------------------------

@dataclass
class Columns:
    """Which input columns feed the pipeline. None means the task's default (the pipeline's
    `row_input`): "text" (with "text_pair" when a row has one), "question"/"context" for
    question-answering."""
    text: str | None = None
    pair: str | None = None
    question: str | None = None
    context: str | None = None


class MissingColumn(ValueError):
    """A row lacks a column the task reads (in a CSV or Parquet file every row then lacks it)."""


def column_value(row: dict, name: str, flag: str):
    if name not in row:
        raise MissingColumn(f"no column {name!r} (columns: {', '.join(map(str, row))}); pick one with {flag}")
    value = row[name]
    if value is None:
        raise ValueError(f"column {name!r} is empty (null)")
    return value


def column_text(row: dict, name: str, flag: str):
    """A column the task reads as its text: present, not null, not blank (a blank text would still be
    classified or embedded, giving a confident result for nothing)."""
    value = column_value(row, name, flag)
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"column {name!r} is blank")
    return value


class RowProblem(dict):
    """A row read with a problem that keeps it from running (a blank line, a line that isn't JSON):
    the columns that could be read, and why (`hint`: what to do, said when the run stops on it).
    It stays a row, so output row N still answers input row N."""

    def __init__(self, columns: dict, problem: str, hint: str = ""):
        super().__init__(columns)
        self.problem, self.hint = problem, hint


# -- running rows -------------------------------------------------------------------------

ON_ERROR = ("raise", "record")
ERROR = "error"  # the column that holds a failed row's error with on_error="record"


def check_on_error(on_error) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error (--on-error) must be 'raise' or 'record', got {on_error!r}")
    return on_error


def run_batch(pipe, rows: list[dict], columns: Columns, options: dict, on_error: str, where,
              missing_is_fatal: bool = True) -> tuple[list, list]:
    """(results, errors), one per row: a row's result (None if it failed) and its error message
    (None if it succeeded). With on_error="raise" the first failure raises instead, its message
    led by `where(i)`, the position of rows[i] in the whole input. A MissingColumn raises either
    way when `missing_is_fatal` (the rows share their columns, so every row lacks it)."""
    errors, inputs = [None] * len(rows), {}
    for i, row in enumerate(rows):
        try:
            if isinstance(row, RowProblem):
                raise ValueError(row.problem)
            inputs[i] = pipe.row_input(row, columns)
        except ValueError as e:
            if on_error == "raise" or (missing_is_fatal and isinstance(e, MissingColumn)):
                hint = f" ({row.hint})" if isinstance(row, RowProblem) and row.hint else ""
                raise ValueError(f"{where(i)}: {e}{hint}") from None
            errors[i] = describe_error(e)
    order = list(inputs)
    outcomes = run_rows(pipe, [inputs[i] for i in order], options, stop_at_error=on_error == "raise")
    results = [None] * len(rows)
    for i, outcome in zip(order, outcomes):
        if not isinstance(outcome, Exception):
            results[i] = outcome
        elif on_error == "raise":
            raise at_row(outcome, where(i))
        else:
            errors[i] = describe_error(outcome)
    return results, errors


def run_rows(pipe, inputs: list, options: dict, stop_at_error: bool = False) -> list:
    """`pipe`'s result for each input, or the exception it raised for that input. The inputs run
    as one batch; only if the batch fails are they re-run one at a time, so the failing inputs are
    told from the rest (as the server's batcher does) and the happy path costs nothing extra. With
    `stop_at_error` the one-at-a-time run ends at the first failure (the list is then shorter)."""
    if not inputs:
        return []
    try:
        return _call(pipe, inputs, options)
    except Exception as e:  # noqa: BLE001 — which input, if any, is to blame is found next
        if len(inputs) == 1:
            return [e]
    out = []
    for item in inputs:
        try:
            out.append(_call(pipe, [item], options)[0])
        except Exception as e:  # noqa: BLE001
            out.append(e)
            if stop_at_error:
                break
    return out


def _call(pipe, inputs: list, options: dict) -> list:
    results = pipe.batch(inputs, **options)
    if not isinstance(results, list) or len(results) != len(inputs):
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise RuntimeError(f"the pipeline returned {got} results for {len(inputs)} inputs")
    return results


def describe_error(e: BaseException) -> str:
    """An exception as one line for an `error` column: its type and message."""
    return f"{type(e).__name__}: {e}"


def at_row(e: Exception, where: str) -> Exception:
    """`e` with the row's position in front of its message, as the same type where it takes one.
    An input error (ValueError, TypeError) says all in its message; anything else keeps its cause."""
    message = f"{where}: {e}"
    try:
        new = type(e)(message)
        if str(new) != message:
            raise TypeError
    except Exception:  # noqa: BLE001 — a type that takes other arguments
        new = RuntimeError(f"{where}: {describe_error(e)}")
    new.__cause__ = None if isinstance(e, (ValueError, TypeError)) else e
    new.__suppress_context__ = True
    return new


def record_columns(pipe, results: list, errors: list, known: dict, record: bool) -> list[dict]:
    """Each row's result columns. With `record`, an `error` column too, and a failed row's result
    columns (those of `known`, which collects every result column seen so far) are nulls."""
    flat = [pipe.columns(r) if err is None else {} for r, err in zip(results, errors)]
    for f in flat:
        known.update(dict.fromkeys(f))
    if not record:
        return flat
    return [{**f, ERROR: None} if err is None else {**dict.fromkeys(known), ERROR: err} for f, err in zip(flat, errors)]
