"""Logits processors, sampling and stop strings: transformers 4.57.6's semantics and order,
vectorised over the rows that share a request's settings.

Per-row facts (how long a row is, how many tokens it has made, its limits) come in as lists;
token histories from `History`, a (rows, positions) tensor the engine keeps beside the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..generation_config import GenerationConfig

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Settings:
    """What a request does with its logits. Rows of requests with equal settings are processed
    as one batch; the sampling fields are normalised away for greedy requests so every greedy
    request shares them."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_single: tuple[int, ...] = ()
    bad_multi: tuple[tuple[int, ...], ...] = ()
    eos: tuple[int, ...] = ()
    forced_bos: int | None = None
    forced_eos: tuple[int, ...] = ()

    @classmethod
    def of(cls, cfg: GenerationConfig, eos: list[int] | None) -> Settings:
        eos = tuple(eos or ())
        words = [tuple(w) for w in cfg.bad_words_ids or () if not (eos and len(w) == 1 and w[0] in eos)]
        forced_eos = cfg.forced_eos_token_id
        if forced_eos is not None and not isinstance(forced_eos, (list, tuple)):
            forced_eos = [forced_eos]
        sampling = {}
        if cfg.do_sample:
            sampling = dict(do_sample=True, temperature=float(cfg.temperature), top_k=cfg.top_k or None,
                            top_p=float(cfg.top_p))
        return cls(**sampling, repetition_penalty=float(cfg.repetition_penalty),
                   no_repeat_ngram_size=cfg.no_repeat_ngram_size or 0,
                   bad_single=tuple(w[0] for w in words if len(w) == 1), bad_multi=tuple(w for w in words if len(w) > 1),
                   eos=eos, forced_bos=cfg.forced_bos_token_id, forced_eos=tuple(int(t) for t in forced_eos or ()))

    @property
    def needs_history(self) -> bool:
        return self.repetition_penalty != 1.0 or bool(self.no_repeat_ngram_size) or bool(self.bad_multi)


@dataclass
class Rows:
    """The per-row facts the processors read, one entry per row of `scores`."""

    rows: list[int]  # KV cache / history rows
    generated: list[int]  # new tokens so far
    length: list[int]  # tokens the processors see so far (prefix + prompt + generated)
    max_new: list[int]
    min_new: list[int]


