"""The generation engine: a scheduler that steps a changing set of sequences together
(continuous batching).

    engine = Engine(model, kv_budget_tokens=16384, max_rows=64, prefill_chunk=512)
    handle = engine.submit(prompt_ids, config, decode=tokenizer.decode, logprobs=True, top_logprobs=5)
    while engine.has_work():
        for event in engine.step():      # one scheduler step: a list of Event
            ...                          # event.handle, .index, .token, .logprob, .top_logprobs, .finish_reason
    engine.cancel(handle)                # from any thread; the sequence leaves at the next step

Threads: `submit` and `cancel` may be called from any thread (they only queue); `step` must be
called by ONE thread, the one that owns the model — a server's worker loops on it. `events(handle)`
is the generator form for a caller that drives its own engine (a pipeline call, a stream): it
steps until that request is done, yields its events, and cancels the request if the consumer
stops iterating.

A step:
  1. takes the queued submits and cancels; a cancelled sequence's rows are freed at once;
  2. admits waiting requests, oldest first, while their KV rows fit the budget (`max_rows`
     sequences, `kv_budget_tokens` positions: rows x (prompt + max_new_tokens, and the encoder
     source)); the oldest one that doesn't fit waits, and the ones behind it with it (with
     oversized="alone", a request larger than the whole budget runs once the cache is empty);
  3. prefills: up to `prefill_chunk` prompt tokens of newly admitted requests (lowest `priority`
     first, then oldest) in one forward pass (a long prompt in several steps; an encoder-decoder
     runs its encoder and the decoder's start token), so running sequences keep getting tokens
     between a long prompt's chunks;
  4. decodes: one forward pass over every running row, each at its own length;
  5. chooses each row's next token — logits processors and sampling batched over the rows that
     share settings, each seeded request drawing from its own torch.Generator — and advances
     the beam groups; finished sequences ("stop": an eos token, "stop_string", "length") leave.

Each request carries its own GenerationConfig: greedy or sampling (temperature, top_k, top_p),
repetition_penalty, no_repeat_ngram_size, bad_words_ids, min/max new tokens, eos ids, stop
strings, forced BOS/EOS, seed, num_return_sequences; beam search (num_beams > 1) runs each
request's beams as a group, groups admitted together searching as one batch. Greedy and beam
results are token for token transformers 4.57.6's for the prompt alone, whatever else runs.

Results: `handle.tokens[i]` (new token ids of sequence i), `handle.finish_reasons[i]`,
`handle.token_logprobs[i]` (with logprobs=True), `handle.done`; usage counts are
`handle.counts()`. A request larger than the whole budget is a ValueError at submit, naming it
(unless oversized="alone").
"""

from __future__ import annotations

import threading
from collections import deque

import torch

from ..models.base import Model
from .beams import BeamBatch, log_softmax
from .processors import History, Rows, choose, completes_stop, process, stop_window
from .request import Event, Handle, build_handle

KV_BUDGET_TOKENS = 16384  # KV positions (rows x longest reservation): ~1.2 GB for GPT-2 small in float32
MAX_ROWS = 64  # sequences stepped together
PREFILL_CHUNK = 512  # prompt tokens per prefill pass


class _Slot:
    """One KV cache row: a sampled/greedy sequence, or one beam of a group."""

    __slots__ = ("handle", "index", "row", "phase", "next_token", "fed", "batch")

    def __init__(self, handle: Handle, index: int, row: int, phase: str):
        self.handle, self.index, self.row, self.phase = handle, index, row, phase
        self.next_token = 0
        self.fed = 0  # prompt tokens prefilled (the lead row)
        self.batch: BeamBatch | None = None

    # phases: "prefill" (the lead row reads the prompt), "wait" (a sibling of the lead, filled
    # from it when the prompt is read), "first" (prompt read, its first token is being chosen),
    # "decode" (fed `next_token` each step), "done"


