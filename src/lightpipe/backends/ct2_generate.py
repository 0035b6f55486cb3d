"""Generation through CTranslate2 (`pipeline(..., backend="ctranslate2")` on a text-generation,
summarization, translation or text2text model): a `ctranslate2.Generator` (decoder-only) or
`ctranslate2.Translator` (encoder-decoder) built from lightpipe's loaded weights, fed token
ids, answering in the torch engine's output shapes.

Prompts run in static batches (CTranslate2 pads and masks them itself): the pipeline's
prompts sorted by length, `batch_size` at a time, grouped by the lengths they resolve to.
Lengths resolve as the torch engine resolves them (`resolve_lengths`: max_new_tokens /
max_length, min_new_tokens / min_length, the context's end).

How GenerationConfig maps (docs/python.md, "Backends"):
  greedy / sampling   sampling_topk 1 / top_k (0: the whole vocabulary), sampling_topp,
                      sampling_temperature; `seed`: ctranslate2.set_random_seed, then a fresh
                      engine (`engine_for`): a seeded call repeats
  beam search         beam_size, length_penalty, num_hypotheses (num_return_sequences);
                      early_stopping: CTranslate2's own rule (patience 1), close to True in
                      transformers; its penalties and bans act before a step's log-softmax,
                      transformers' after, so penalized beams may rank differently
  penalties           repetition_penalty, no_repeat_ngram_size, bad_words_ids (suppress_sequences);
                      they only see the tokens CTranslate2's loop went through, so with them a
                      decoder-only prompt is replayed through the loop (`Plan.replayed`)
  ends                eos_token_id (end_token, returned as transformers returns it), min/max
                      new tokens; forced_bos_token_id on an encoder-decoder (target_prefix);
                      forced_eos_token_id: the last position is eos (one step fewer is asked
                      for and eos appended to rows the length cut)
  stop strings        `stop` / stop_strings: greedy and sampling generate on and the tokens
                      after the one completing a stop string are cut (the same tokens); refused
                      with beams
What it can't honour is a ValueError naming the option: beam sampling (do_sample with
num_beams > 1), forced_bos_token_id on a decoder-only model, a decoder start other than the
one the model was built with.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from ..generation.processors import completes_stop, stop_window
from ..generation.request import as_ids, resolve_lengths

BACKEND = "backend='ctranslate2'"
_SEED_LOCK = threading.Lock()  # set_random_seed is process-wide: a seeded call holds it while it samples


@dataclass
class Rows:
    """What GenerationPipeline.output_rows reads of a torch Handle."""

    prompt: list[int]
    start: list[int]
    tokens: list[list[int]] = field(default_factory=list)


class Ctranslate2Generation:
    """A CTranslate2 Generator / Translator standing in for the torch engine of a generation
    pipeline (`model.generation_backend`)."""

    def __init__(self, load, model, encoder_decoder: bool, compute_type: str, start: int | None = None,
                 files=None):
        """`load()`: a new CTranslate2 engine on the model's files (`files`, kept with this
        object: a seeded call loads a fresh engine, see `engine_for`)."""
        self.load, self.files = load, files
        self.engine = load()
        self.model, self.encoder_decoder = model, encoder_decoder
        self.compute_type, self.start = compute_type, start

    def __repr__(self) -> str:
        kind = "Translator" if self.encoder_decoder else "Generator"
        return f"Ctranslate2Generation({kind}, compute_type={self.compute_type!r})"

    # -- the pipeline's calls --------------------------------------------------------------

    def generate(self, pipeline, prompts: list[list[int]], config, batch_size=None) -> list[list[list[int]]]:
        """Each prompt's rows as GenerationPipeline.generate returns them."""
        given, prompts = prompts, [self.prompt(p, config) for p in prompts]
        plans = [self.plan(p, config) for p in prompts]
        size = batch_size or 16
        results: list = [None] * len(prompts)
        groups: dict = {}
        for i, plan in enumerate(plans):
            # one batch, one set of lengths (a replayed prompt's count it: one prompt length a batch)
            groups.setdefault((plan.max_new, plan.min_new, plan.replayed), []).append(i)
        for members in groups.values():
            self.run_group(members, prompts, plans, config, size, results)
        out = []
        for i, prompt in enumerate(prompts):
            rows = [plans[i].finish(t, pipeline.tokenizer.decode) for t in results[i]]
            start = [self.start] if self.encoder_decoder else prompt
            out.append(pipeline.output_rows(Rows(prompt, start, rows), given[i], config))
        return out

    def run_group(self, members: list[int], prompts, plans, config, size: int, results: list) -> None:
        """Prompts of one plan, longest first, `size` at a time (like lengths share a batch)."""
        members = sorted(members, key=lambda i: len(prompts[i]), reverse=True)
        for at in range(0, len(members), size):
            chunk = members[at:at + size]
            for i, tokens in zip(chunk, self.run([prompts[i] for i in chunk], plans[chunk[0]], config)):
                results[i] = tokens

    def stream(self, pipeline, prompt: list[int], config):
        """The new token ids of one greedy or sampled sequence, as they are made; closing the
        iterator stops CTranslate2's decoding."""
        prompt = self.prompt(prompt, config)
        plan = self.plan(prompt, config)
        kwargs = self.options(plan, config)
        made: list[int] = []
        if plan.steps:
            steps = self.steps(prompt, kwargs, config, plan.replayed - 1 if plan.replayed else 0)
            try:
                for token in steps:
                    made.append(token)
                    yield token
                    if plan.ends(made, pipeline.tokenizer.decode):
                        return
            finally:
                steps.close()
        if plan.forced_eos is not None and len(made) >= plan.steps and not (made and made[-1] in plan.eos):
            yield plan.forced_eos  # cut by length: the torch engine forces eos there

    def steps(self, prompt: list[int], kwargs: dict, config, replayed: int = 0):
        """Token ids as CTranslate2 makes them: generate_batch's per-step callback (the batch
        call's own options, so a stream makes the call's tokens) feeding a queue from its
        thread, as ctranslate2's generate_tokens does; closing this generator makes the callback
        ask CTranslate2 to stop."""
        results: queue.Queue = queue.Queue()
        closed = threading.Event()
        engine, release = self.engine_for(config)

        def on_step(step) -> bool:
            if step.step < replayed:
                return closed.is_set()  # the prompt, gone through again (Plan.replayed)
            release()  # the first step has sampled: another seeded call may set the seed
            results.put(step.token_id)
            return closed.is_set()

        try:
            pending = engine.generate_batch(self.inputs([prompt]), asynchronous=True, callback=on_step, **kwargs)
        except BaseException:
            release()
            raise

        def wait():
            try:
                for result in pending:
                    result.result()
            except Exception as e:  # noqa: BLE001 — handed to the consumer
                results.put(e)
            finally:
                release()
                results.put(None)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        try:
            while (item := results.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            closed.set()
            waiter.join()

    # -- planning --------------------------------------------------------------------------

    def prompt(self, prompt: list[int], config) -> list[int]:
        if not self.encoder_decoder and not prompt:  # as GenerationPipeline.submit: start from BOS
            if config.bos_token_id is None:
                raise ValueError("an empty prompt starts from the model's bos_token_id, and this model has none; "
                                 "give at least one token of prompt")
            return [config.bos_token_id]
        return list(prompt)

    def plan(self, prompt: list[int], config) -> Plan:
        """Check `config` against what CTranslate2 can do and resolve one prompt's lengths."""
        refuse(config, self.encoder_decoder)
        if self.encoder_decoder:
            start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
            if start != self.start:
                raise ValueError(f"{BACKEND} starts the decoder from token {self.start} (built so at load), not "
                                 f"decoder_start_token_id={start}; use backend='torch' for another start")
        seen = 1 if self.encoder_decoder else len(prompt)
        max_new, min_new = resolve_lengths(config, seen, self.model, self.encoder_decoder)
        eos = as_ids(config.eos_token_id) or []
        forced = as_ids(config.forced_eos_token_id)
        forced_eos = forced[0] if forced else None
        stops = [config.stop] if isinstance(config.stop, str) else list(config.stop or [])
        seen_before = [self.start] if self.encoder_decoder else prompt  # what a stop string may begin in
        # CTranslate2's penalties see the tokens its decoding loop went through, not a prompt it
        # read at once: to penalize the prompt (as transformers does), the loop goes through it
        looks_back = (config.repetition_penalty != 1 or config.no_repeat_ngram_size > 0
                      or any(len(words) > 1 for words in config.bad_words_ids or []))
        return Plan(max_new, min_new, eos, forced_eos, stops, seen_before[-stop_window(stops):] if stops else [],
                    config.forced_bos_token_id if self.encoder_decoder else None,
                    len(prompt) if looks_back and not self.encoder_decoder else 0)

    def options(self, plan: Plan, config) -> dict:
        """CTranslate2's keywords for `config` (checked by `plan`)."""
        steps = plan.steps
        kwargs = dict(beam_size=config.num_beams, num_hypotheses=config.num_return_sequences if (
                          config.num_beams > 1 or config.do_sample) else 1,
                      length_penalty=float(config.length_penalty), patience=1.0,
                      repetition_penalty=float(config.repetition_penalty),
                      no_repeat_ngram_size=config.no_repeat_ngram_size, return_end_token=True,
                      end_token=plan.eos)  # [] (no eos_token_id): no end token, as in the torch engine
        if config.do_sample:
            kwargs.update(sampling_topk=config.top_k or 0, sampling_topp=float(config.top_p),
                          sampling_temperature=float(config.temperature))
        else:
            kwargs.update(sampling_topk=1)
        if config.bad_words_ids:
            kwargs["suppress_sequences"] = [[f"<{t}>" for t in words] for words in config.bad_words_ids]
        if self.encoder_decoder:
            kwargs.update(max_decoding_length=steps, min_decoding_length=min(plan.min_new, steps))
        elif plan.replayed:  # lengths then count the prompt after its first token
            lead = plan.replayed - 1
            kwargs.update(max_length=lead + steps, min_length=lead + min(plan.min_new, steps),
                          include_prompt_in_result=True)
        else:
            kwargs.update(max_length=steps, min_length=min(plan.min_new, steps), include_prompt_in_result=False)
        return kwargs

    # -- running ---------------------------------------------------------------------------

    def engine_for(self, config):
        """(the engine a call runs on, `release`): the pipeline's engine, or for seeded sampling
        a fresh one.

        CTranslate2 samples from a random generator per worker thread, seeded from
        `set_random_seed` when that thread first samples and never again: seeding the
        pipeline's engine would work once. So a seeded call loads a new engine (its worker
        thread new) after setting the seed, and holds the process-wide seed until its first
        step has sampled: the caller calls `release()` then (or when the call ends; it may be
        called again, from any thread)."""
        if not (config.do_sample and config.seed is not None):
            return self.engine, lambda: None
        _SEED_LOCK.acquire()
        guard, held = threading.Lock(), [True]

        def release():
            with guard:
                if held[0]:
                    held[0] = False
                    _SEED_LOCK.release()

        try:
            import ctranslate2  # present: this object's engine is one

            ctranslate2.set_random_seed(int(config.seed))
            return self.load(), release
        except BaseException:
            release()
            raise

    def inputs(self, prompts: list[list[int]]) -> list[list[str]]:
        return [[f"<{t}>" for t in p] for p in prompts]

    def run(self, prompts: list[list[int]], plan: Plan, config) -> list[list[list[int]]]:
        """One static batch: each prompt's sequences (new token ids), best first."""
        kwargs = self.options(plan, config)
        if not plan.steps:  # max_new_tokens=1 with a forced eos: that eos is all
            return [[[] for _ in range(kwargs["num_hypotheses"])] for _ in prompts]
        engine, release = self.engine_for(config)
        try:
            if self.encoder_decoder:
                prefix = None
                if plan.forced_bos is not None:
                    prefix = [[f"<{plan.forced_bos}>"]] * len(prompts)
                results = engine.translate_batch(self.inputs(prompts), target_prefix=prefix, **kwargs)
                return [[[int(t[1:-1]) for t in tokens] for tokens in r.hypotheses] for r in results]  # "<7>" → 7
            results = engine.generate_batch(self.inputs(prompts), **kwargs)
        finally:
            release()
        # a replayed prompt comes back with the result, but for a first token that is the model's
        # bos_token (id 0 in the spec, ct2_specs.decoder_spec), which CTranslate2 leaves out
        cut = [plan.replayed - (p[0] == 0) if plan.replayed else 0 for p in prompts]
        return [[list(ids)[n:] for ids in r.sequences_ids] for r, n in zip(results, cut)]


@dataclass
class Plan:
    """One prompt's resolved lengths and ends."""

    max_new: int
    min_new: int
    eos: list[int]
    forced_eos: int | None
    stops: list[str]
    stop_tail: list[int]
    forced_bos: int | None
    replayed: int  # prompt tokens the decoding loop goes through (so its penalties see them); 0: read at once

    @property
    def steps(self) -> int:
        """Tokens CTranslate2 is asked for: a forced eos takes the last position (appended afterwards)."""
        return self.max_new - 1 if self.forced_eos is not None else self.max_new

    def ends(self, made: list[int], decode) -> bool:
        """A streamed sequence is over after `made` (the engine's own ends aside): a stop string completed."""
        return bool(self.stops) and completes_stop((self.stop_tail + made)[-stop_window(self.stops):], self.stops,
                                                   decode)

    def finish(self, tokens: list[int], decode) -> list[int]:
        """A returned sequence as the torch engine ends it: cut after the token completing a
        stop string; the forced eos at the last position."""
        if self.stops:
            for n in range(1, len(tokens) + 1):
                if completes_stop((self.stop_tail + tokens[:n])[-stop_window(self.stops):], self.stops, decode):
                    return tokens[:n]
        if self.forced_eos is not None and len(tokens) >= self.steps and not (tokens and tokens[-1] in self.eos):
            tokens = tokens + [self.forced_eos]  # cut by length: the torch engine forces eos there
        return tokens


def refuse(config, encoder_decoder: bool) -> None:
    """A ValueError naming each GenerationConfig option CTranslate2 can't honour."""
    if config.do_sample and config.num_beams > 1:
        raise ValueError(f"{BACKEND} has no beam sampling (do_sample=True with num_beams={config.num_beams}); "
                         "use num_beams=1 or do_sample=False, or backend='torch'")
    if config.stop and config.num_beams > 1:
        raise ValueError(f"{BACKEND} can't stop beams on strings (stop / stop_strings with num_beams > 1): it cuts "
                         "a finished sequence at its stop string, which would change a beam search; use "
                         "backend='torch'")
    if config.forced_bos_token_id is not None and not encoder_decoder:
        raise ValueError(f"{BACKEND} has no forced_bos_token_id for decoder-only models; use backend='torch'")
