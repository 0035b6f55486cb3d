"""Ray Data: run a lightpipe pipeline over a dataset on one machine or a cluster.

    import ray
    from lightpipe.integrations.ray import PipelinePredictor

    ds = ray.data.read_parquet("reviews/")
    scored = ds.map_batches(PipelinePredictor, fn_constructor_kwargs={"task": "sentiment-analysis", "model": "..."},
                            concurrency=4, batch_size=256)

Ray starts `concurrency` actors; each loads the pipeline once and is handed batches. Results
come back as columns added to the batch, flattened as for files (`lightpipe.fileio.flatten_result`):
`label`, `score`; `labels`/`scores` lists; `entities`, `predictions` lists of structs; and pooled
embeddings as a (N, D) float32 array, which Ray stores as a fixed-shape tensor column.

`num_gpus=1` in `map_batches` gives each actor a GPU and the pipeline runs on it (`cuda`);
with `num_cpus=k` torch uses k threads. This module imports ray only inside a Ray worker's
calls; `import lightpipe` never does.
"""

from __future__ import annotations

import numpy as np

from ..rows import Columns, flatten_result, one_per_input, row_input


class PipelinePredictor:
    """A callable class for `Dataset.map_batches`.

    task, model and `pipeline_kwargs` (revision, dtype, batch_size, device, ...) build the pipeline
    once per actor; `column` names the text column (`pair_column` a second text of a pair,
    `question_column`/`context_column` for question-answering); `options` are the task's call
    keywords (top_k, candidate_labels, pooling, truncation, ...)."""

    def __init__(self, task: str, model: str | None = None, column: str = "text", *, pair_column: str | None = None,
                 question_column: str | None = None, context_column: str | None = None,
                 options: dict | None = None, **pipeline_kwargs):
        from .. import pipeline

        threads = ray_cpus()
        if threads:
            import torch

            torch.set_num_threads(threads)  # the actor's num_cpus, not every core of the node
        if pipeline_kwargs.get("device") is None:
            pipeline_kwargs["device"] = ray_device()
        self.pipe = pipeline(task, model=model, **pipeline_kwargs)
        self.task = getattr(self.pipe, "task", task)
        self.columns = Columns(column, pair_column, question_column, context_column)
        self.options = dict(options or {})

    def __call__(self, batch):
        kind = batch_kind(batch)
        n = len(batch) if kind != "dict" else len(next(iter(batch.values()), []))
        needed = [c for c in vars(self.columns).values() if c is not None]
        if self.task == "question-answering":
            needed += [c for c in ("question", "context") if c not in needed]
        names = column_names(batch, kind)
        missing = [c for c in needed if c not in names]
        if missing:
            raise KeyError(f"batch has no column {missing[0]!r} (columns: {', '.join(names)}); "
                           f"pass column=... in fn_constructor_kwargs")
        values = {c: to_list(batch[c], kind) for c in needed}
        inputs = [row_input({c: values[c][i] for c in needed}, i + 1, self.task, self.columns) for i in range(n)]
        results = one_per_input(self.task, inputs, self.pipe(inputs, **self.options)) if inputs else []
        flat = [flatten_result(self.task, r) for r in results]
        names = list(dict.fromkeys(k for f in flat for k in f))
        out = {name: to_array(name, [f.get(name) for f in flat]) for name in names}
        if kind == "pandas":
            batch = batch.copy(deep=False)
            for name, array in out.items():
                batch[name] = list(array) if array.ndim > 1 else array
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
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]


def to_array(name: str, values: list) -> np.ndarray:
    """A result column as numpy: pooled embeddings (N, D) float32 (a fixed-shape tensor column in
    Arrow), per-token embeddings an object array of float32 arrays, scalars a plain array,
    anything else (lists, dicts) an object array of Python values (list / struct columns)."""
    if name == "embedding":
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


def arrow_array(pa, array: np.ndarray):
    if array.ndim == 2 and array.dtype == np.float32:
        return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])
    if array.dtype == object:
        return pa.array([a.tolist() if isinstance(a, np.ndarray) else a for a in array])
    return pa.array(array)


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
