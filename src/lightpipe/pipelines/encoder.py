"""The base of the encoder tasks: the length-sorted row batcher that makes encoder work fast.

A call's options are resolved once (`prepare`), each item becomes one or more tokenized rows
(`preprocess_batch`: a QA context's windows, a zero-shot sequence's hypothesis pairs), every
row of the window runs through the model sorted by length and cut by a token budget
(`forward_items`), and `postprocess` combines each item's row outputs into its answer. Results
come back in input order whatever order the batches ran in.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property

import torch
from tokenizers import Encoding

from .base import Pipeline

DEFAULT_MAX_BATCH_ROWS = 64
# A batch stops taking (shorter) rows once its padding would pass this share of its real tokens:
# sorted longest first, a batch computes longest x rows tokens, so one long outlier would
# otherwise pad 31 short rows to its length (400 pydoc sentences, batch 32: 17,120 tokens computed
# for 12,343 real ones; 13,573 with this cap, in 15 batches instead of 13). Rows are outputs of
# their own, so the results don't depend on how they are batched.
MAX_PADDING = 0.25


class EncoderPipeline(Pipeline):
    token_outputs = False  # forward returns per-token outputs (B, T, ...) to trim to each row's length

    def run(self, items: list, options: dict) -> list:
        options = self.prepare(options)
        rows_per_item = self.preprocess_batch(items, **options)
        outputs = self.forward_items(rows_per_item, **options)
        return [self.postprocess(rows, outs, **options) for rows, outs in zip(rows_per_item, outputs)]

    # -- to write per task ----------------------------------------------------------------

    def prepare(self, options: dict) -> dict:
        """The call's options resolved once for all its items (required options, modes)."""
        return options

    def preprocess(self, item, **options) -> list:
        """An item's rows (tokenizers.Encoding, or an EncodedRow carrying task data)."""
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
        """An item's answer from its rows and their outputs."""
        raise NotImplementedError

    # -- the batcher ----------------------------------------------------------------------

    def forward_items(self, rows_per_item: list[list], batch_size=None, **options) -> list[list]:
        """Every item's row outputs: all rows of the window in one length-sorted pass."""
        flat = [row for rows in rows_per_item for row in rows]
        outputs = iter(self.forward_rows(flat, batch_size, **options))
        return [[next(outputs) for _ in rows] for rows in rows_per_item]

    def forward_rows(self, rows: list, batch_size=None, **options) -> list:
        """Run tokenized rows through `self.forward` in length-sorted batches and return each
        row's outputs, in the rows' order.

        `forward` returns a tensor or a tuple of tensors whose first dim is the batch; with
        `token_outputs` they are (B, T, ...) and trimmed to each row's real length."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids), reverse=True)
        results: list = [None] * len(rows)
        max_rows = batch_size or DEFAULT_MAX_BATCH_ROWS
        start = 0
        with torch.inference_mode():
            while start < len(order):
                batch = self.next_batch(rows, order[start:start + max_rows])
                start += len(batch)
                out = self.forward(self.collate([rows[i] for i in batch]), **options)
                outs = out if isinstance(out, tuple) else (out,)
                outs = tuple(o.float().cpu() for o in outs)
                for j, i in enumerate(batch):
                    n = len(rows[i].ids)
                    per_row = tuple(o[j, :n] if self.token_outputs else o[j] for o in outs)
                    results[i] = per_row if isinstance(out, tuple) else per_row[0]
        return results

    def next_batch(self, rows: list, candidates: list[int]) -> list[int]:
        """The next batch: the first of `candidates` (indices of rows, longest first) while the
        padded batch stays within the token budget and its padding within MAX_PADDING."""
        longest = max(len(rows[candidates[0]].ids), 1)
        limit = max(1, self.max_batch_tokens // longest)
        real = 0
        for n, i in enumerate(candidates[:limit]):
            real += len(rows[i].ids)
            if n and longest * (n + 1) > real * (1 + MAX_PADDING):
                return candidates[:n]
        return candidates[:limit]

    @cached_property
    def takes_token_types(self) -> bool:
        return "token_type_ids" in inspect.signature(self.model.forward).parameters

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
        if self.takes_token_types:
            batch["token_type_ids"] = types.to(self.device)
        return batch

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
