"""Ray Data: run a lightpipe pipeline over a dataset on one machine or a cluster.

    import ray
    from lightpipe.integrations.ray import PipelinePredictor

    ds = ray.data.read_parquet("reviews/")
    scored = ds.map_batches(PipelinePredictor, fn_constructor_kwargs={"task": "sentiment-analysis", "model": "..."},
                            concurrency=4, batch_size=256)

Ray starts `concurrency` actors; each loads the pipeline once and is handed batches. Results
come back as columns added to the batch, flattened as for files (the pipeline's `columns`):
`label`, `score`; `labels`/`scores` lists; `entities`, `predictions` lists of structs; and pooled
embeddings as a (N, D) float32 array, which Ray stores as a fixed-shape tensor column.

`num_gpus=1` in `map_batches` gives each actor a GPU and the pipeline runs on it (`cuda`);
with `num_cpus=k` torch uses k threads. This module imports ray only inside a Ray worker's
calls; `import lightpipe` never does.
"""

from __future__ import annotations

import numpy as np

from ..rows import ERROR, Columns, check_on_error, record_columns, run_batch


class PipelinePredictor:
    """A callable class for `Dataset.map_batches`.

    task, model and `pipeline_kwargs` (revision, dtype, batch_size, device, ...) build the pipeline
    once per actor; `column` names the text column (`pair_column` a second text of a pair,
    `question_column`/`context_column` for question-answering); `options` are the task's call
    keywords (top_k, candidate_labels, pooling, truncation, ...).

    A row that fails (a null or blank text, an input the pipeline refuses): `on_error="raise"`
    raises an error naming the row — by its `id_column` value when the batch has that column, else
    by the start of its text (a batch has no position in the whole dataset to name); "record" adds
    an `error` column (null for rows that succeeded) and gives a failed row null result columns (a
    NaN vector for a pooled embedding, which keeps the column a fixed-shape tensor)."""

    def __init__(self, task: str, model: str | None = None, column: str = "text", *, pair_column: str | None = None,
                 question_column: str | None = None, context_column: str | None = None,
                 options: dict | None = None, on_error: str = "raise", id_column: str = "id", **pipeline_kwargs):
        from .. import pipeline

        self.on_error, self.id_column = check_on_error(on_error), id_column
        threads = ray_cpus()
        if threads:
            import torch

            torch.set_num_threads(threads)  # the actor's num_cpus, not every core of the node
        if pipeline_kwargs.get("device") is None:
            pipeline_kwargs["device"] = ray_device()
        self.pipe = pipeline(task, model=model, **pipeline_kwargs)
        self.columns = Columns(column, pair_column, question_column, context_column)
        self.options = dict(options or {})
        self.known = {}  # result columns seen by this actor: a failed row gets them as nulls
        self.types = {}  # with on_error="record": each result column's Arrow type, for a column of nulls

    def __call__(self, batch):
        kind = batch_kind(batch)
        n = len(batch) if kind != "dict" else len(next(iter(batch.values()), []))
        needed = self.pipe.input_columns(self.columns)
        names = column_names(batch, kind)
        missing = [c for c in needed if c not in names]
        if missing:
            raise KeyError(f"batch has no column {missing[0]!r} (columns: {', '.join(names)}); "
                           f"pass column=... in fn_constructor_kwargs")
        values = {c: to_list(batch[c], kind) for c in needed}
        rows = [{c: values[c][i] for c in needed} for i in range(n)]
        ids = to_list(batch[self.id_column], kind) if self.id_column in names else None
        where = (lambda i: f"row {self.id_column}={ids[i]!r}") if ids is not None else (lambda i: f"row {preview(rows[i])}")
        results, errors = run_batch(self.pipe, rows, self.columns, self.options, self.on_error, where)
        flat = record_columns(self.pipe, results, errors, self.known, self.on_error == "record")
        if self.on_error == "record" and n and not self.known:
            raise RuntimeError(self.untyped(f"the first: {where(0)}: {errors[0]}"))
        names = list(dict.fromkeys(k for f in flat for k in f))
        vectors = self.pipe.vector_columns
        if self.on_error == "record":
            out = {name: self.record_array(name, [f.get(name) for f in flat], name in vectors) for name in names}
        else:
            out = {name: to_array([f.get(name) for f in flat], name in vectors) for name in names}
        if kind == "pandas":
            batch = batch.copy(deep=False)
            for name, array in out.items():
                batch[name] = pandas_column(array)
            return batch
        if kind == "arrow":
            import pyarrow as pa

            for name, array in out.items():
                arrow = arrow_array(pa, array)
                if name in batch.column_names:
                    batch = batch.set_column(batch.column_names.index(name), name, arrow)
                else:
                    batch = batch.append_column(name, arrow)
            return batch
        return {**batch, **out}

    def record_array(self, name: str, values: list, vector: bool):
        """A column of on_error="record" output, where failed rows hold None. Ray stores an all-null
        numpy column as Arrow's null type, which no other block's type can be cast to, so a column
        holding nulls is an Arrow array of the type this actor has seen for it (error: string)."""
        import pyarrow as pa

        if vector:
            good = [v for v in values if v is not None]
            shape = np.shape(good[0]) if good else self.types.get(name)
            if shape is None:
                raise RuntimeError(self.untyped(f"no {name!r} yet"))
            self.types[name] = shape
            return to_array([np.full(shape, np.nan, np.float32) if v is None else v for v in values], vector)
        if all(v is not None for v in values):
            array = to_array(values, vector)
            if name not in self.types:
                self.types[name] = arrow_array(pa, array).type
            return array
        if name == ERROR:
            return pa.array(values, pa.string())
        if all(v is None for v in values):
            if name not in self.types:
                raise RuntimeError(self.untyped(f"no {name!r} yet"))
            return pa.nulls(len(values), self.types[name])
        array = pa.array(values, self.types.get(name))
        self.types.setdefault(name, array.type)
        return array

    @staticmethod
    def untyped(detail: str) -> str:
        return (f"on_error='record': every row of a batch failed before this actor had any result ({detail}), so "
                "the failed rows' result columns have no names or types to give Ray Data (a block without them "
                "would drop them from the dataset); use a smaller batch_size, or fix the rows")


