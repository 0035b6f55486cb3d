"""The base of the generation tasks (text-generation; text2text-generation, summarization,
translation): what they share from options to records.

A call's keywords split into the task's own (`PIPELINE_OPTIONS`) and generation arguments,
which go on top of the pipeline's `GenerationConfig` (its defaults, the checkpoint's, the
task's). Inputs are encoded by the task (`encode_items`), sorted by length and generated in
batches cut by a token budget: left-padded for decoder-only models, right-padded (the encoder
mask keeps padding out) for encoder-decoders. The engine is called in one place (`generate`),
each prompt's sequences are cut after end-of-sequence as transformers returns them for that
prompt alone, and the task turns them into records (`records`). Results come back in input
order.
"""

from __future__ import annotations

import torch

from ..generation import generate
from ..generation_config import GenerationConfig, pipeline_generation_config
from .base import Pipeline, check_positive_int

DEFAULT_BATCH = 16  # inputs generated together: weights are read once per step for all of them
BATCH_TOKENS = 16384  # prompt tokens x beams per batch: bounds the cached keys/values of a batch


class GenerationPipeline(Pipeline):
    generates = True
    file_window = 32  # generation is slow per row: smaller windows keep a file's progress moving
    encoder_decoder = False  # decoder-only: prompts left-padded, the output continues them
    return_name = "generated"  # records are {"<return_name>_text": ...} (or `_token_ids`)
    DEFAULTS: dict = {}  # the pipeline's generation defaults, below the checkpoint's
    PIPELINE_OPTIONS: set = {"batch_size"}  # keywords that are the task's own; the rest are generation arguments

    def setup(self):
        self.generation, task_prefix = pipeline_generation_config(
            self.folder, self.config, self.task_name, self.DEFAULTS, self.tokenizer.pad_token_id)
        self.prefix = task_prefix if task_prefix is not None else self.config.get("prefix")

    def check_options(self, options: dict) -> dict:
        generation = {k: v for k, v in options.items() if k not in self.PIPELINE_OPTIONS}
        if generation:
            self.generation.merge(**generation)  # unknown names raise here
        check_positive_int(options.get("batch_size"), "batch_size")
        return options

    # -- options → generation config ------------------------------------------------------

    def split_options(self, options: dict) -> tuple[dict, GenerationConfig]:
        """(the task's own options, the GenerationConfig to generate with)."""
        task_options = {k: v for k, v in options.items() if k in self.PIPELINE_OPTIONS}
        generation = {k: v for k, v in options.items() if k not in self.PIPELINE_OPTIONS}
        if task_options.get("stop_sequence") is not None:
            generation["eos_token_id"] = self.stop_eos(task_options["stop_sequence"])
        config = self.generation.merge(**self.generation_overrides(task_options, generation))
        config.validate()
        return task_options, config

    def stop_eos(self, stop_sequence: str):
        """The eos_token_id that `stop_sequence` stands for."""
        return self.tokenizer.encode(stop_sequence, add_special_tokens=False).ids

    def generation_overrides(self, task_options: dict, generation: dict) -> dict:
        """The generation arguments after the task's adjustments (lengths, forced tokens)."""
        return generation

    # -- the run ----------------------------------------------------------------------------

    def run(self, items: list, options: dict) -> list:
        task_options, config = self.split_options(options)
        prompts = self.encode_items(items, task_options)
        self.check_lengths([len(p) for p in prompts], config)
        outputs: list = [None] * len(items)
        for batch in self.length_batches(prompts, options.get("batch_size"), config):
            for i, rows in zip(batch, self.generate([prompts[i] for i in batch], config)):
                outputs[i] = self.records(items[i], prompts[i], rows, **task_options)
        return outputs

    def encode_items(self, items: list, task_options: dict) -> list[list[int]]:
        """Each input's prompt token ids."""
        raise NotImplementedError

    def check_lengths(self, lengths: list[int], config: GenerationConfig) -> None:
        """Warnings about the lengths asked for (transformers' check_inputs)."""

    def records(self, item, prompt_ids: list[int], rows: list[list[int]], **task_options) -> list[dict]:
        """An input's records, one per returned sequence."""
        raise NotImplementedError

    @staticmethod
    def length_batches(prompts: list[list[int]], batch_size, config: GenerationConfig):
        """Indices of prompts generated together, longest first: similar lengths share a batch
        (little padding), at most `batch_size` prompts and BATCH_TOKENS prompt tokens x beams."""
        size = check_positive_int(batch_size, "batch_size") or DEFAULT_BATCH
        beams = max(config.num_beams, config.num_return_sequences if config.do_sample else 1)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        start = 0
        while start < len(order):
            longest = len(prompts[order[start]])
            take = max(1, min(size, BATCH_TOKENS // max(longest * beams, 1)))
            yield order[start:start + take]
            start += take

    def generate(self, prompts: list[list[int]], config: GenerationConfig, streamer=None) -> list[list[list[int]]]:
        """Pad prompts into one batch, generate, and return each prompt's rows, cut as
        transformers returns them for that prompt alone: a decoder-only model's new tokens up to
        and including each row's eos; an encoder-decoder's decoder sequences (from the start
        token) as long as the prompt's longest, up to its eos.

        An empty decoder-only prompt starts from the model's bos_token_id, as in transformers,
        and its rows begin with that token (transformers returns it and decodes it as text)."""
        starts = prompts
        if not self.encoder_decoder:
            if any(not p for p in prompts) and config.bos_token_id is None:
                raise ValueError("an empty prompt starts from the model's bos_token_id, and this model has none; "
                                 "give at least one token of prompt")
            starts = [p or [config.bos_token_id] for p in prompts]
        longest = max(len(p) for p in starts)
        self.check_memory(len(prompts), longest, config)
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for j, p in enumerate(starts):
            where = slice(0, len(p)) if self.encoder_decoder else slice(longest - len(p), longest)
            ids[j, where] = torch.tensor(p, dtype=torch.long)
            mask[j, where] = 1
        with torch.inference_mode():
            out = generate(self.model, ids.to(self.device), mask.to(self.device), config, streamer=streamer,
                           decode=self.tokenizer.decode)
        per_prompt = out.shape[0] // len(prompts)
        eos = set(as_list(config.eos_token_id))
        rows = out.tolist()
        results = []
        for j in range(len(prompts)):
            mine = rows[j * per_prompt:(j + 1) * per_prompt]
            if self.encoder_decoder:
                width = max(_length(r, eos, first=1) for r in mine)  # the start token may be eos (BART)
                results.append([r[:width] for r in mine])
            else:
                lead = [] if prompts[j] else starts[j]
                results.append([lead + r[longest:][:_length(r[longest:], eos)] for r in mine])
        return results

    def check_memory(self, n_prompts: int, longest: int, config: GenerationConfig) -> None:
        """Refuse a length whose key/value cache can't fit in the memory free now (the engine
        allocates it for the whole length before the first step), rather than fail deep in torch.
        A default length is never this large; a caller's max_new_tokens=10**9 is."""
        asked = config.max_new_tokens if config.max_new_tokens is not None else config.max_length
        if not asked or asked <= 4096:
            return
        length = (0 if self.encoder_decoder else longest) + asked
        hard = getattr(self.model, "max_positions", None)
        if hard is not None:
            length = min(length, hard + 1)  # the engine stops at a learned position table's end
        rows = n_prompts * max(config.num_beams, config.num_return_sequences)
        needed = rows * length * (self._kv_bytes_per_position() + 16)  # + the token buffers (int64)
        free = free_memory(self.device)
        if free is not None and needed > free:
            raise ValueError(f"max_new_tokens={asked} needs about {needed / 2**30:.1f} GiB of key/value cache for "
                             f"{rows} sequence(s) of {length} positions, more than the {free / 2**30:.1f} GiB free "
                             f"on {self.device}; ask for fewer new tokens")

    def _kv_bytes_per_position(self) -> int:
        if getattr(self, "_kv_bytes", None) is None:
            cache = self.model.new_cache(1, 1)  # one sequence, one position
            self._kv_bytes = sum(t.nbytes for t in vars(cache).values() if isinstance(t, torch.Tensor))
        return self._kv_bytes

    # -- front-end facts ------------------------------------------------------------------

    @classmethod
    def columns(cls, result) -> dict:
        """Records of one key → that key's value (a list of them with several sequences)."""
        if isinstance(result, list) and result and all(isinstance(r, dict) and len(r) == 1 for r in result):
            values = [next(iter(r.values())) for r in result]
            return {next(iter(result[0])): values[0] if len(values) == 1 else values}
        return super().columns(result)


def free_memory(device) -> int | None:
    """Bytes free for tensors on `device` now: the GPU's free memory, or Linux's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _length(row: list[int], eos: set, first: int = 0) -> int:
    """Up to and including the first eos at or after `first`, else the whole row."""
    for k in range(first, len(row)):
        if row[k] in eos:
            return k + 1
    return len(row)
