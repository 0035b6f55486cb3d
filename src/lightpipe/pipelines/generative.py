"""The base of the generation tasks (text-generation; text2text-generation, summarization,
translation): what they share from options to records.

A call's keywords split into the task's own (`PIPELINE_OPTIONS`) and generation arguments,
which go on top of the pipeline's `GenerationConfig` (its defaults, the checkpoint's, the
task's). Inputs are encoded by the task (`encode_items`) and submitted, longest first, to a
generation engine (lightpipe.generation.Engine, continuous batching): up to `batch_size`
prompts run at once within the KV budget, a prompt joins the running batch as soon as another
finishes, and each prompt's sequences come back as transformers returns them for that prompt
alone. The engine is made and driven in one place (`generate`, and `stream` through
`start_engine`), and the task turns the sequences into records (`records`). Results come back
in input order.
"""

from __future__ import annotations

import torch

from ..generation import Engine, Handle
from ..generation.engine import KV_BUDGET_TOKENS
from ..generation_config import GenerationConfig, pipeline_generation_config
from .base import Pipeline, check_positive_int

DEFAULT_BATCH = 16  # prompts generated together: weights are read once per step for all of them


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
        rows = self.generate(prompts, config, options.get("batch_size"))
        return [self.records(item, prompt, r, **task_options) for item, prompt, r in zip(items, prompts, rows)]

    def encode_items(self, items: list, task_options: dict) -> list[list[int]]:
        """Each input's prompt token ids."""
        raise NotImplementedError

    def check_lengths(self, lengths: list[int], config: GenerationConfig) -> None:
        """Warnings about the lengths asked for (transformers' check_inputs)."""

    def records(self, item, prompt_ids: list[int], rows: list[list[int]], **task_options) -> list[dict]:
        """An input's records, one per returned sequence."""
        raise NotImplementedError

    def engine(self, batch_size=None, config: GenerationConfig | None = None) -> Engine:
        """A generation engine on this pipeline's model: `batch_size` prompts (default 16) at
        once, each with its beams or sampled sequences."""
        size = check_positive_int(batch_size, "batch_size") or DEFAULT_BATCH
        if getattr(self.model, "generation_backend", None) is not None:
            raise ValueError("this pipeline generates with backend='ctranslate2', which has no continuous-batching "
                             "engine (the server's streams use one): call the pipeline or stream() instead, or "
                             "build it with backend='torch'")
        rows = max(config.num_beams, config.num_return_sequences) if config is not None else 1
        # a prompt larger than the budget runs alone, as a lone prompt always could
        return Engine(self.model, kv_budget_tokens=KV_BUDGET_TOKENS, max_rows=size * rows, oversized="alone")

    def submit(self, engine: Engine, prompt: list[int], config: GenerationConfig, **extra) -> Handle:
        """Queue one prompt. An empty decoder-only prompt starts from the model's bos_token_id,
        as in transformers."""
        if not self.encoder_decoder and not prompt:
            if config.bos_token_id is None:
                raise ValueError("an empty prompt starts from the model's bos_token_id, and this model has none; "
                                 "give at least one token of prompt")
            prompt = [config.bos_token_id]
        self.check_memory(1, len(prompt), config)
        return engine.submit(prompt, config, decode=self.tokenizer.decode, **extra)

    def generate(self, prompts: list[list[int]], config: GenerationConfig, batch_size=None) -> list[list[list[int]]]:
        """Generate every prompt (longest first, `batch_size` at a time, joining as others end)
        and return each prompt's rows as transformers returns them for that prompt alone: a
        decoder-only model's new tokens up to and including each row's eos (an empty prompt's
        rows begin with the bos token it started from, which transformers returns and decodes);
        an encoder-decoder's decoder sequences from the start token, padded to the prompt's
        longest."""
        backend = getattr(self.model, "generation_backend", None)
        if backend is not None:  # backend="ctranslate2": static batches in CTranslate2 (backends/ct2_generate.py)
            for prompt in prompts:
                self.check_memory(1, len(prompt), config)
            return backend.generate(self, prompts, config, check_positive_int(batch_size, "batch_size"))
        engine = self.engine(batch_size, config)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        handles: list = [None] * len(prompts)
        for i in order:
            handles[i] = self.submit(engine, prompts[i], config)
        engine.run(handles)
        return [self.output_rows(h, p, config) for h, p in zip(handles, prompts)]

    def output_rows(self, handle: Handle, prompt: list[int], config: GenerationConfig) -> list[list[int]]:
        if not self.encoder_decoder:
            lead = [] if prompt else handle.prompt
            return [lead + tokens for tokens in handle.tokens]
        # transformers pads a prompt's sequences to its longest: pad_token_id, or for beams
        # `pad_token_id or eos[0]` (T5's pad 0 gives its eos)
        eos = as_list(config.eos_token_id)
        fill = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
        if config.num_beams > 1 and eos:
            fill = config.pad_token_id or eos[0]
        width = max(len(t) for t in handle.tokens)
        return [handle.start[:1] + t + [fill] * (width - len(t)) for t in handle.tokens]

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
        """Bytes of keys and values one sequence holds per position, from an empty cache's shape."""
        if getattr(self, "_kv_bytes", None) is None:
            cache = self.model.new_cache()  # no rows: nothing allocated
            element = torch.empty((), dtype=cache.dtype).element_size()
            self._kv_bytes = 2 * cache.n_layers * cache.n_heads * cache.head_dim * element
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