def batch_kind(batch) -> str:
    if isinstance(batch, dict):
        return "dict"
    module = type(batch).__module__
    if module.startswith("pandas"):
        return "pandas"
    if module.startswith("pyarrow"):
        return "arrow"
    raise TypeError(f"batch must be a dict of columns, a pandas DataFrame or a pyarrow Table, got {type(batch).__name__}")


def column_names(batch, kind: str) -> list:
    return list(batch.column_names) if kind == "arrow" else list(batch.keys() if kind == "dict" else batch.columns)


def to_list(column, kind: str) -> list:
    if kind == "arrow":
        return column.to_pylist()
    values = column.tolist() if hasattr(column, "tolist") else list(column)
    if kind == "pandas":  # pandas marks a missing value NaN (its str dtype) or pd.NA: as a null in Arrow, None
        import pandas as pd

        values = [None if not isinstance(v, (list, np.ndarray)) and pd.isna(v) else v for v in values]
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]


def to_array(values: list, vector: bool = False) -> np.ndarray:
    """A result column as numpy: a vector column (pooled embeddings) (N, D) float32 (a fixed-shape
    tensor column in Arrow), or an object array of float32 arrays when shapes differ (per-token
    embeddings); scalars a plain array; anything else (lists, dicts) an object array of Python
    values (list / struct columns)."""
    if vector:
        arrays = [np.asarray(v, dtype=np.float32) for v in values]
        if arrays and all(a.shape == arrays[0].shape for a in arrays):
            return np.stack(arrays)
        out = np.empty(len(arrays), dtype=object)
        out[:] = arrays
        return out
    if values and all(isinstance(v, (str, bool, int, float)) for v in values):
        if all(isinstance(v, str) for v in values):
            return np.array(values, dtype=object)
        return np.array(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def arrow_array(pa, array):
    if isinstance(array, (pa.Array, pa.ChunkedArray)):
        return array
    if array.ndim == 2 and array.dtype == np.float32:
        return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])
    if array.dtype == object:
        return pa.array([a.tolist() if isinstance(a, np.ndarray) else a for a in array])
    return pa.array(array)


def pandas_column(array):
    """A column for a pandas batch: rows of a 2-D array as a list; an Arrow array (a column that
    holds nulls, with on_error="record") as an Arrow-backed column, so its type survives."""
    if isinstance(array, np.ndarray):
        return list(array) if array.ndim > 1 else array
    import pandas as pd

    return pd.array(array.to_pylist(), dtype=pd.ArrowDtype(array.type))


def preview(row: dict, limit: int = 40) -> str:
    """A row's text, cut short, to name the row in an error."""
    text = " | ".join(str(v) for v in row.values())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def ray_device() -> str | None:
    """"cuda" when Ray gave this actor a GPU (Ray sets CUDA_VISIBLE_DEVICES to it), else None (CPU)."""
    ray = _ray_if_running()
    if ray is not None and ray.get_gpu_ids():
        return "cuda"
    return None


def ray_cpus() -> int | None:
    """The CPUs Ray assigned to this worker (None outside a Ray worker)."""
    ray = _ray_if_running()
    if ray is None:
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 — not in a task or actor
        return None
    return max(1, int(cpus)) if cpus else None


def _ray_if_running():
    import sys

    ray = sys.modules.get("ray")  # inside a Ray worker ray is already imported; elsewhere don't import it
    if ray is None or not ray.is_initialized():
        return None
    return ray
