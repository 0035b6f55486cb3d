"""Text generation: prefill, one-token decode steps, sampling, beam search, stopping.

`generate(model, input_ids, attention_mask, config)` follows transformers 4.57.6
`model.generate()` token for token for greedy and beam search (same logits processors in the
same order, same beam bookkeeping, same output padding and length), and is lean like gpt-fast:
a preallocated KV cache, one prefill, then one-token steps with no per-step Python work beyond
the forward, the enabled processors and one cheap "anyone still running?" check.

Model protocol
--------------
A causal-LM or seq2seq-LM head of a lightpipe family (`lightpipe.models.base.Model`, whose
docstring specifies it): `is_encoder_decoder` picks `forward` with a KV cache from
`new_cache(...)` (decoder-only) or `encode(...)` then `decode(...)` steps (encoder-decoder);
`context_length` caps the default length and `max_positions` is a hard limit.

Beams and num_return_sequences: the prompt is prefilled (or the first decoder step run) once
per prompt, then the cache's rows are repeated (`cache.reorder(index)`, which covers the
`cross` entries too) — the same result as transformers' repeat_interleave of the inputs,
without computing the prompt num_beams times. Beam re-ranking reorders the cache rows every
step; the encoder mask is reordered alongside.

Stopping: eos (one id or several), max length, and `stop` strings. Stop strings follow
transformers' `stop_strings`: generation of a row ends at the token that completes a stop
string, and the returned tokens keep the stop string (a pipeline cuts the text if it wants).
They need `decode` (token ids → text), as transformers needs the tokenizer.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
import torch.nn.functional as F

from .generation_config import DEFAULT_MAX_LENGTH, GenerationConfig
from .models.base import Model
from .models.common import KVCache

def _ids(value) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


# ---------------------------------------------------------------------------------------------
# logits processors: transformers' order and semantics, vectorised (no per-row Python)


def _processors(cfg: GenerationConfig, eos: list[int] | None, prompt_len: int, max_length: int, min_length: int):
    """The enabled processors as one function (ids (N, L), scores (N, V)) -> scores."""
    steps = []
    if cfg.repetition_penalty != 1.0:
        penalty = float(cfg.repetition_penalty)

        def repetition(ids, scores):
            score = scores.gather(1, ids)
            score = torch.where(score < 0, score * penalty, score / penalty)
            return scores.scatter(1, ids, score)

        steps.append(repetition)
    if cfg.no_repeat_ngram_size:
        n = cfg.no_repeat_ngram_size

        def no_repeat_ngram(ids, scores):
            length = ids.shape[1]
            if length < n:  # no complete n-gram yet
                return scores
            grams = ids.unfold(1, n, 1)  # (N, W, n): every n-gram so far
            prefix = ids[:, length - n + 1 :]  # the n-1 tokens a new n-gram would start with
            seen = (grams[:, :, :-1] == prefix[:, None, :]).all(-1)  # (N, W)
            hits = torch.zeros_like(scores).scatter_add_(1, grams[:, :, -1], seen.to(scores.dtype))
            return scores.masked_fill(hits > 0, float("-inf"))

        steps.append(no_repeat_ngram)
    if cfg.bad_words_ids:
        words = [w for w in cfg.bad_words_ids if not (eos and len(w) == 1 and w[0] in eos)]
        single = [w[0] for w in words if len(w) == 1]
        longer = [w for w in words if len(w) > 1]
        cache = {}

        def bad_words(ids, scores):
            if single:
                if "mask" not in cache:
                    if max(single) >= scores.shape[-1]:
                        raise ValueError(f"`bad_words_ids` has ids >= the vocabulary size {scores.shape[-1]}")
                    mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
                    mask[single] = True
                    cache["mask"] = mask
                scores = scores.masked_fill(cache["mask"], float("-inf"))
            for w in longer:
                if len(w) > ids.shape[1]:
                    continue
                prefix = torch.tensor(w[:-1], dtype=ids.dtype, device=ids.device)
                hit = (ids[:, -(len(w) - 1) :] == prefix).all(-1)
                scores[:, w[-1]] = torch.where(hit, float("-inf"), scores[:, w[-1]])
            return scores

        steps.append(bad_words)
    if eos and min_length > 0:

        def min_len(ids, scores):
            if ids.shape[1] < min_length:
                scores = scores.clone()
                scores[:, eos] = float("-inf")
            return scores

        steps.append(min_len)
    if eos and cfg.min_new_tokens:
        min_new = cfg.min_new_tokens

        def min_new_tokens(ids, scores):
            if ids.shape[1] - prompt_len < min_new:
                scores = scores.clone()
                scores[:, eos] = float("-inf")
            return scores

        steps.append(min_new_tokens)
    if cfg.forced_bos_token_id is not None:
        bos = cfg.forced_bos_token_id

        def forced_bos(ids, scores):
            if ids.shape[1] == 1:
                scores = torch.full_like(scores, float("-inf"))
                scores[:, bos] = 0
            return scores

        steps.append(forced_bos)
    if cfg.forced_eos_token_id is not None:
        forced = _ids(cfg.forced_eos_token_id)

        def forced_eos(ids, scores):
            if ids.shape[1] == max_length - 1:
                scores = torch.full_like(scores, float("-inf"))
                scores[:, forced] = 0
            return scores

        steps.append(forced_eos)

    def process(ids, scores):
        for step in steps:
            scores = step(ids, scores)
        return scores

    return process


def _warp_full(scores, cfg: GenerationConfig, min_keep: int):
    """temperature → top-k → top-p over the whole vocabulary, exactly as transformers' warpers (beam sampling)."""
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if cfg.top_k:
        k = min(max(cfg.top_k, min_keep), scores.shape[-1])
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - cfg.top_p
        remove[..., -min_keep:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    return scores


def _sample(scores, cfg: GenerationConfig, generator):
    """One token per row: temperature → top-k → top-p, then a draw — transformers' semantics, cheaper.

    Top-k (on by default, k=50) takes the k best first, so top-p sorts k values rather than the
    whole vocabulary, and the draw is over k candidates. The draw is an exponential race
    (argmax p/E, E ~ Exp(1)), which samples exactly from p without torch.multinomial's
    cost on a large vocabulary. Same seed, same tokens; not the same random stream as
    transformers.
    """
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    vocab = scores.shape[-1]
    index = None
    if cfg.top_k and cfg.top_k < vocab:
        scores, index = scores.topk(cfg.top_k, dim=-1)  # sorted, best first
    if cfg.top_p < 1.0:
        if index is None:  # the nucleus is almost always in the best few hundred: avoid sorting the vocabulary
            k = min(1024, vocab)
            top, top_index = scores.topk(k, dim=-1)
            if k < vocab and bool(scores.softmax(-1).gather(1, top_index).sum(-1).min() < cfg.top_p):
                top, top_index = scores.sort(dim=-1, descending=True)
            scores, index = top, top_index
        probs = scores.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the better tokens
        drop = mass_before >= cfg.top_p
        drop[:, 0] = False
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(-1)
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    choice = (probs / race).argmax(-1)
    return choice if index is None else index.gather(1, choice[:, None]).squeeze(1)


# ---------------------------------------------------------------------------------------------
# the model behind a uniform prefill / step / reorder interface


class _Runner:
    """Runs a decoder-only or encoder-decoder model one token at a time on a preallocated cache."""

    def __init__(self, model, input_ids, attention_mask, padded: bool, max_len: int, is_enc_dec: bool):
        self.model, self.is_enc_dec = model, is_enc_dec
        B = input_ids.shape[0]
        self.cache = model.new_cache(B, max_len)
        if is_enc_dec:
            self.enc = model.encode(input_ids, attention_mask)
            self.enc_mask = attention_mask
            self.mask = None
        elif padded:
            # the mask grows by a column of ones per step: preallocate it, pass views
            self.mask = torch.ones(B, max_len, dtype=attention_mask.dtype, device=attention_mask.device)
            self.mask[:, : input_ids.shape[1]] = attention_mask
            self.next_pos = attention_mask.long().sum(-1)  # (B,) the next token's position
        else:
            self.mask = None

    def prefill(self, ids):
        """Logits (N, V) of the last position of the prompt (decoder-only) or of the decoder start."""
        if self.is_enc_dec:
            return self.model.decode(ids, encoder_hidden=self.enc, encoder_mask=self.enc_mask, cache=self.cache)[:, -1]
        T = ids.shape[1]
        mask = self.mask[:, :T] if self.mask is not None else None
        return self.model(ids, attention_mask=mask, cache=self.cache, logits_to_keep=1)[:, -1]

    def step(self, tokens):
        ids = tokens[:, None]
        if self.is_enc_dec:
            return self.model.decode(ids, encoder_hidden=self.enc, encoder_mask=self.enc_mask, cache=self.cache)[:, -1]
        if self.mask is None:
            return self.model(ids, cache=self.cache)[:, -1]
        length = self.cache.length + 1
        logits = self.model(ids, self.mask[:, :length], self.next_pos[:, None], self.cache)[:, -1]
        self.next_pos = self.next_pos + 1
        return logits

    def reorder(self, index, within_groups: bool = False):
        """Keep/repeat/permute batch rows (beam re-ranking, expanding prompts, dropping finished rows).

        within_groups: rows only move among copies of the same prompt (beam re-ranking), so the
        per-prompt inputs (encoder output and mask, padding mask, positions) stay as they are.
        """
        cache = self.cache
        if type(cache) is KVCache and index.numel() == cache.k.shape[1] and cache.length:
            # same batch size: permute only the filled positions, in place, instead of the whole buffer
            n = cache.length
            cache.k[:, :, :, :n] = cache.k[:, :, :, :n].index_select(1, index)
            cache.v[:, :, :, :n] = cache.v[:, :, :, :n].index_select(1, index)
            if not within_groups:  # beams of one prompt share its cross-attention keys/values
                cache.cross = {i: (k.index_select(0, index), v.index_select(0, index)) for i, (k, v) in cache.cross.items()}
        else:
            cache.reorder(index)
        if within_groups:
            return
        if self.is_enc_dec:
            if self.enc_mask is not None:
                self.enc_mask = self.enc_mask.index_select(0, index)
            if self.enc is not None:
                self.enc = self.enc.index_select(0, index)
        elif self.mask is not None:
            self.mask = self.mask.index_select(0, index)
            self.next_pos = self.next_pos.index_select(0, index)


# ---------------------------------------------------------------------------------------------
# stopping


def _stop_checker(stops: list[str], decode):
    """rows (N, L) -> bool (N,): the last token completes one of `stops` (transformers' stop_strings)."""
    window = max(len(s) for s in stops) + 2  # tokens: each yields at least one character

    def hits(ids):
        tails = ids[:, -window:].tolist()
        out = []
        for tail in tails:
            before, after = decode(tail[:-1]), decode(tail)
            out.append(any((i := after.rfind(s)) >= 0 and i + len(s) > len(before) for s in stops))
        return torch.tensor(out, dtype=torch.bool, device=ids.device)

    return hits


# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    streamer=None,
    decode=None,
    drop_finished: bool | None = None,
    **kwargs,
) -> torch.Tensor:
    """Generate continuations of `input_ids` (B, S), left-padded per `attention_mask`.

    `config` gives the defaults (e.g. `GenerationConfig.from_model(...)`), `kwargs` override
    them. Returns the sequences as transformers' `generate()` does: decoder-only models give
    prompt + new tokens (B * num_return_sequences, S + new), encoder-decoder models the decoder
    sequence from decoder_start_token_id; rows that finished early are padded with pad_token_id.

    streamer: called with a (B,) CPU tensor of the new token ids after every step (finished
      rows get pad_token_id); an object with `put(tokens)` / `end()` works too.
    decode: token ids (list[int]) → text, required by `stop` strings.
    drop_finished: shrink the batch when rows finish (greedy/sampling); None decides by size.
    """
    cfg = (config or GenerationConfig()).merge(**kwargs)
    cfg.validate()
    if isinstance(cfg.stop, str):
        cfg = replace(cfg, stop=[cfg.stop])
    if cfg.stop and decode is None:
        raise ValueError("`stop` strings need `decode` (token ids -> text) to be passed to generate()")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
        raise ValueError(f"`input_ids` must be a 2-D tensor of token ids (batch, length), got {input_ids!r:.80}")
    if not isinstance(model, Model):
        raise TypeError(f"`model` must be a lightpipe model (lightpipe.models.base.Model), "
                        f"got {type(model).__name__}")
    if input_ids.shape[1] == 0 and not model.is_encoder_decoder:
        raise ValueError("`input_ids` is empty: a decoder-only model needs at least one prompt token")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else input_ids.device
    input_ids = input_ids.long().to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    is_enc_dec = model.is_encoder_decoder

    eos = _ids(cfg.eos_token_id)
    pad = cfg.pad_token_id
    if pad is None and eos is not None:
        pad = eos[0]  # transformers: "Setting pad_token_id to eos_token_id for open-end generation"
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
        if pad is not None and (eos is None or pad not in eos) and bool((input_ids == pad).any()):
            attention_mask = (input_ids != pad).long()
    padded = not bool(attention_mask.all())

    B = input_ids.shape[0]
    if is_enc_dec:
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.bos_token_id
        if start is None:
            raise ValueError("`decoder_start_token_id` or `bos_token_id` must be set for encoder-decoder generation")
        prompt = torch.full((B, 1), int(start), dtype=torch.long, device=device)
    else:
        prompt = input_ids
    P = prompt.shape[1]

    # lengths, as transformers' _prepare_generated_length
    context = model.context_length
    if cfg.max_new_tokens is not None:
        max_length = P + cfg.max_new_tokens
    elif cfg.max_length is None or (cfg.max_length == DEFAULT_MAX_LENGTH and not cfg.max_length_from_caller):
        max_length = P + DEFAULT_MAX_LENGTH
        if context is not None:
            max_length = min(max_length, context)
    else:
        max_length = cfg.max_length
    hard = model.max_positions  # learned position tables can't go further
    if hard is not None:
        if P >= hard:
            raise ValueError(
                f"`input_ids` has {P} tokens but the model's context is {hard} positions: "
                "no room to generate; shorten (truncate) the prompt"
            )
        # the last token is never fed back, so a sequence may be one longer than the table
        if max_length > hard + 1:
            warnings.warn(
                f"the model's context ends at {hard} positions: generation stops there, "
                f"{max_length - hard - 1} tokens short of the requested length",
                stacklevel=2,
            )
            max_length = hard + 1
    if P >= max_length:
        name = "decoder_input_ids" if is_enc_dec else "input_ids"
        raise ValueError(
            f"{name} has {P} tokens but `max_length` is {max_length}: nothing left to generate; "
            "raise `max_length` or, better, set `max_new_tokens`"
        )
    min_length = cfg.min_length
    if cfg.min_new_tokens is not None:
        min_length = P + cfg.min_new_tokens
    if min_length > max_length:
        warnings.warn(
            f"min_length ({min_length}) is larger than max_length ({max_length}); generation stops at max_length",
            stacklevel=2,
        )

    process = _processors(cfg, eos, P, max_length, min_length)
    stop_hits = _stop_checker(list(cfg.stop), decode) if cfg.stop else None
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(cfg.seed))

    runner = _Runner(model, input_ids, attention_mask, padded, max_length, is_enc_dec)
    if cfg.num_beams > 1:
        return _beam_search(runner, prompt, cfg, process, stop_hits, eos, pad, max_length, generator)
    return _decode(runner, prompt, cfg, process, stop_hits, eos, pad, max_length, generator, streamer, drop_finished)


