"""The KV cache: keys/values of every decoder layer for a set of rows (slots), each row one
sequence with its own length, stored in one dense block so a batched decode step reads plain
views (no gather).

Two sides use it:

  the engine (lightpipe.generation) owns the rows: `add_rows` (admission, within the token
      budget), `remove_rows` (a finished or cancelled sequence; the last rows move into the
      holes so the block stays dense, and the moves are returned), `copy_rows` (beams), and
      `begin(rows, counts, width)` before each forward pass: which rows it runs and how many new
      tokens each brings (left-aligned padding inside a `width`-token chunk).
  a model's forward reads everything else from it: `positions` (B, T) of the new tokens, the
      self-attention `mask(dtype, window)` / `allowed(window)`, `update(layer, k, v)` (write
      the valid new keys at each row's length, return the row's keys so far), and for
      encoder-decoders `cross(layer)` / `store_cross(layer, k, v)` / `cross_mask(dtype)`.
      Once every layer has written, the rows' lengths include the new tokens (the cache owns its
      position; a pass that failed halfway changes nothing).

Budget: the block holds rows x (the longest reservation + the longest encoder source); it is
never allowed past `budget_tokens`, so `fits()` is the admission test and a request that
doesn't fit waits instead of running out of memory.
"""

from __future__ import annotations

import torch

ROW_STEP = 4  # rows are added in steps (bounded by the budget), so joining requests rarely regrow
LENGTH_STEP = 64  # positions likewise


