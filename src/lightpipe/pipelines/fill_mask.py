"""fill-mask: the `top_k` most likely tokens for each mask token, with the filled sequence.
One mask → a list of candidates; several masks → a list of candidate lists; a list of texts → a
list of those, except that a list of one text gives that text's result (transformers' shapes)."""

from __future__ import annotations

import warnings

import torch

from .base import check_known, check_text
from .encoder import EncoderPipeline


class FillMaskPipeline(EncoderPipeline):
    task = "fill-mask"
    head = "masked-lm"
    unwraps_list_of_one = True
    list_column = "predictions"
    hf_parameters = frozenset({"top_k", "targets"})
    OPTIONS = {"top_k", "targets", "truncation", "batch_size"}

    def setup(self):
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"{self.model_id or 'this model'}'s tokenizer defines no mask_token, so it can't fill masks")

    def claims_text(self, text):
        return self.tokenizer.mask_token in text

    def server_info(self):
        return {"mask_token": self.tokenizer.mask_token}

    def check_options(self, options):
        check_known(options, self.OPTIONS, self.task)
        top_k = options.get("top_k", 5)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if options.get("targets") is not None and not isinstance(options["targets"], torch.Tensor):
            options["targets"] = self.target_ids(options["targets"])
        return options

    def target_ids(self, targets) -> torch.Tensor:
        """Target words → vocabulary ids; a word not in the vocabulary becomes its first token."""
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise TypeError("targets must be a string or a list of strings")
        vocab = self.tokenizer.get_vocab()
        ids = []
        for target in targets:
            id_ = vocab.get(target)
            if id_ is None:
                pieces = self.tokenizer.encode(target, add_special_tokens=False).ids
                if not pieces:
                    warnings.warn(f"target {target!r} is not in the model vocabulary and encodes to nothing; ignoring it")
                    continue
                id_ = pieces[0]
                warnings.warn(f"target {target!r} is not in the model vocabulary; using "
                              f"{self.tokenizer.id_to_token(id_)!r} instead")
            ids.append(id_)
        ids = list(set(ids))  # transformers dedups the same way (and so orders ties the same)
        if not ids:
            raise ValueError("targets: at least one target must be in the vocabulary")
        return torch.tensor(ids)

    def preprocess(self, item, truncation=False, **options):
        rows = self.encode([check_text(item)], truncation=truncation)
        if self.tokenizer.mask_token_id not in rows[0].ids:
            raise ValueError(f"no mask token ({self.tokenizer.mask_token}) found in the input: {item!r:.80}")
        return rows

    def forward(self, batch: dict, **options):
        input_ids = batch["input_ids"]
        is_mask = input_ids == self.tokenizer.mask_token_id
        picked = self.model(**batch, select=is_mask)  # (N, V): mask positions only
        # left-align each row's masks: (B, max_masks, V)
        counts = is_mask.sum(1)
        out = picked.new_zeros(input_ids.shape[0], int(counts.max()), picked.shape[-1])
        row = torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(counts)
        slot = torch.cat([torch.arange(int(n), device=input_ids.device) for n in counts])
        out[row, slot] = picked
        return out

    def postprocess(self, rows, outputs, top_k=5, targets=None, **options):
        input_ids = torch.tensor(rows[0].ids)
        positions = (input_ids == self.tokenizer.mask_token_id).nonzero().squeeze(-1)
        probs = outputs[0][: len(positions)].softmax(-1)
        if targets is not None:
            probs = probs[..., targets]
            top_k = min(top_k, len(targets))
        values, predictions = probs.topk(top_k)
        single = len(positions) == 1
        result = []
        for i, (vals, preds) in enumerate(zip(values.tolist(), predictions.tolist())):
            candidates = []
            for score, p in zip(vals, preds):
                token = int(targets[p]) if targets is not None else p
                filled = input_ids.clone()
                filled[positions[i]] = token
                filled = filled[filled != self.tokenizer.pad_token_id]
                candidates.append({
                    "score": score, "token": token, "token_str": self.tokenizer.decode([token]),
                    "sequence": self.tokenizer.decode(filled, skip_special_tokens=single),
                })
            result.append(candidates)
        return result[0] if single else result