def _decode(runner, prompt, cfg, process, stop_hits, eos, pad, max_length, generator, streamer, drop_finished):
    """Greedy or sampling: one token per row per step until every row stops or max_length."""
    B, P = prompt.shape
    n = cfg.num_return_sequences if cfg.do_sample else 1
    logits = runner.prefill(prompt)
    N = B * n
    seqs = torch.full((N, max_length), pad if pad is not None else 0, dtype=torch.long, device=prompt.device)
    seqs[:, :P] = prompt.repeat_interleave(n, dim=0) if n > 1 else prompt
    if n > 1:
        index = torch.arange(B, device=prompt.device).repeat_interleave(n)
        runner.reorder(index)
        logits = logits.index_select(0, index)
    eos_t = torch.tensor(eos, device=prompt.device) if eos else None
    can_finish = eos_t is not None or stop_hits is not None
    fill = torch.tensor(pad if pad is not None else 0, device=prompt.device)
    if drop_finished is None:
        drop_finished = N >= 4
    drop_finished = drop_finished and can_finish and streamer is None and pad is not None
    put = getattr(streamer, "put", streamer)

    out = seqs  # all rows; `seqs` below is the working set once finished rows are dropped
    rows = None  # out-row of each working row, None while nothing was dropped
    unfinished = torch.ones(N, dtype=torch.bool, device=prompt.device)
    cur = P
    while True:
        scores = process(seqs[:, :cur], logits.float())
        if cfg.do_sample:
            tokens = _sample(scores, cfg, generator)
        else:
            tokens = scores.argmax(-1)
        if can_finish and pad is not None:
            tokens = torch.where(unfinished, tokens, fill)
        seqs[:, cur] = tokens
        cur += 1
        if put is not None:
            put(tokens.cpu())
        if cur >= max_length:
            break
        if can_finish:
            if eos_t is not None:
                unfinished &= ~torch.isin(tokens, eos_t)
            if stop_hits is not None:
                unfinished &= ~stop_hits(seqs[:, :cur])
            running = int(unfinished.sum())
            if running == 0:
                break
            if drop_finished and running <= seqs.shape[0] // 2:
                keep = unfinished.nonzero().squeeze(1)
                if rows is None:  # first drop: `seqs` still is `out`, nothing to copy back
                    rows = torch.arange(N, device=prompt.device)
                else:
                    out[rows] = seqs  # finished rows are final; padding fills the rest of theirs
                rows, seqs, unfinished = rows[keep], seqs[keep], unfinished[keep]
                runner.reorder(keep)
                tokens = tokens[keep]
        logits = runner.step(tokens)
    if rows is not None:
        out[rows] = seqs
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    return out[:, :cur]


