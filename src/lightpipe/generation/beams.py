"""Beam search for groups of beams (one request each) that started in the same step and search
alike: transformers 4.57's vectorised `_beam_search`, one step per call, with each group
leaving as soon as its own search is over.

Per group it gives what transformers' batched beam search gives that prompt: a group whose
search is over (no running beam can beat its finished ones, or all finished with
early_stopping=True, or every candidate ended) never changes again in transformers either, it
just keeps being computed until the whole batch is done.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .processors import Settings, completes_stop, stop_window, warp_full
from .request import Handle


def _gather(t, idx):
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


class BeamBatch:
    """The search state of G groups of `num_beams` rows (group-major), as tensors."""

    def __init__(self, handles: list[Handle], device):
        h = handles[0]
        cfg = h.config
        self.handles = handles
        self.settings: Settings = h.settings
        self.nb = nb = cfg.num_beams
        self.length_penalty, self.early_stopping = cfg.length_penalty, cfg.early_stopping
        eos = list(self.settings.eos)
        self.keep = max(2, 1 + len(eos)) * nb
        self.eos_t = torch.tensor(eos, device=device) if eos else None
        self.min_keep = len(eos) + 1 if eos else 2
        pad = cfg.pad_token_id
        self.fill = (pad or eos[0]) if eos else -1  # transformers' `pad_token_id or eos_token_id[0]`
        self.stops = list(cfg.stop or ())
        G, M = len(handles), max(x.max_new for x in handles)
        self.device = device
        self.t = 0  # new tokens so far
        self.max_new = torch.tensor([x.max_new for x in handles], device=device)
        self.running = torch.full((G, nb, M), self.fill, dtype=torch.long, device=device)
        self.sequences = self.running.clone()
        self.running_scores = torch.zeros((G, nb), dtype=torch.float, device=device)
        self.running_scores[:, 1:] = -1e9
        self.scores = torch.full((G, nb), -1e9, dtype=torch.float, device=device)
        self.finished = torch.zeros((G, nb), dtype=torch.bool, device=device)
        self.improvable = torch.ones((G, 1), dtype=torch.bool, device=device)
        self.running_index = torch.full((G, nb, M), -1, dtype=torch.int32, device=device)
        self.index = self.running_index.clone()
        self.top_nb = torch.cat((torch.ones(nb, dtype=torch.bool), torch.zeros(self.keep - nb, dtype=torch.bool))).to(device)

    @classmethod
    def key(cls, h: Handle) -> tuple:
        """Requests whose groups can search in one batch."""
        c = h.config
        return c.num_beams, h.settings, c.length_penalty, c.early_stopping, tuple(c.stop or ())

    def step(self, log_probs: torch.Tensor, tails: list[list[int]] | None):
        """Advance every group by one token. log_probs (G * nb, V): the processed log-softmax of
        each beam's logits; `tails`: each beam's last tokens (stop strings only).

        Returns (source beam of each new beam (G, nb), its new token (G, nb), done (G,) bools) as lists.
        """
        G, nb, keep, t = len(self.handles), self.nb, self.keep, self.t
        V = log_probs.shape[-1]
        if self.settings.do_sample:
            log_probs = warp_full(log_probs, self.settings, self.min_keep)
        log_probs = (log_probs.view(G, nb, V) + self.running_scores[:, :, None]).view(G, nb * V)

        # the top `keep` continuations over all beams
        if self.settings.do_sample:
            probs = log_probs.softmax(-1)
            topk_indices = torch.cat([torch.multinomial(probs[g:g + 1], num_samples=keep, generator=h.generator)
                                      for g, h in enumerate(self.handles)])
            topk_log_probs = log_probs.gather(1, topk_indices)
        else:
            topk_log_probs, topk_indices = torch.topk(log_probs, k=keep)
        topk_beam = topk_indices // V
        offset = torch.arange(G, device=self.device)[:, None] * nb
        topk_running_index = _gather(self.running_index, topk_beam)
        topk_running = _gather(self.running, topk_beam)
        topk_running[:, :, t] = topk_indices % V
        topk_running_index[:, :, t] = (topk_beam + offset).to(torch.int32)

        # which of them stop here
        hits = (t + 1 >= self.max_new)[:, None].expand(G, keep).clone()
        last = topk_running[:, :, t]
        if self.eos_t is not None:
            hits |= torch.isin(last, self.eos_t)
        if self.stops:
            hits |= self._stop_hits(topk_beam, last, tails)

        # the best `nb` unfinished continue
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        next_topk = torch.topk(topk_running_log_probs, k=nb)[1]
        self.running = _gather(topk_running, next_topk)
        self.running_scores = _gather(topk_running_log_probs, next_topk)
        self.running_index = _gather(topk_running_index, next_topk)

        # finished ones among the top `nb` compete for the final slots, with the length penalty
        just_finished = hits & self.top_nb[None, :]
        finished_scores = topk_log_probs / ((t + 1) ** self.length_penalty)
        beams_full = torch.all(self.finished, dim=-1, keepdim=True) & (self.early_stopping is True)
        finished_scores += beams_full.to(torch.float32) * -1.0e9
        finished_scores += (~self.improvable).to(torch.float32) * -1.0e9
        finished_scores += (~just_finished) * -1.0e9
        merged = torch.cat((self.scores, finished_scores), dim=1)
        best = torch.topk(merged, k=nb)[1]
        self.sequences = _gather(torch.cat((self.sequences, topk_running), dim=1), best)
        self.scores = _gather(merged, best)
        self.index = _gather(torch.cat((self.index, topk_running_index), dim=1), best)
        self.finished = _gather(torch.cat((self.finished, just_finished), dim=1), best)

        # is each group's search over? (transformers' _check_early_stop_heuristic and
        # _beam_search_has_unfinished_sequences, per group)
        source = self.running_index[..., t].long() - offset
        self.t = t = t + 1
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_len = self.max_new[:, None].float()
        else:
            best_len = float(t)
        best_running = self.running_scores[:, :1] / (best_len**self.length_penalty)
        worst_finished = torch.where(self.finished, torch.min(self.scores, dim=1, keepdim=True)[0], -1.0e9)
        self.improvable = self.improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        over = ~self.improvable[:, 0] | (torch.all(self.finished, dim=-1) & (self.early_stopping is True)) | hits.all(-1)
        tokens = self.running[:, :, t - 1]
        out = torch.cat((source, tokens, over[:, None].long()), dim=1).tolist()  # one host sync
        return [r[:nb] for r in out], [r[nb:2 * nb] for r in out], [bool(r[-1]) for r in out]

    def _stop_hits(self, topk_beam, last, tails):
        """(G, keep): the candidate completes a stop string (its beam's tail plus its token)."""
        G, keep = last.shape
        beam, token = topk_beam.tolist(), last.tolist()
        window = stop_window(self.stops)
        out = []
        for g, h in enumerate(self.handles):
            for j in range(keep):
                tail = (tails[g * self.nb + beam[g][j]] + [token[g][j]])[-window:]
                out.append(completes_stop(tail, self.stops, h.decode))
        return torch.tensor(out, dtype=torch.bool, device=self.device).view(G, keep)

    def results(self, g: int) -> list[tuple[list[int], str]]:
        """Group g's returned sequences (new tokens) and why each ended."""
        h = self.handles[g]
        lengths = (self.index[g, :h.n_out] + 1).bool().sum(-1).tolist()
        rows = self.sequences[g, :h.n_out].tolist()
        eos = set(self.settings.eos)
        out = []
        for row, n in zip(rows, lengths):
            tokens = row[:n]
            if tokens and tokens[-1] in eos:
                reason = "stop"
            elif self.stops and tokens and completes_stop((h.start + tokens)[-stop_window(self.stops):], self.stops,
                                                          h.decode):
                reason = "stop_string"
            else:
                reason = "length"
            out.append((tokens, reason))
        return out

    def drop(self, keep: list[int]) -> None:
        """Keep only groups `keep` (the others are done)."""
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.handles = [self.handles[g] for g in keep]
        for name in ("max_new", "running", "sequences", "running_scores", "scores", "finished", "improvable",
                     "running_index", "index"):
            setattr(self, name, getattr(self, name).index_select(0, index))


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), dim=-1)