class History:
    """The token ids each row's processors look back over (a left-padded batch's pads, the prompt,
    the new tokens), -1 past a row's end. Rows follow the KV cache's rows (the engine mirrors
    its moves and copies)."""

    def __init__(self, device):
        self.device = device
        self.ids: torch.Tensor | None = None  # (rows_cap, len_cap)
        self.lengths: list[int] = []

    def add(self, tokens: list[int], capacity: int) -> None:
        """A new row at the end holding `tokens`, with room for `capacity` in all."""
        row = len(self.lengths)
        cap = max(capacity, len(tokens), 1)
        if self.ids is None or row >= self.ids.shape[0] or cap > self.ids.shape[1]:
            grown = torch.full((max(row + 1, 2 * (0 if self.ids is None else self.ids.shape[0])),
                                max(cap, 0 if self.ids is None else self.ids.shape[1])), -1, dtype=torch.long,
                               device=self.device)
            if self.ids is not None and row:
                grown[:row, :self.ids.shape[1]] = self.ids[:row]
            self.ids = grown
        self.ids[row] = -1
        if tokens:
            self.ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long, device=self.device)
        self.lengths.append(len(tokens))

    def append(self, rows: list[int], tokens: torch.Tensor) -> None:
        """Each row's next token (tokens (N,) on the device)."""
        if not rows:
            return
        cols = [self.lengths[r] for r in rows]
        self.ids[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)] = tokens
        for r in rows:
            self.lengths[r] += 1

    def copy(self, src: list[int], dst: list[int]) -> None:
        if src:
            self.ids[torch.tensor(dst, device=self.device)] = self.ids[torch.tensor(src, device=self.device)]
            lengths = [self.lengths[s] for s in src]
            for d, n in zip(dst, lengths):
                self.lengths[d] = n

    def remove(self, moves: list[tuple[int, int]], keep: int) -> None:
        """Mirror KVCache.remove_rows: `moves` (from, to), then only the first `keep` rows remain."""
        if moves:
            self.copy([m[0] for m in moves], [m[1] for m in moves])
        del self.lengths[keep:]
        if not self.lengths:
            self.ids = None

    def view(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (N, L), lengths (N,)) of `rows`, L their longest."""
        longest = max(max(self.lengths[r] for r in rows), 1)
        index = torch.tensor(rows, device=self.device)
        return self.ids[index, :longest], torch.tensor([self.lengths[r] for r in rows], device=self.device)

    def tails(self, rows: list[int], n: int) -> list[list[int]]:
        """The last `n` tokens of each row, as lists."""
        ids, _ = self.view(rows)
        out = []
        for r, row in zip(rows, ids.tolist()):
            end = self.lengths[r]
            out.append(row[max(end - n, 0):end])
        return out


_masks: dict = {}


def _token_mask(ids: tuple[int, ...], vocab: int, device) -> torch.Tensor:
    key = (ids, vocab, str(device))
    if key not in _masks:
        if max(ids) >= vocab:
            raise ValueError(f"`bad_words_ids` has ids >= the vocabulary size {vocab}")
        mask = torch.zeros(vocab, dtype=torch.bool, device=device)
        mask[list(ids)] = True
        if len(_masks) > 64:
            _masks.clear()
        _masks[key] = mask
    return _masks[key]


def process(scores: torch.Tensor, s: Settings, rows: Rows, history: History) -> torch.Tensor:
    """The enabled processors over scores (N, V), in transformers' order: repetition penalty,
    no-repeat n-grams, bad words, min length / min new tokens, forced BOS, forced EOS."""
    N, V = scores.shape
    ids = lengths = None
    if s.needs_history:
        ids, lengths = history.view(rows.rows)
    if s.repetition_penalty != 1.0:
        p = s.repetition_penalty
        present = torch.zeros(N, V + 1, dtype=torch.bool, device=scores.device)
        present.scatter_(1, ids.masked_fill(ids < 0, V), True)  # -1 (past the row's end) lands in column V
        scores = torch.where(present[:, :V], torch.where(scores < 0, scores * p, scores / p), scores)
    if s.no_repeat_ngram_size:
        scores = _no_repeat_ngram(scores, s.no_repeat_ngram_size, ids, lengths)
    if s.bad_single:
        scores = scores.masked_fill(_token_mask(s.bad_single, V, scores.device), NEG_INF)
    if s.bad_multi:
        scores = scores.clone()  # written in place below
    for word in s.bad_multi:
        if word[-1] >= V:
            raise ValueError(f"`bad_words_ids` has ids >= the vocabulary size {V}")
        m = len(word)
        at = ((lengths - (m - 1))[:, None] + torch.arange(m - 1, device=scores.device)).clamp(0, ids.shape[1] - 1)
        hit = (ids.gather(1, at) == torch.tensor(word[:-1], device=scores.device)).all(-1) & (lengths >= m)
        scores[:, word[-1]] = torch.where(hit, NEG_INF, scores[:, word[-1]])
    if s.eos:
        early = [g < m for g, m in zip(rows.generated, rows.min_new)]
        if any(early):
            eos = list(s.eos)
            scores = scores.clone()
            if all(early):
                scores[:, eos] = NEG_INF
            else:
                held = torch.tensor(early, device=scores.device)[:, None]
                scores[:, eos] = torch.where(held, NEG_INF, scores[:, eos])
    if s.forced_bos is not None:
        scores = _force(scores, [n == 1 for n in rows.length], [s.forced_bos])
    if s.forced_eos:
        scores = _force(scores, [g == m - 1 for g, m in zip(rows.generated, rows.max_new)], list(s.forced_eos))
    return scores


def _force(scores, where: list[bool], tokens: list[int]):
    """Rows in `where` may only produce `tokens` (score 0, the rest -inf)."""
    if not any(where):
        return scores
    forced = torch.full_like(scores[:1], NEG_INF)
    forced[:, tokens] = 0
    return torch.where(torch.tensor(where, device=scores.device)[:, None], forced, scores)


def _no_repeat_ngram(scores, n: int, ids, lengths):
    """Ban each token that would complete an n-gram the row already holds (transformers'
    NoRepeatNGramLogitsProcessor), for rows of different lengths at once."""
    N, V = scores.shape
    L = ids.shape[1]
    if L < n:
        return scores
    device = scores.device
    grams = ids.unfold(1, n, 1)  # (N, W, n): every n-gram window
    start = (lengths - (n - 1)).clamp(min=0)
    prefix = ids.gather(1, (start[:, None] + torch.arange(n - 1, device=device)).clamp(max=L - 1))  # (N, n-1)
    seen = (grams[:, :, :-1] == prefix[:, None, :]).all(-1)  # (N, W)
    seen &= torch.arange(grams.shape[1], device=device)[None, :] < (lengths - n + 1)[:, None]  # whole n-grams only
    last = grams[:, :, -1]
    hits = torch.zeros(N, V + 1, device=device).scatter_add_(1, last.masked_fill(last < 0, V), seen.float())
    return scores.masked_fill(hits[:, :V] > 0, NEG_INF)


# ---------------------------------------------------------------------------------------------
# choosing the token


@dataclass
class Choice:
    tokens: torch.Tensor  # (N,)
    logprobs: torch.Tensor | None = None  # (N,) of the chosen tokens, under the distribution drawn from
    top_ids: torch.Tensor | None = None  # (N, k)
    top_logprobs: torch.Tensor | None = None  # (N, k)


def choose(scores: torch.Tensor, s: Settings, generators: list, order: list[int], top_n: int,
           logprobs: bool) -> Choice:
    """One token per row: the best (greedy) or a draw (sampling); with `logprobs`, the chosen
    tokens' log-probabilities and the `top_n` best alternatives' under the distribution actually
    used (after the processors, and the warpers when sampling)."""
    if not s.do_sample:
        tokens = scores.argmax(-1)
        if not logprobs:
            return Choice(tokens)
        logp = F.log_softmax(scores, dim=-1)
        return _with_logprobs(tokens, logp, None, None, top_n)
    return _sample(scores, s, generators, order, top_n, logprobs)


def _with_logprobs(tokens, logp, index, choice, top_n):
    """logp over the candidates (N, k) (`index` maps them to token ids) or the vocabulary."""
    chosen = logp.gather(1, (choice if index is not None else tokens)[:, None]).squeeze(1)
    top_ids = top_lp = None
    if top_n:
        k = min(top_n, logp.shape[-1])
        if index is not None:  # candidates are already sorted, best first
            top_lp, top_ids = logp[:, :k], index[:, :k]
        else:
            top_lp, top_ids = logp.topk(k, dim=-1)
    return Choice(tokens, chosen, top_ids, top_lp)


def _sample(scores, s: Settings, generators, order, top_n, logprobs) -> Choice:
    """temperature → top-k → top-p, then a draw — transformers' semantics, cheaper.

    Top-k takes the k best first, so top-p sorts k values rather than the whole vocabulary, and
    the draw is over k candidates. The draw is an exponential race (argmax p/E, E ~ Exp(1)),
    which samples exactly from p without torch.multinomial's cost on a large vocabulary. Each
    seeded row draws from its own request's generator, so it gets the same tokens whatever
    else is in the batch; the candidates a row draws over depend only on its own scores.
    """
    if s.temperature != 1.0:
        scores = scores / s.temperature
    V = scores.shape[-1]
    if not (s.top_k and s.top_k < V) and s.top_p < 1.0 and V > 1024:
        # the nucleus is almost always in the best few hundred: avoid sorting the vocabulary,
        # deciding row by row (so a row's candidates never depend on its neighbours)
        top, top_index = scores.topk(1024, dim=-1)
        enough = (scores.softmax(-1).gather(1, top_index).sum(-1) >= s.top_p).tolist()
        if all(enough):
            return _draw(top, top_index, s, generators, order, top_n, logprobs)
        if not any(enough):
            return _draw(*scores.sort(dim=-1, descending=True), s, generators, order, top_n, logprobs)
        fit = [i for i, e in enumerate(enough) if e]
        wide = [i for i, e in enumerate(enough) if not e]
        a = _draw(top[fit], top_index[fit], s, [generators[i] for i in fit], [order[i] for i in fit], top_n, logprobs)
        b = _draw(*scores[wide].sort(dim=-1, descending=True), s, [generators[i] for i in wide],
                  [order[i] for i in wide], top_n, logprobs)
        return _merge(a, b, fit, wide, scores.shape[0])
    index = None
    if s.top_k and s.top_k < V:
        scores, index = scores.topk(s.top_k, dim=-1)  # sorted, best first
    elif s.top_p < 1.0:
        scores, index = scores.sort(dim=-1, descending=True)
    return _draw(scores, index, s, generators, order, top_n, logprobs)


def _draw(scores, index, s: Settings, generators, order, top_n, logprobs) -> Choice:
    if s.top_p < 1.0:  # scores are sorted here, best first
        probs = scores.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the better tokens
        drop = mass_before >= s.top_p
        drop[:, 0] = False
        scores = scores.masked_fill(drop, NEG_INF)
    probs = scores.softmax(-1)
    choice = (probs / exponential(probs.shape, generators, order, probs.device)).argmax(-1)
    tokens = choice if index is None else index.gather(1, choice[:, None]).squeeze(1)
    if not logprobs:
        return Choice(tokens)
    return _with_logprobs(tokens, F.log_softmax(scores, dim=-1), index, choice, top_n)


def _merge(a: Choice, b: Choice, ia: list[int], ib: list[int], n: int) -> Choice:
    def put(x, y):
        if x is None:
            return None
        if x.dim() > 1:  # top alternatives: as many for every row
            k = min(x.shape[1], y.shape[1])
            x, y = x[:, :k], y[:, :k]
        out = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
        out[ia], out[ib] = x, y
        return out

    return Choice(put(a.tokens, b.tokens), put(a.logprobs, b.logprobs), put(a.top_ids, b.top_ids),
                  put(a.top_logprobs, b.top_logprobs))


def exponential(shape, generators: list, order: list[int], device) -> torch.Tensor:
    """Exp(1) noise (N, k): rows with a generator draw from it — in `order` (a request's rows
    share its generator and draw in their sequence order) — the rest from torch's global one."""
    noise = torch.empty(shape, device=device)
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if not seeded:
        return noise.exponential_()
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if unseeded:
        noise[unseeded] = torch.empty((len(unseeded), shape[1]), device=device).exponential_()
    for i in sorted(seeded, key=lambda i: order[i]):
        noise[i].exponential_(generator=generators[i])
    return noise


def warp_full(scores, s: Settings, min_keep: int):
    """temperature → top-k → top-p over the whole vocabulary, exactly as transformers' warpers (beam sampling)."""
    if s.temperature != 1.0:
        scores = scores / s.temperature
    if s.top_k:
        k = min(max(s.top_k, min_keep), scores.shape[-1])
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], NEG_INF)
    if s.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - s.top_p
        remove[..., -min_keep:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), NEG_INF)
    return scores


# ---------------------------------------------------------------------------------------------
# stop strings


def stop_window(stops) -> int:
    """Tokens to look back over: every token yields at least one character."""
    return max(len(s) for s in stops) + 2


def completes_stop(tail: list[int], stops, decode) -> bool:
    """The last token of `tail` completes one of `stops` (transformers' stop_strings): the
    string ends inside that token's text."""
    before, after = decode(tail[:-1]), decode(tail)
    return any((i := after.rfind(s)) >= 0 and i + len(s) > len(before) for s in stops)