def _beam_search(runner, prompt, cfg, process, stop_hits, eos, pad, max_length, generator):
    """transformers 4.57's vectorised beam search (`_beam_search`), step for step."""
    B, P = prompt.shape
    nb = cfg.num_beams
    device = prompt.device
    early_stopping, length_penalty = cfg.early_stopping, cfg.length_penalty

    logits = runner.prefill(prompt)
    expand = torch.arange(B, device=device).repeat_interleave(nb)
    runner.reorder(expand)
    logits = logits.index_select(0, expand)
    V = logits.shape[-1]

    n_eos = len(eos) if eos else 0
    keep = max(2, 1 + n_eos) * nb
    top_num_beam_mask = torch.cat((torch.ones(nb, dtype=torch.bool), torch.zeros(keep - nb, dtype=torch.bool))).to(device)
    fill = (pad or eos[0]) if eos is not None else -1  # transformers' `pad_token_id or eos_token_id[0]`
    eos_t = torch.tensor(eos, device=device) if eos else None

    running_sequences = torch.full((B, nb, max_length), fill, dtype=torch.long, device=device)
    running_sequences[:, :, :P] = prompt[:, None, :]
    sequences = running_sequences.clone()
    running_beam_scores = torch.zeros((B, nb), dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = -1e9
    beam_scores = torch.full((B, nb), -1e9, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros((B, nb), dtype=torch.bool, device=device)
    improvable = torch.ones((B, 1), dtype=torch.bool, device=device)  # is_early_stop_heuristic_unsatisfied
    running_beam_indices = torch.full((B, nb, max_length - P), -1, dtype=torch.int32, device=device)
    beam_indices = running_beam_indices.clone()
    batch_offset = torch.arange(B, device=device)[:, None] * nb
    min_keep = n_eos + 1 if eos else 2

    def gather(t, idx):
        while idx.dim() < t.dim():
            idx = idx.unsqueeze(-1)
        return torch.take_along_dim(t, idx, dim=1)

    cur = P
    while True:
        flat_running = running_sequences[:, :, :cur].reshape(B * nb, cur)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs = process(flat_running, log_probs)
        if cfg.do_sample:
            log_probs = _warp_full(log_probs, cfg, min_keep)
        log_probs = (log_probs.view(B, nb, V) + running_beam_scores[:, :, None]).view(B, nb * V)

        # c. the top `keep` continuations over all beams
        if cfg.do_sample:
            topk_indices = torch.multinomial(log_probs.softmax(-1), num_samples=keep, generator=generator)
            topk_log_probs = log_probs.gather(1, topk_indices)
        else:
            topk_log_probs, topk_indices = torch.topk(log_probs, k=keep)
        topk_beam = topk_indices // V
        topk_running_beam_indices = gather(running_beam_indices, topk_beam)
        topk_running_sequences = gather(running_sequences, topk_beam)
        topk_running_sequences[:, :, cur] = topk_indices % V
        topk_running_beam_indices[:, :, cur - P] = (topk_beam + batch_offset).to(torch.int32)

        # d. which of them stop here
        hits = torch.full((B, keep), cur + 1 >= max_length, dtype=torch.bool, device=device)
        last = topk_running_sequences[:, :, cur]
        if eos_t is not None:
            hits |= torch.isin(last, eos_t)
        if stop_hits is not None:
            hits |= stop_hits(topk_running_sequences[:, :, : cur + 1].reshape(B * keep, cur + 1)).view(B, keep)

        # e. the best `nb` unfinished continue
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        next_topk = torch.topk(topk_running_log_probs, k=nb)[1]
        running_sequences = gather(topk_running_sequences, next_topk)
        running_beam_scores = gather(topk_running_log_probs, next_topk)
        running_beam_indices = gather(topk_running_beam_indices, next_topk)

        # f. finished ones among the top `nb` compete for the final slots, with the length penalty
        just_finished = hits & top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / ((cur + 1 - P) ** length_penalty)
        beams_full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (early_stopping is True)
        finished_scores += beams_full.to(torch.float32) * -1.0e9
        finished_scores += (~improvable).to(torch.float32) * -1.0e9
        finished_scores += (~just_finished) * -1.0e9
        merged_scores = torch.cat((beam_scores, finished_scores), dim=1)
        best = torch.topk(merged_scores, k=nb)[1]
        sequences = gather(torch.cat((sequences, topk_running_sequences), dim=1), best)
        beam_scores = gather(merged_scores, best)
        beam_indices = gather(torch.cat((beam_indices, topk_running_beam_indices), dim=1), best)
        is_sent_finished = gather(torch.cat((is_sent_finished, just_finished), dim=1), best)

        # g. stop? (transformers' _check_early_stop_heuristic and _beam_search_has_unfinished_sequences)
        reorder = running_beam_indices[..., cur - P].reshape(-1).long()
        cur += 1
        if early_stopping == "never" and length_penalty > 0.0:
            best_len = max_length - P
        else:
            best_len = cur - P
        best_running = running_beam_scores[:, :1] / (best_len**length_penalty)
        worst_finished = torch.where(is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9)
        improvable = improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        go_on = (
            torch.any(improvable)
            & ~(torch.all(is_sent_finished) & (early_stopping is True))
            & ~torch.all(hits)
        )
        if not bool(go_on):
            break
        runner.reorder(reorder, within_groups=True)
        logits = runner.step(running_sequences[:, :, cur - 1].reshape(-1))

    n = cfg.num_return_sequences
    sequences = sequences[:, :n].reshape(B * n, max_length)
    beam_indices = beam_indices[:, :n].reshape(B * n, -1)
    generated = int((beam_indices + 1).bool().sum(dim=1).max())
    return sequences[:, : P + generated]
