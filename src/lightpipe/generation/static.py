"""`generate()`: transformers' `model.generate()` call shape on the engine — a padded batch in,
the padded sequences out, token for token what transformers returns for that batch (greedy and
beam search)."""

from __future__ import annotations

import torch

from ..generation_config import GenerationConfig
from ..models.base import Model
from .engine import Engine
from .request import as_ids


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             config: GenerationConfig | None = None, *, decode=None, **kwargs) -> torch.Tensor:
    """Generate continuations of `input_ids` (B, S), left-padded per `attention_mask`.

    `config` gives the defaults (e.g. `GenerationConfig.from_model(...)`), `kwargs` override
    them. Returns the sequences as transformers' `generate()` does: decoder-only models give
    prompt + new tokens (B * num_return_sequences, S + new), encoder-decoder models the decoder
    sequence from decoder_start_token_id; rows that finished early are padded (pad_token_id;
    beam search: pad_token_id or the first eos id, as transformers).

    Each row is its own request to an engine: the model reads only its real tokens, while the
    length limits and the logits processors count the padded width, as transformers' batched
    generate() does. decode: token ids (list[int]) → text, required by `stop` strings.
    """
    if not isinstance(model, Model):
        raise TypeError(f"`model` must be a lightpipe model (lightpipe.models.base.Model), "
                        f"got {type(model).__name__}")
    cfg = (config or GenerationConfig()).merge(**kwargs)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"`input_ids` must be a 2-D tensor of token ids (batch, length), got {input_ids!r:.80}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    eos = as_ids(cfg.eos_token_id)
    pad = cfg.pad_token_id
    if pad is None and eos is not None:
        pad = eos[0]  # transformers: "Setting pad_token_id to eos_token_id for open-end generation"
        cfg = cfg.merge(pad_token_id=pad)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
        if pad is not None and (eos is None or pad not in eos) and bool((input_ids == pad).any()):
            attention_mask = (input_ids != pad).long()
    B, S = input_ids.shape
    ids, mask = input_ids.tolist(), attention_mask.tolist()
    engine = Engine(model, kv_budget_tokens=None, max_rows=B * max(cfg.num_beams, cfg.num_return_sequences))
    handles = []
    for row, m in zip(ids, mask):
        if model.is_encoder_decoder:
            handles.append(engine.submit(row, cfg, decode=decode, source_mask=m))
        else:  # the model reads the real tokens; the processors see the row as transformers does
            real = [t for t, keep in zip(row, m) if keep]
            pads = [t for t, keep in zip(row, m) if not keep]
            handles.append(engine.submit(real, cfg, decode=decode, history_prefix=pads))
    engine.run(handles)
    fill = pad if pad is not None else 0
    if cfg.num_beams > 1:
        fill = (cfg.pad_token_id or eos[0]) if eos is not None else -1
    width = max(len(t) for h in handles for t in h.tokens)
    out = []
    for h, row in zip(handles, ids):
        lead = [h.start[0]] if model.is_encoder_decoder else row
        for tokens in h.tokens:
            out.append(lead + tokens + [fill] * (width - len(tokens)))
    return torch.tensor(out, dtype=torch.long, device=input_ids.device)