class Engine:
    def __init__(self, model, *, kv_budget_tokens: int | None = KV_BUDGET_TOKENS, max_rows: int = MAX_ROWS,
                 prefill_chunk: int = PREFILL_CHUNK, oversized: str = "error"):
        """kv_budget_tokens=None: no budget (one static batch, as transformers' generate()).
        oversized: what a request larger than the whole budget gets — "error" (a ValueError at
        submit: a server's choice, whose budget is its memory), or "alone" (it waits for the
        running ones to finish, then runs by itself: a pipeline call's, where a single prompt
        always runs)."""
        if oversized not in ("error", "alone"):
            raise ValueError(f'`oversized` must be "error" or "alone", got {oversized!r}')
        if not isinstance(model, Model):
            raise TypeError(f"`model` must be a lightpipe model (lightpipe.models.base.Model), "
                            f"got {type(model).__name__}")
        for name, value in (("kv_budget_tokens", kv_budget_tokens), ("max_rows", max_rows),
                            ("prefill_chunk", prefill_chunk)):
            if value is None and name == "kv_budget_tokens":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        self.model = model
        self.cache = model.new_cache(kv_budget_tokens)  # a model that can't generate says so here
        self.device = self.cache.device
        self.enc_dec = model.is_encoder_decoder
        self.max_rows, self.prefill_chunk, self.oversized = max_rows, prefill_chunk, oversized
        self.history = History(self.device)
        self._lock = threading.Lock()
        self._inbox: deque = deque()
        self._waiting: deque[Handle] = deque()
        self._slots: list[_Slot] = []  # by KV row
        self._prefilling: list[Handle] = []  # admitted, prompt not read yet (FIFO)
        self._batches: list[BeamBatch] = []
        self._active: dict[int, list[_Slot]] = {}  # handle id -> its slots

    @property
    def kv_budget_tokens(self) -> int:
        return self.cache.budget_tokens

    # -- the caller's side (any thread) ----------------------------------------------------------

    def submit(self, prompt, config=None, *, decode=None, logprobs: bool = False, top_logprobs: int = 0,
               source_mask=None, history_prefix=None, priority: int = 0, **overrides) -> Handle:
        """Queue a request; it joins the running batch at a coming step. `prompt`: token ids (a
        decoder-only prompt, or an encoder-decoder's source with an optional 1/0 `source_mask`);
        `config`: a GenerationConfig, `overrides` on top of it; `decode` (ids -> text) for stop
        strings; `history_prefix`: tokens the logits processors see before the prompt though the
        model doesn't (a left-padded batch's pads, as transformers' batched generate sees them);
        `priority`: admitted requests' prompts are read lowest first (then in arrival order), so
        a server can give a stream's prompt (0) the next prefill pass ahead of a large batch's (1);
        admission itself stays first come, first served."""
        with torch.inference_mode():
            handle = build_handle(self.model, prompt, config, decode=decode, logprobs=logprobs,
                                  top_logprobs=top_logprobs, source_mask=source_mask, history_prefix=history_prefix,
                                  device=self.device, **overrides)
        handle.priority = priority
        need = handle.n_rows * (handle.reserve + handle.cross)
        if self.oversized == "error" and self.cache.budget_tokens is not None and need > self.cache.budget_tokens:
            what = "source + " if handle.encoder_decoder else ""
            raise ValueError(
                f"this request needs {need} KV cache positions ({handle.n_rows} row(s) x ({what}prompt + new "
                f"tokens)) but the engine's kv_budget_tokens is {self.cache.budget_tokens}; raise kv_budget_tokens "
                "or ask for fewer tokens")
        with self._lock:
            self._inbox.append(("submit", handle))
        return handle

    def cancel(self, handle: Handle) -> None:
        """Stop a request: its rows are freed at the next step and it gets no more events."""
        with self._lock:
            self._inbox.append(("cancel", handle))

    def has_work(self) -> bool:
        with self._lock:
            queued = bool(self._inbox)
        return queued or bool(self._waiting) or bool(self._active)

    # -- generators -------------------------------------------------------------------------------

    def events(self, handle: Handle | None = None):
        """Step until `handle` (or every request) is done, yielding its (their) events. Closing
        the generator early cancels `handle` and frees its rows at once."""
        try:
            while not (handle.done if handle is not None else not self.has_work()):
                for event in self.step():
                    if handle is None or event.handle is handle:
                        yield event
        finally:
            if handle is not None and not handle.done:
                self.cancel(handle)
                self._take_inbox()

    def run(self, handles: list[Handle]) -> list[Handle]:
        """Step until every handle is done."""
        while not all(h.done for h in handles):
            self.step()
        return handles

    # -- one step (the worker thread) -------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """One scheduler step; the events it produced (a token per running sequence, the
        finished beam groups' sequences)."""
        self._take_inbox()
        try:
            self._admit()
            events: list[Event] = []
            first = self._prefill()
            decoded = self._decode()
            events += self._choose(first, decoded)
            events += self._step_beams(first, decoded)
            self._retire()
        except BaseException as e:
            self._fail_all(e)
            raise
        return events

    def _take_inbox(self) -> None:
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
        for kind, handle in items:
            if kind == "submit":
                self._waiting.append(handle)
            elif not handle.done:
                handle.cancelled = True
                if handle in self._waiting:
                    self._waiting.remove(handle)
                    handle.done = True
                elif handle.id in self._active:
                    self._drop(handle)
                    self._retire()

    def _fail_all(self, error: BaseException) -> None:
        """After an error in a step: every admitted request fails with it; the engine stays usable."""
        for slots in list(self._active.values()):
            slots[0].handle.error = error
            self._drop(slots[0].handle)
        self._retire()

    def _drop(self, handle: Handle) -> None:
        """Take a request out of everything; its rows are freed by _retire."""
        for slot in self._active.get(handle.id, []):
            slot.phase = "done"
        if handle in self._prefilling:
            self._prefilling.remove(handle)
        for batch in self._batches:
            if handle in batch.handles:
                batch.drop([g for g, h in enumerate(batch.handles) if h is not handle])
        self._batches = [b for b in self._batches if b.handles]
        handle.done = True

    # -- admission and prefill --------------------------------------------------------------------

    def _admit(self) -> None:
        while self._waiting:
            h = self._waiting[0]
            busy = self.cache.rows
            if busy and (busy + h.n_rows > self.max_rows or not self.cache.fits(h.n_rows, h.reserve, h.cross)):
                return  # first come, first served: later requests wait behind it
            self._waiting.popleft()  # an oversized request ("alone") is admitted only into an empty cache
            rows = self.cache.add_rows(h.n_rows, h.reserve, h.cross, over_budget=not busy)
            slots = []
            for i, row in enumerate(rows):
                slot = _Slot(h, i, row, "prefill" if i == 0 else "wait")
                self._slots.append(slot)
                self.history.add(h.start, len(h.start) + h.max_new)
                slots.append(slot)
            self._active[h.id] = slots
            # after every prompt of its priority or a lower one (sorted: a stable insert)
            place = next((i for i, other in enumerate(self._prefilling) if other.priority > h.priority),
                         len(self._prefilling))
            self._prefilling.insert(place, h)

    def _prefill(self):
        """One prefill pass; the requests whose prompt is now read, with their next-token logits."""
        if not self._prefilling:
            return []
        if self.enc_dec:
            return self._prefill_encoder_decoder()
        chosen, width = [], 0
        for h in self._prefilling:
            lead = self._active[h.id][0]
            take = min(len(h.prompt) - lead.fed, self.prefill_chunk)
            wider = max(width, take)
            if chosen and wider * (len(chosen) + 1) > self.prefill_chunk:
                break
            chosen.append((h, lead, take))
            width = wider
        ids = torch.zeros((len(chosen), width), dtype=torch.long)
        for b, (h, lead, take) in enumerate(chosen):  # right-aligned: the last column is each row's last token
            ids[b, width - take:] = torch.tensor(h.prompt[lead.fed:lead.fed + take])
        self.cache.begin(_rows([lead.row for _, lead, _ in chosen]), [take for *_, take in chosen], width)
        logits = self.model(ids.to(self.device), cache=self.cache, logits_to_keep=1)[:, -1]
        done, keep = [], []
        for b, (h, lead, take) in enumerate(chosen):
            lead.fed += take
            if lead.fed == len(h.prompt):
                done.append((h, b))
            else:
                keep.append(h)
        self._prefilling = keep + self._prefilling[len(chosen):]
        return self._first(done, logits)

    def _prefill_encoder_decoder(self):
        chosen, width = [], 0
        for h in self._prefilling:
            wider = max(width, len(h.prompt))
            if chosen and wider * (len(chosen) + 1) > self.prefill_chunk:
                break
            chosen.append(h)
            width = wider
        ids = torch.zeros((len(chosen), width), dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for b, h in enumerate(chosen):  # right-padded: encoder positions don't move
            ids[b, :len(h.prompt)] = torch.tensor(h.prompt)
            mask[b, :len(h.prompt)] = torch.tensor(h.source_mask)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model.encode(ids, mask)
        leads = [self._active[h.id][0] for h in chosen]
        start = torch.tensor([[h.start[0]] for h in chosen], device=self.device)
        self.cache.begin(_rows([s.row for s in leads]), None, 1, cross_mask=mask)
        logits = self.model.decode(start, hidden, mask, cache=self.cache)[:, -1]
        self._prefilling = self._prefilling[len(chosen):]
        return self._first([(h, b) for b, h in enumerate(chosen)], logits)

    def _first(self, done, logits):
        """Requests whose prompt is read: fill the siblings' rows from the lead's, and hand each
        row the lead's logits for its first token."""
        out = []
        for h, b in done:
            slots = self._active[h.id]
            if len(slots) > 1:
                lead = slots[0]
                self.cache.copy_rows([lead.row] * (len(slots) - 1), [s.row for s in slots[1:]], cross=True)
            for s in slots:
                s.phase = "first"
            out.append((h, logits[b]))
        return out

    # -- decode -----------------------------------------------------------------------------------

    def _decode(self):
        """One pass over every row: rows in "decode" feed their next token, the others (still
        reading a prompt) run with nothing to write. Logits (rows, V), or None."""
        running = [s.phase == "decode" for s in self._slots]
        if not any(running):
            return None
        ids = torch.tensor([[s.next_token if r else 0] for s, r in zip(self._slots, running)], device=self.device)
        self.cache.begin(range(len(self._slots)), None if all(running) else [int(r) for r in running], 1)
        if self.enc_dec:
            return self.model.decode(ids, cache=self.cache)[:, -1]
        return self.model(ids, cache=self.cache)[:, -1]

    # -- choosing tokens (greedy and sampling) ----------------------------------------------------

    def _choose(self, first, decoded) -> list[Event]:
        """The next token of every greedy/sampling row with logits this step."""
        firsts = {h.id: x for h, x in first if not h.beams}
        slots, rows = [], []  # rows: where each slot's logits are ([decoded..., firsts...])
        for s in self._slots:
            if s.batch is not None or s.handle.beams:
                continue
            if s.phase == "decode" and decoded is not None:
                slots.append(s)
                rows.append(s.row)
        if not slots and not firsts:
            return []
        plain = len(slots) == len(self._slots) and not firsts and rows == list(range(len(rows)))
        if not plain:
            extra = []
            for s in self._slots:
                if s.phase == "first" and s.handle.id in firsts:
                    slots.append(s)
                    extra.append(firsts[s.handle.id])
            parts = ([decoded[torch.tensor(rows, device=self.device)]] if rows else []) + \
                ([torch.stack(extra)] if extra else [])
            logits = torch.cat(parts)
        else:
            logits = decoded
        groups: dict = {}
        for i, s in enumerate(slots):
            groups.setdefault(s.handle.settings, []).append(i)
        tokens = torch.empty(len(slots), dtype=torch.long, device=self.device)
        want_lp = [i for i, s in enumerate(slots) if s.handle.logprobs]
        lp = torch.zeros(len(slots), device=self.device) if want_lp else None
        tops: dict[int, tuple] = {}
        for settings, idx in groups.items():
            whole = len(idx) == len(slots)
            index = None if whole else torch.tensor(idx, device=self.device)
            scores = (logits if whole else logits[index]).float()
            members = [slots[i] for i in idx]
            scores = process(scores, settings, self._rows_of(members), self.history)
            top_n = max(s.handle.top_logprobs for s in members)
            wants = any(s.handle.logprobs for s in members)
            choice = choose(scores, settings, [s.handle.generator for s in members], [s.index for s in members],
                            top_n, wants)
            if whole:
                tokens = choice.tokens
                if wants:
                    lp = choice.logprobs
            else:
                tokens[index] = choice.tokens
                if wants:
                    lp[index] = choice.logprobs
            if choice.top_ids is not None:
                ids, values = choice.top_ids.tolist(), choice.top_logprobs.tolist()
                for j, i in enumerate(idx):
                    tops[i] = (ids[j], values[j])
        keep = [i for i, s in enumerate(slots) if s.handle.settings.needs_history]  # the others never read it
        if len(keep) == len(slots):
            self.history.append([s.row for s in slots], tokens)
        elif keep:
            self.history.append([slots[i].row for i in keep], tokens[torch.tensor(keep, device=self.device)])
        token_list = tokens.tolist()  # the step's one host sync
        lp_list = lp.tolist() if lp is not None else None
        events = []
        for i, (s, token) in enumerate(zip(slots, token_list)):
            h = s.handle
            seq = h.tokens[s.index]
            seq.append(token)
            logprob = top = None
            if h.logprobs:
                logprob = lp_list[i]
                h.token_logprobs[s.index].append(logprob)
                if h.top_logprobs and i in tops:
                    top = list(zip(*(x[:h.top_logprobs] for x in tops[i])))
            reason = None
            if token in h.settings.eos:
                reason = "stop"
            elif h.config.stop and completes_stop((h.stop_tail + seq)[-stop_window(h.config.stop):], h.config.stop,
                                                  h.decode):
                reason = "stop_string"
            elif len(seq) >= h.max_new:
                reason = "length"
            s.next_token = token
            s.phase = "decode" if reason is None else "done"
            if reason is not None:
                h.finish_reasons[s.index] = reason
            events.append(Event(h, s.index, token, logprob, top, reason))
        return events

    def _rows_of(self, slots: list[_Slot]) -> Rows:
        rows = [s.row for s in slots]
        if slots[0].handle.beams:
            generated = [s.batch.t if s.batch is not None else 0 for s in slots]
        else:
            generated = [len(s.handle.tokens[s.index]) for s in slots]
        return Rows(rows, generated, [len(s.handle.start) + g for s, g in zip(slots, generated)],
                    [s.handle.max_new for s in slots], [s.handle.min_new for s in slots])

    # -- beams ------------------------------------------------------------------------------------

    def _step_beams(self, first, decoded) -> list[Event]:
        events = []
        new: dict = {}
        for h, logits in first:
            if h.beams:
                new.setdefault(BeamBatch.key(h), []).append((h, logits))
        for batch in self._batches:
            slots = [s for h in batch.handles for s in self._active[h.id]]
            events += self._beam_step(batch, slots, decoded[torch.tensor([s.row for s in slots], device=self.device)])
        for members in new.values():
            batch = BeamBatch([h for h, _ in members], self.device)
            slots = [s for h, _ in members for s in self._active[h.id]]
            for s in slots:
                s.batch = batch
            nb = batch.nb
            logits = torch.stack([x for _, x in members]).repeat_interleave(nb, dim=0)
            self._batches.append(batch)
            events += self._beam_step(batch, slots, logits)
        self._batches = [b for b in self._batches if b.handles]
        return events

    def _beam_step(self, batch: BeamBatch, slots: list[_Slot], logits) -> list[Event]:
        log_probs = log_softmax(logits)
        log_probs = process(log_probs, batch.settings, self._rows_of(slots), self.history)
        tails = self.history.tails([s.row for s in slots], stop_window(batch.stops)) if batch.stops else None
        sources, tokens, over = batch.step(log_probs, tails)
        nb = batch.nb
        src, dst, flat = [], [], []
        for g in range(len(batch.handles)):
            group = slots[g * nb:(g + 1) * nb]
            for j, s in enumerate(group):
                if sources[g][j] != j:
                    src.append(group[sources[g][j]].row)
                    dst.append(s.row)
                s.next_token = tokens[g][j]
                s.phase = "decode"
                flat.append(tokens[g][j])
        self.cache.copy_rows(src, dst)  # beams re-ranked: each continues from its source's keys
        self.history.copy(src, dst)
        self.history.append([s.row for s in slots], torch.tensor(flat, device=self.device))
        events, keep = [], []
        for g, h in enumerate(batch.handles):
            if not over[g]:
                keep.append(g)
                continue
            for i, (tokens_i, reason) in enumerate(batch.results(g)):
                h.tokens[i] = tokens_i
                h.finish_reasons[i] = reason
                events.append(Event(h, i, None, None, None, reason))
            for s in self._active[h.id]:
                s.phase = "done"
        if len(keep) < len(batch.handles):
            batch.drop(keep)
        return events

    # -- leaving ----------------------------------------------------------------------------------

    def _retire(self) -> None:
        """Free the rows of finished (or cancelled) sequences; mark requests done."""
        gone = [s.row for s in self._slots if s.phase == "done"]
        if not gone:
            return
        for s in self._slots:
            if s.phase == "done":
                slots = self._active.get(s.handle.id)
                if slots is not None and all(x.phase == "done" for x in slots):
                    del self._active[s.handle.id]
                    s.handle.done = True
        moves = self.cache.remove_rows(gone)
        keep = self.cache.rows
        for src, dst in moves:
            self._slots[dst] = self._slots[src]
            self._slots[dst].row = dst
        del self._slots[keep:]
        self.history.remove(moves, keep)


def _rows(rows: list[int]):
    """A range when the rows are consecutive (the cache then reads views, not copies)."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return range(rows[0], rows[0] + len(rows))
    return rows
