"""What every pipeline shares: input normalisation, streaming windows, and the length-sorted
batcher that makes encoder work fast.

A task pipeline turns each input item into one or more tokenized rows (`preprocess`), the
batcher runs all rows of a window through the model sorted by length and cut by a token
budget (`forward_rows`), and `postprocess` turns each item's row outputs into the task's
answer. Results come back in input order whatever order the batches ran in.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from tokenizers import Encoding

DEFAULT_MAX_BATCH_TOKENS = 8192  # padded tokens per forward pass: fits caches, amortises overhead
DEFAULT_MAX_BATCH_ROWS = 64
WINDOW_ITEMS = 512  # items read at a time from a stream: flat memory, still room to sort


class Pipeline:
    task: str = ""
    head: str = "base"  # which model head this task needs (see loading.ARCHITECTURE_HEADS)
    token_outputs = False  # forward returns per-token outputs (B, T, ...) to trim to each row's length

    def __init__(self, model, tokenizer, config: dict, *, model_id: str = "", device=None,
                 batch_size: int | None = None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 folder=None, allow_pickle: bool = False, **defaults):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_id = model_id
        self.folder = folder
        self.allow_pickle = allow_pickle  # for files read after loading (sentence-transformers' Dense weights)
        self.device = next(model.parameters()).device if device is None else torch.device(device)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_batch_tokens = check_positive_int(max_batch_tokens, "max_batch_tokens")
        self.defaults = self.check_options(defaults)
        params = inspect.signature(model.forward).parameters
        self._takes_token_types = "token_type_ids" in params
        self.id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @classmethod
    def head_for(cls, config: dict) -> str:
        """The model head to load for this task and checkpoint."""
        return cls.head

    @classmethod
    def load_tokenizer(cls, folder, config: dict):
        from ..tokenization import load

        return load(folder, config.get("model_type"))

    # -- the public call -----------------------------------------------------------------

    def __call__(self, inputs=None, **kwargs):
        options = {**self.defaults, **self.check_options(kwargs)}
        batch_size = check_positive_int(options.pop("batch_size", self.batch_size), "batch_size")
        if isinstance(inputs, (str, dict)) or self.is_single(inputs):
            return self.run([inputs], options, batch_size)[0]
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise ValueError("inputs is an empty list; pass at least one input")
            return self.run(list(inputs), options, batch_size)
        if isinstance(inputs, Iterable):
            return self.run_stream(iter(inputs), options, batch_size)
        raise TypeError(f"inputs must be a string, a list of strings or an iterable of them, got {type(inputs).__name__}")

    def is_single(self, inputs) -> bool:
        """Whether `inputs` is one item though it is a list (chat messages, say)."""
        return False

    def run_stream(self, items: Iterator, options: dict, batch_size) -> Iterator:
        """Results for an unbounded stream, read in windows so memory stays flat."""
        while window := list(itertools.islice(items, WINDOW_ITEMS)):
            yield from self.run(window, options, batch_size)

    def run(self, items: list, options: dict, batch_size=None) -> list:
        rows_per_item = self.preprocess_batch(items, **options)
        flat = [row for rows in rows_per_item for row in rows]
        outputs = iter(self.forward_rows(flat, batch_size, **options))
        return [self.postprocess(rows, [next(outputs) for _ in rows], **options) for rows in rows_per_item]

    # -- to write per task ---------------------------------------------------------------

    def check_options(self, options: dict) -> dict:
        """Validate call keywords; unknown keywords are an error (don't silently ignore)."""
        return options

    def preprocess(self, item, **options) -> list:
        raise NotImplementedError

    def preprocess_batch(self, items: list, **options) -> list[list]:
        """Rows for every item. Tasks whose items are plain texts override this to tokenize
        the whole window in one `encode_batch` call (parallel, in Rust)."""
        return [self.preprocess(item, **options) for item in items]

    def forward(self, batch: dict, **options):
        """The model on a collated batch (input_ids, attention_mask, and token_type_ids when
        the model takes them); tasks that need more than the model's output override this."""
        return self.model(**batch)

    def postprocess(self, rows: list, outputs: list, **options):
        raise NotImplementedError

    # -- the batcher ---------------------------------------------------------------------

    def forward_rows(self, rows: list, batch_size=None, **options) -> list:
        """Run tokenized rows (tokenizers.Encoding) through `self.forward` in length-sorted
        batches and return each row's outputs, in the rows' order.

        `forward` returns a tensor or a tuple of tensors whose first dim is the batch; with
        `token_outputs` they are (B, T, ...) and trimmed to each row's real length."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids), reverse=True)
        results: list = [None] * len(rows)
        max_rows = batch_size or DEFAULT_MAX_BATCH_ROWS
        start = 0
        with torch.inference_mode():
            while start < len(order):
                longest = len(rows[order[start]].ids)
                take = max(1, min(max_rows, self.max_batch_tokens // max(longest, 1)))
                batch = order[start:start + take]
                start += take
                out = self.forward(self.collate([rows[i] for i in batch]), **options)
                outs = out if isinstance(out, tuple) else (out,)
                outs = tuple(o.float().cpu() for o in outs)
                for j, i in enumerate(batch):
                    n = len(rows[i].ids)
                    per_row = tuple(o[j, :n] if self.token_outputs else o[j] for o in outs)
                    results[i] = per_row if isinstance(out, tuple) else per_row[0]
        return results

    def collate(self, rows: list) -> dict:
        """Pad rows on the right to the batch's longest."""
        longest = max(len(r.ids) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        types = torch.zeros((len(rows), longest), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r.ids)
            ids[j, :n] = torch.tensor(r.ids)
            mask[j, :n] = 1
            types[j, :n] = torch.tensor(r.type_ids)
        batch = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self._takes_token_types:
            batch["token_type_ids"] = types.to(self.device)
        return batch

    # -- shared helpers ------------------------------------------------------------------

    @property
    def max_positions(self) -> int | None:
        """Longest input the model's position table holds (None: no table in the config)."""
        positions = self.config.get("max_position_embeddings")
        if positions and self.config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
            positions -= (self.config.get("pad_token_id") or 1) + 1  # positions start after padding_idx
        return positions

    @property
    def max_input_tokens(self) -> int:
        """Longest input the model accepts: the tokenizer's limit, capped by the position table."""
        limits = [n for n in (self.tokenizer.model_max_length, self.max_positions) if n]
        return min(limits) if limits else 10**9

    def encode(self, texts: list[str], pairs=None, truncation=False, **kwargs):
        """Tokenize, refusing inputs that are too long unless the caller asked to truncate."""
        if truncation:
            kwargs.setdefault("max_length", self.max_input_tokens)
        encodings = self.tokenizer.encode_batch(texts, pairs, truncation=truncation, **kwargs)
        for text, enc in zip(texts, encodings):
            if len(enc.ids) > self.max_input_tokens:
                raise ValueError(
                    f"input has {len(enc.ids)} tokens but {self.model_id or 'the model'} accepts at most "
                    f"{self.max_input_tokens}; pass truncation=True to cut it (input starts {text[:40]!r})"
                )
        return encodings


@dataclass
class EncodedRow:
    """A tokenized row with task data beside it: subclasses add fields for postprocess; the
    batcher reads only `ids` and `type_ids`."""

    encoding: Encoding

    @property
    def ids(self):
        return self.encoding.ids

    @property
    def type_ids(self):
        return self.encoding.type_ids


def check_text(value, name: str = "inputs") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}: {value!r:.60}")
    return value


def check_positive_int(value, name: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_known(options: dict, known: set[str], task: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{task} got unexpected keyword argument(s) {unknown}; accepted: {sorted(known)}")