class KVCache:
    def __init__(self, n_layers: int, n_heads: int, head_dim: int, dtype, device, budget_tokens: int | None = None):
        self.n_layers, self.n_heads, self.head_dim = n_layers, n_heads, head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.budget_tokens = budget_tokens
        self._lengths: list[int] = []  # filled positions of each row
        self.reserved: list[int] = []  # positions each row may fill
        self.cross_reserved: list[int] = []  # encoder positions each row may hold
        self.cross_width: list[int] = []  # encoder positions each row holds (0: none yet)
        self.k = self.v = None  # (layers, rows_cap, H, len_cap, D)
        self.ck = self.cv = self.cmask = None  # cross-attention: (layers, rows_cap, H, cross_cap, D), (rows_cap, cross_cap)
        self._fwd: _Forward | None = None

    # -- rows (the engine's side) ----------------------------------------------------------------

    @property
    def lengths(self) -> list[int]:
        """Filled positions of each row."""
        self._settle()
        return self._lengths

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def _settle(self) -> None:
        """Apply the last forward pass: its new tokens count once every layer has written them."""
        fwd, self._fwd = self._fwd, None
        if fwd is not None and fwd.complete:
            fwd.commit()

    def tokens_needed(self, rows: int = 0, length: int = 0, cross: int = 0) -> int:
        """Positions the block needs with `rows` more rows reserving `length` (+ `cross`) each."""
        n = self.rows + rows
        longest = max(self.reserved + [length])
        widest = max(self.cross_reserved + [cross])
        return n * (longest + widest)

    def fits(self, rows: int, length: int, cross: int = 0) -> bool:
        return self.budget_tokens is None or self.tokens_needed(rows, length, cross) <= self.budget_tokens

    def add_rows(self, n: int, length: int, cross: int = 0, over_budget: bool = False) -> list[int]:
        """`n` new empty rows at the end, each reserving `length` positions (and `cross` encoder
        positions); their indices. `over_budget`: allowed past the budget (the engine's one
        oversized request, alone in the cache)."""
        if not over_budget and not self.fits(n, length, cross):
            raise ValueError(f"KV cache budget exceeded: {self.tokens_needed(n, length, cross)} positions "
                             f"> budget_tokens={self.budget_tokens}")
        rows = list(range(self.rows, self.rows + n))
        self.lengths.extend([0] * n)
        self.reserved += [length] * n
        self.cross_reserved += [cross] * n
        self.cross_width += [0] * n
        self._ensure_capacity(added=n)
        return rows

    def remove_rows(self, rows) -> list[tuple[int, int]]:
        """Free `rows`; the last rows move into the holes. Returns the moves as (from, to)."""
        gone = set(rows)
        keep = self.rows - len(gone)
        holes = sorted(r for r in gone if r < keep)
        movers = [r for r in range(keep, self.rows) if r not in gone]
        moves = list(zip(movers, holes))
        if moves:
            self._copy([m[0] for m in moves], [m[1] for m in moves], cross=True)
        for lst in (self.lengths, self.reserved, self.cross_reserved, self.cross_width):
            for src, dst in moves:
                lst[dst] = lst[src]
            del lst[keep:]
        if not self.lengths:  # idle: give the memory back
            self.k = self.v = self.ck = self.cv = self.cmask = None
        return moves

    def copy_rows(self, src: list[int], dst: list[int], cross: bool = False) -> None:
        """Row dst[i] becomes a copy of row src[i] (beams: re-ranking, or expanding a prompt)."""
        if not src:
            return
        self._copy(src, dst, cross)
        lengths, widths = [self.lengths[s] for s in src], [self.cross_width[s] for s in src]
        for i, d in enumerate(dst):
            self.lengths[d] = lengths[i]
            if cross:
                self.cross_width[d] = widths[i]

    def length(self, row: int) -> int:
        return self.lengths[row]

    def _copy(self, src, dst, cross):
        s_t = torch.tensor(src, device=self.device)
        d_t = torch.tensor(dst, device=self.device)
        n = max(self.lengths[s] for s in src)
        if n:
            self.k[:, d_t, :, :n] = self.k[:, s_t, :, :n]
            self.v[:, d_t, :, :n] = self.v[:, s_t, :, :n]
        w = max(self.cross_width[s] for s in src)
        if cross and w:
            self.ck[:, d_t, :, :w] = self.ck[:, s_t, :, :w]
            self.cv[:, d_t, :, :w] = self.cv[:, s_t, :, :w]
        if cross and self.cmask is not None:  # all of it: the row it replaces may have had a longer source
            self.cmask[d_t] = self.cmask[s_t]

    def _ensure_capacity(self, added: int) -> None:
        need_rows, need_len, need_cross = self.rows, max(self.reserved), max(self.cross_reserved)
        have_rows = 0 if self.k is None else self.k.shape[1]
        have_len = 0 if self.k is None else self.k.shape[3]
        have_cross = 0 if self.ck is None else self.ck.shape[3]
        if need_rows <= have_rows and need_len <= have_len and need_cross <= have_cross:
            return
        rows = max(need_rows, have_rows, -(-need_rows // ROW_STEP) * ROW_STEP)
        length = -(-need_len // LENGTH_STEP) * LENGTH_STEP
        if self.budget_tokens is not None and rows * (length + need_cross) > self.budget_tokens:
            rows, length = need_rows, need_len  # the exact need fits (fits() said so)
        old = self.rows - added if self.k is not None else 0  # rows holding data: the ones before these
        filled, wide = max(self.lengths, default=0), max(self.cross_width, default=0)
        shape = (self.n_layers, rows, self.n_heads, length, self.head_dim)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if old and filled:
            k[:, :old, :, :filled] = self.k[:, :old, :, :filled]
            v[:, :old, :, :filled] = self.v[:, :old, :, :filled]
        ck = cv = cmask = None
        if need_cross:  # rows x encoder positions, for encoder-decoder models
            shape = (self.n_layers, rows, self.n_heads, need_cross, self.head_dim)
            ck = torch.zeros(shape, dtype=self.dtype, device=self.device)
            cv = torch.zeros(shape, dtype=self.dtype, device=self.device)
            cmask = torch.zeros(rows, need_cross, dtype=torch.bool, device=self.device)
            if old and wide:
                ck[:, :old, :, :wide] = self.ck[:, :old, :, :wide]
                cv[:, :old, :, :wide] = self.cv[:, :old, :, :wide]
                cmask[:old, :wide] = self.cmask[:old, :wide]
        self.k, self.v, self.ck, self.cv, self.cmask = k, v, ck, cv, cmask

    # -- one forward pass ------------------------------------------------------------------------

    def begin(self, rows, counts: list[int] | None = None, width: int = 1, cross_mask: torch.Tensor | None = None):
        """Set up the next forward pass: it runs `rows` (a range or a list of row indices), each
        bringing counts[i] <= width new tokens, right-aligned in a `width`-wide input (left padding);
        count 0 runs a row without changing it. `cross_mask` (B, S) 1/0: this pass stores the rows'
        encoder keys/values (`store_cross`), and the mask says which source positions are real."""
        self._settle()
        self._fwd = _Forward(self, rows, counts, width, cross_mask)

    @property
    def positions(self) -> torch.Tensor:
        """(B, T) position of each new token in its row (padding columns: clamped, harmless)."""
        return self._fwd.positions

    @property
    def key_length(self) -> int:
        """How many key positions this pass attends over (the longest row after it)."""
        return self._fwd.S

    def allowed(self, window: int | None = None) -> torch.Tensor | None:
        """(B, 1, T, S) booleans: key j visible from a new token at position p when j <= p (and
        p - window < j); None when every new token may see every key."""
        return self._fwd.allowed(window)

    def mask(self, dtype, window: int | None = None):
        """(mask, is_causal) for SDPA: None and the causal flag when SDPA can do it alone, else an
        additive (B, 1, T, S) mask (additive: a fully masked padding query must not give NaN)."""
        return self._fwd.mask(dtype, window)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write the valid new keys/values (B, H, T, D) of `layer`; return the rows' keys/values
        (B, H, S, D)."""
        return self._fwd.update(layer, k, v)

    def cross(self, layer: int):
        """The rows' stored encoder keys/values (B, H, S_enc, D), or None while this pass stores them."""
        return self._fwd.cross(layer)

    def store_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._fwd.store_cross(layer, k, v)

    def cross_mask(self, dtype) -> torch.Tensor:
        """Additive (B, 1, 1, S_enc) mask of the rows' real source positions."""
        return self._fwd.cross_mask(dtype)


class _Forward:
    """The rows, positions and masks of one forward pass; built by KVCache.begin."""

    def __init__(self, cache: KVCache, rows, counts, width, cross_mask):
        self.cache = cache
        device = cache.device
        if isinstance(rows, range) and rows.step == 1:
            self.index = slice(rows.start, rows.stop)
            rows = list(rows)
        else:
            rows = list(rows)
            self.index = slice(rows[0], rows[0] + 1) if len(rows) == 1 else torch.tensor(rows, device=device)
        self.rows = rows
        self.B, self.T = len(rows), width
        self.counts = [width] * self.B if counts is None else list(counts)
        if any(c > width or c < 0 for c in self.counts):
            raise ValueError(f"new token counts {self.counts} must be in [0, width={width}]")
        self.past = [cache.lengths[r] for r in rows]
        totals = [p + c for p, c in zip(self.past, self.counts)]
        for r, t in zip(rows, totals):
            if t > cache.reserved[r]:
                raise ValueError(f"KV cache overflow: row {r} would hold {t} positions, it reserved {cache.reserved[r]}")
        self.S = max(max(totals), 1)
        self.uniform = all(c == width for c in self.counts)
        self.same_total = len(set(totals)) == 1
        if self.uniform and width == 1:  # a decode step: each row's next position
            self.positions = torch.tensor(self.past, device=device)[:, None]
        else:  # (B, T); padding columns clamped (harmless)
            shift = torch.tensor([p - (width - c) for p, c in zip(self.past, self.counts)], device=device)
            self.positions = (shift[:, None] + torch.arange(width, device=device)).clamp(min=0)
        self._masks: dict = {}
        self._write = None
        self.complete = False
        if cross_mask is not None:
            if cross_mask.shape[0] != self.B:
                raise ValueError(f"cross_mask has {cross_mask.shape[0]} rows for {self.B} rows")
            self.cross_fill = True
            self.cross_S = cross_mask.shape[1]
            self.cmask = cross_mask.bool().to(device)
        else:
            self.cross_fill = False
            self.cross_S = max(max(cache.cross_width[r] for r in rows), 1)
            self.cmask = None

    # self-attention ---------------------------------------------------------------------------

    def allowed(self, window):
        key = ("allowed", window)
        if key not in self._masks:
            if window is None or self.S <= window:
                if self.same_total and self.T == 1:
                    self._masks[key] = None
                    return None
            keys = torch.arange(self.S, device=self.cache.device)
            q = self.positions[:, :, None]  # (B, T, 1)
            allowed = keys <= q
            if window is not None:
                allowed = allowed & (keys > q - window)
            self._masks[key] = allowed[:, None]  # (B, 1, T, S)
        return self._masks[key]

    def mask(self, dtype, window):
        key = ("mask", dtype, window)
        if key not in self._masks:
            whole = window is None or self.S <= window
            if whole and self.same_total and self.uniform and (self.T == 1 or not any(self.past)):
                out = (None, self.T > 1)  # one new token sees every key; a fresh prompt is plainly causal
            else:
                allowed = self.allowed(window)
                if allowed is None:
                    out = (None, False)
                else:
                    zero = torch.zeros((), dtype=dtype, device=self.cache.device)
                    out = (torch.where(allowed, zero, torch.finfo(dtype).min), False)
            self._masks[key] = out
        return self._masks[key]

    def update(self, layer, k, v):
        cache = self.cache
        K, V = cache.k[layer], cache.v[layer]  # (rows_cap, H, len_cap, D)
        if self.B == 1:
            r, p, c = self.rows[0], self.past[0], self.counts[0]
            if c:
                K[r, :, p:p + c] = k[0, :, self.T - c:]
                V[r, :, p:p + c] = v[0, :, self.T - c:]
        else:
            if self._write is None:
                self._write = self._write_index()
            row_idx, pos_idx, valid = self._write
            if valid is None:  # every row writes all T columns
                K[row_idx, :, pos_idx] = k.transpose(1, 2)
                V[row_idx, :, pos_idx] = v.transpose(1, 2)
            elif row_idx.numel():
                K[row_idx, :, pos_idx] = k.transpose(1, 2)[valid]  # (N_valid, H, D)
                V[row_idx, :, pos_idx] = v.transpose(1, 2)[valid]
        if layer == cache.n_layers - 1:
            self.complete = True
        return K[self.index, :, :self.S], V[self.index, :, :self.S]

    def _write_index(self):
        device = self.cache.device
        rows = torch.tensor(self.rows, device=device)[:, None].expand(self.B, self.T)
        if self.uniform:
            return rows, self.positions, None
        cols = torch.arange(self.T, device=device)
        valid = cols >= torch.tensor([self.T - c for c in self.counts], device=device)[:, None]  # (B, T)
        return rows[valid], self.positions[valid], valid

    def commit(self):
        cache = self.cache
        for r, c in zip(self.rows, self.counts):
            cache._lengths[r] += c
        if self.cross_fill:
            for r in self.rows:  # a batch's padding past a row's own source is masked: keep what it reserved
                cache.cross_width[r] = min(self.cross_S, cache.cross_reserved[r])

    # cross-attention ---------------------------------------------------------------------------

    def cross(self, layer):
        if self.cross_fill:
            return None
        cache = self.cache
        return cache.ck[layer][self.index, :, :self.cross_S], cache.cv[layer][self.index, :, :self.cross_S]

    def store_cross(self, layer, k, v):
        if not self.cross_fill:
            raise ValueError("store_cross() needs a pass begun with cross_mask")
        cache = self.cache
        S = k.shape[2]
        if S != self.cross_S:
            raise ValueError(f"cross keys have {S} positions, the cross mask {self.cross_S}")
        if cache.ck is None or cache.ck.shape[3] < S:
            raise ValueError(f"cross keys of {S} positions: the rows reserved {0 if cache.ck is None else cache.ck.shape[3]}")
        cache.ck[layer][self.index, :, :S] = k
        cache.cv[layer][self.index, :, :S] = v
        if layer == 0:
            cache.cmask[self.index, :S] = self.cmask
            cache.cmask[self.index, S:] = False

    def cross_mask(self, dtype):
        key = ("cross", dtype)
        if key not in self._masks:
            real = self.cmask if self.cross_fill else self.cache.cmask[self.index, :self.cross_S]
            self._masks[key] = (1.0 - real[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        return self._masks[key]
