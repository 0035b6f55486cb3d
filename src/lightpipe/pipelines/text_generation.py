"""text-generation: prompts (or chats) continued by a decoder-only model.

Prompts of one call are sorted by length and decoded together as left-padded batches. Outputs
follow transformers 4.57.6: a prompt gives [{"generated_text": prompt + continuation}, ...]
(one per returned sequence); a chat gives the messages plus the assistant's answer.
"""

from __future__ import annotations

import queue
import threading

import torch

from ..chat import validate_messages
from ..generation import generate
from ..generation_config import GenerationConfig, pipeline_generation_config
from .base import Pipeline, check_positive_int

DEFAULT_BATCH = 16  # prompts decoded together: weights are read once per step for all of them


class TextGenerationPipeline(Pipeline):
    task = "text-generation"
    head = "causal-lm"
    DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
    PIPELINE_OPTIONS = {"return_full_text", "return_tensors", "return_text", "prefix", "clean_up_tokenization_spaces",
                        "skip_special_tokens", "stop_sequence", "continue_final_message", "add_special_tokens",
                        "batch_size"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generation, task_prefix = pipeline_generation_config(
            self.folder, self.config, self.task, self.DEFAULTS, self.tokenizer.pad_token_id)
        self.prefix = self.defaults.get("prefix", task_prefix if task_prefix is not None else self.config.get("prefix"))

    def check_options(self, options):
        generation = {k: v for k, v in options.items() if k not in self.PIPELINE_OPTIONS}
        if generation:
            (getattr(self, "generation", None) or GenerationConfig()).merge(**generation)  # unknown names raise here
        if options.get("return_full_text") is not None and options.get("return_tensors"):
            raise ValueError("return_full_text is mutually exclusive with return_tensors")
        return options

    def is_single(self, inputs) -> bool:
        return isinstance(inputs, (list, tuple)) and bool(inputs) and isinstance(inputs[0], dict)  # one chat

    # -- preprocessing ---------------------------------------------------------------------

    def prompt_text(self, item, prefix, continue_final_message=None) -> tuple[str, bool]:
        """The text the model continues, and whether it came from a chat."""
        if isinstance(item, str):
            return (prefix or "") + item, False
        messages = validate_messages(item)
        if continue_final_message is None:
            continue_final_message = messages[-1]["role"] == "assistant"
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=not continue_final_message)
        if continue_final_message:  # cut the template's end-of-turn so the model continues the message
            final = messages[-1]["content"]
            text = text[: text.rindex(final) + len(final)] if final in text else text
        return text, True

    def encode_prompts(self, items, prefix, add_special_tokens=False, continue_final_message=None):
        texts = []
        for i, item in enumerate(items):
            if not isinstance(item, (str, list, tuple)):
                raise TypeError(f"inputs[{i}] must be a prompt string or a chat (list of messages), "
                                f"got {type(item).__name__}")
            texts.append(self.prompt_text(item, prefix, continue_final_message)[0])
        chat = [not isinstance(item, str) for item in items]
        prompts = [enc.ids for enc in self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)]
        context = self.config.get("max_position_embeddings") or self.config.get("n_positions")
        for i, p in enumerate(prompts):
            if context and len(p) >= context:
                raise ValueError(f"prompt {i} has {len(p)} tokens but the model's context is {context}: "
                                 "no room to generate; shorten the prompt")
        return prompts, chat

    # -- generation ------------------------------------------------------------------------

    def split_options(self, options: dict) -> tuple[dict, dict]:
        pipeline_opts = {k: v for k, v in options.items() if k in self.PIPELINE_OPTIONS}
        generation = {k: v for k, v in options.items() if k not in self.PIPELINE_OPTIONS}
        if pipeline_opts.get("stop_sequence") is not None:
            generation["eos_token_id"] = self.tokenizer.encode(pipeline_opts["stop_sequence"], add_special_tokens=False).ids
        prefix = pipeline_opts.get("prefix", self.prefix)
        if prefix and "max_new_tokens" not in generation and self.generation.max_new_tokens is None:
            # transformers counts max_length without the prefix the pipeline adds
            prefix_len = len(self.tokenizer.encode(prefix, add_special_tokens=False).ids)
            generation["max_length"] = (generation.get("max_length") or self.generation.max_length or 20) + prefix_len
        return pipeline_opts, generation

    def run(self, items: list, options: dict, batch_size=None) -> list:
        pipeline_opts, generation = self.split_options(options)
        prompts, chats = self.encode_prompts(
            items, pipeline_opts.get("prefix", self.prefix), pipeline_opts.get("add_special_tokens", False),
            pipeline_opts.get("continue_final_message"))
        config = self.generation.merge(**generation)
        order = sorted(range(len(items)), key=lambda i: len(prompts[i]))
        size = check_positive_int(batch_size, "batch_size") or DEFAULT_BATCH
        outputs: list = [None] * len(items)
        for start in range(0, len(order), size):
            batch = order[start:start + size]
            sequences = self.generate([prompts[i] for i in batch], config)
            for i, rows in zip(batch, sequences):
                outputs[i] = self.postprocess_item(items[i], prompts[i], rows, **pipeline_opts)
        return outputs

    def generate(self, prompts: list[list[int]], config: GenerationConfig, streamer=None) -> list[list[list[int]]]:
        """Left-pad prompts into one batch, generate, and return each prompt's new-token rows."""
        longest = max(len(p) for p in prompts)
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for j, p in enumerate(prompts):
            if p:
                ids[j, longest - len(p):] = torch.tensor(p)
                mask[j, longest - len(p):] = 1
        with torch.inference_mode():
            out = generate(self.model, ids.to(self.device), mask.to(self.device), config, streamer=streamer,
                           decode=self.tokenizer.decode)
        per_prompt = out.shape[0] // len(prompts)
        eos = set(_as_list(config.eos_token_id))
        results = []
        for j in range(len(prompts)):
            rows = []
            for row in out[j * per_prompt:(j + 1) * per_prompt, longest:].tolist():
                rows.append(_cut_after_eos(row, eos))
            results.append(rows)
        return results

    def postprocess_item(self, item, prompt_ids, rows, return_full_text=None, return_tensors=None, return_text=None,
                         clean_up_tokenization_spaces=None, skip_special_tokens=None, continue_final_message=None,
                         **_):
        skip = True if skip_special_tokens is None else skip_special_tokens
        clean = True if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        if return_tensors:  # a tensor, as documented (4.57.6 returns a list here, a tensor in text2text)
            return [{"generated_token_ids": torch.tensor(prompt_ids + new_ids)} for new_ids in rows]
        # transformers decodes prompt + continuation and cuts the decoded prompt's length,
        # so tokens that merge across the boundary come out the same
        prompt_len = len(self.tokenizer.decode(prompt_ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean))
        records = []
        for new_ids in rows:
            text = self.tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
            new_text = text[prompt_len:]
            full = return_full_text is not False
            if isinstance(item, str):
                records.append({"generated_text": item + new_text if full else new_text})
            elif not full:
                records.append({"generated_text": new_text})
            else:
                messages = list(item)
                final = continue_final_message if continue_final_message is not None else messages[-1]["role"] == "assistant"
                if final:
                    messages = messages[:-1] + [{"role": messages[-1]["role"], "content": messages[-1]["content"] + new_text}]
                else:
                    messages = messages + [{"role": "assistant", "content": new_text}]
                records.append({"generated_text": messages})
        return records

    # -- streaming -------------------------------------------------------------------------

    def stream(self, prompt, **kwargs):
        """Yield the continuation of one prompt (or chat) as text pieces while tokens are produced.

        Pieces never split a multi-byte character: text is re-decoded from all new tokens and
        only released once it doesn't end in a partial character."""
        if not isinstance(prompt, (str, list, tuple)):
            raise TypeError(f"stream() takes one prompt string or chat, got {type(prompt).__name__}")
        options = {**self.defaults, **self.check_options(kwargs)}
        options.pop("batch_size", None)
        pipeline_opts, generation = self.split_options(options)
        config = self.generation.merge(**generation)
        if config.num_return_sequences != 1 or config.num_beams != 1:
            raise ValueError("stream() produces one sequence: use num_return_sequences=1 and num_beams=1")
        prompts, _ = self.encode_prompts([prompt], pipeline_opts.get("prefix", self.prefix),
                                         pipeline_opts.get("add_special_tokens", False),
                                         pipeline_opts.get("continue_final_message"))
        tokens: queue.Queue = queue.Queue()
        failure: list[BaseException] = []
        cancelled = threading.Event()  # the consumer stopped reading: stop spending compute

        def put(step_tokens):
            if cancelled.is_set():
                raise _Cancelled
            tokens.put(int(step_tokens[0]))

        def work():
            try:
                self.generate(prompts, config, streamer=put)
            except _Cancelled:
                pass
            except BaseException as e:  # surfaced in the consumer below
                failure.append(e)
            finally:
                tokens.put(None)

        threading.Thread(target=work, daemon=True).start()
        try:
            yield from self._pieces(tokens, config, pipeline_opts)
        finally:
            cancelled.set()
        if failure:
            raise failure[0]

    def _pieces(self, tokens: queue.Queue, config, pipeline_opts):
        eos = set(_as_list(config.eos_token_id))
        new_ids: list[int] = []
        sent = 0
        skip = pipeline_opts.get("skip_special_tokens", True)
        while (token := tokens.get()) is not None:
            if new_ids and new_ids[-1] in eos:
                continue  # padding after the end
            new_ids.append(token)
            text = self.tokenizer.decode(new_ids, skip_special_tokens=skip)
            if len(text) > sent and not text.endswith("\ufffd"):
                yield text[sent:]
                sent = len(text)
        text = self.tokenizer.decode(new_ids, skip_special_tokens=skip)
        if len(text) > sent:
            yield text[sent:]


class _Cancelled(Exception):
    """Raised inside generation when a stream's consumer has gone away."""


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _cut_after_eos(row: list[int], eos: set) -> list[int]:
    """New tokens up to and including the first eos: what a prompt generated alone returns."""
    for k, token in enumerate(row):
        if token in eos:
            return row[: k + 1]
    return row
