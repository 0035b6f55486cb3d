"""text-generation: prompts (or chats) continued by a decoder-only model.

Prompts of one call are sorted by length and decoded together as left-padded batches (the
generation base, `generative.GenerationPipeline`). Outputs follow transformers 4.57.6: a prompt
gives [{"generated_text": prompt + continuation}, ...] (one per returned sequence); a chat gives
the messages plus the assistant's answer.
"""

from __future__ import annotations

import torch

from ..tokenization.base import CLEANUPS
from ..tokenization.chat import validate_messages
from .generative import GenerationPipeline

STREAM_CONTEXT = 32  # prompt tokens a stream decodes its new tokens after (see _decoding_context)
# apply_chat_template's own arguments: tokenizer_encode_kwargs may not set them (the pipeline
# sets the first ones itself; lightpipe renders no tools or documents, and never truncates)
CHAT_ARGUMENTS = frozenset({"add_generation_prompt", "continue_final_message", "tokenize", "return_dict",
                            "return_tensors", "return_assistant_tokens_mask", "chat_template", "tools", "documents",
                            "padding", "truncation", "max_length", "tokenizer_kwargs"})


class TextGenerationPipeline(GenerationPipeline):
    task = "text-generation"
    head = "causal-lm"
    takes_chat = True
    hf_request = "tgi"
    # TGI's parameters (those lightpipe refuses included: huggingface_hub sends them) and the
    # transformers generate() keywords the server passes through
    hf_parameters = frozenset({
        "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "return_full_text",
        "seed", "stop", "details", "watermark", "grammar", "adapter_id", "best_of", "decoder_input_details",
        "frequency_penalty", "top_n_tokens", "typical_p", "truncate", "max_length", "min_new_tokens", "num_beams",
        "num_return_sequences", "no_repeat_ngram_size", "length_penalty", "early_stopping"})
    DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
    PIPELINE_OPTIONS = {"return_full_text", "return_tensors", "return_text", "prefix", "clean_up_tokenization_spaces",
                        "skip_special_tokens", "stop_sequence", "continue_final_message", "add_special_tokens",
                        "tokenizer_encode_kwargs", "batch_size"}

    def check_options(self, options):
        options = super().check_options(options)
        if options.get("return_full_text") is not None and options.get("return_tensors"):
            raise ValueError("return_full_text is mutually exclusive with return_tensors")
        encode_kwargs(options.get("tokenizer_encode_kwargs"))
        stop = options.get("stop_sequence")
        if stop is not None and (not isinstance(stop, str) or not stop):
            raise ValueError(f"stop_sequence must be a non-empty string, got {stop!r}")
        return options

    def is_single(self, inputs) -> bool:
        one_chat = isinstance(inputs, (list, tuple)) and bool(inputs) and isinstance(inputs[0], dict)
        return one_chat or super().is_single(inputs)

    # -- preprocessing ---------------------------------------------------------------------

    def prompt_text(self, item, prefix, continue_final_message=None, template_variables=None) -> tuple[str, bool]:
        """The text the model continues, and whether it came from a chat."""
        if isinstance(item, str):
            return (prefix or "") + item, False
        messages = validate_messages(item)
        if continue_final_message is None:  # a chat ending with the assistant's words is a prefill
            continue_final_message = messages[-1]["role"] == "assistant"
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=not continue_final_message,
                                                  continue_final_message=bool(continue_final_message),
                                                  **(template_variables or {}))
        return text, True

    def encode_items(self, items, task_options):
        """Token ids of each prompt, as transformers' pipeline makes them: a prompt string (after
        the prefix) with the tokenizer's own special tokens unless `add_special_tokens` says
        otherwise (BOS for Llama-style tokenizers, nothing for GPT-2 / Qwen2); a chat as its
        rendered template and nothing more, since templates write BOS themselves.
        `tokenizer_encode_kwargs` (transformers' name): its add_special_tokens wins over the
        keyword for prompt strings; its other keys are the chat template's variables
        (Qwen3's enable_thinking=False)."""
        prefix = task_options.get("prefix", self.prefix)
        template_variables = encode_kwargs(task_options.get("tokenizer_encode_kwargs"))
        add_special_tokens = template_variables.pop("add_special_tokens", task_options.get("add_special_tokens"))
        if add_special_tokens is not None and not isinstance(add_special_tokens, bool):
            raise TypeError(f"add_special_tokens must be True or False, got {add_special_tokens!r}")
        texts, chat = [], []
        for i, item in enumerate(items):
            if not isinstance(item, (str, list, tuple)):
                raise TypeError(f"inputs[{i}] must be a prompt string or a chat (list of messages), "
                                f"got {type(item).__name__}")
            if isinstance(item, str) and template_variables:
                raise ValueError(f"tokenizer_encode_kwargs {sorted(template_variables)} are chat template variables, "
                                 f"but inputs[{i}] is a prompt string, which no template renders")
            text, is_chat = self.prompt_text(item, prefix, task_options.get("continue_final_message"),
                                             template_variables)
            texts.append(text)
            chat.append(is_chat)
        prompts: list = [None] * len(items)
        for from_chat, specials in ((False, add_special_tokens is not False), (True, False)):
            where = [i for i, c in enumerate(chat) if c == from_chat]
            if where:
                encodings = self.tokenizer.encode_batch([texts[i] for i in where], add_special_tokens=specials)
                for i, enc in zip(where, encodings):
                    prompts[i] = enc.ids
        context = self.config.get("max_position_embeddings") or self.config.get("n_positions")
        for i, p in enumerate(prompts):
            if context and len(p) >= context:
                raise ValueError(f"prompt {i} has {len(p)} tokens but the model's context is {context}: "
                                 "no room to generate; shorten the prompt")
        return prompts

    def count_prompt_tokens(self, items: list, options: dict) -> int:
        """Prompt tokens as the model gets them (chat template, prefix, BOS): the server's usage."""
        task_options, _ = self.split_options(self.call_options(options))
        return sum(len(p) for p in self.encode_items(items, task_options))

    def generation_overrides(self, task_options, generation):
        prefix = task_options.get("prefix", self.prefix)
        if prefix:
            # transformers counts max_length and min_length without the prefix the pipeline adds; it
            # measures the prefix with special tokens only when the caller asked for them
            specials = bool(task_options.get("add_special_tokens", False))
            prefix_len = len(self.tokenizer.encode(prefix, add_special_tokens=specials).ids)
            lengths = self.generation.merge(**generation)
            if lengths.max_new_tokens is None:  # the length that applies is max_length
                generation["max_length"] = (lengths.max_length or 20) + prefix_len
            if lengths.min_new_tokens is None and generation.get("min_length") is not None:
                generation["min_length"] += prefix_len
        return generation

    # -- output ----------------------------------------------------------------------------

    def records(self, item, prompt_ids, rows, return_full_text=None, return_tensors=None, return_text=None,
                clean_up_tokenization_spaces=None, skip_special_tokens=None, continue_final_message=None, **_):
        if return_tensors:  # a tensor, as documented (4.57.6 returns a list here, a tensor in text2text)
            return [{"generated_token_ids": torch.tensor(prompt_ids + new_ids)} for new_ids in rows]
        decode = self.text_decoder(skip_special_tokens, clean_up_tokenization_spaces)
        # transformers decodes prompt + continuation and cuts the decoded prompt's length,
        # so tokens that merge across the boundary come out the same
        prompt_len = len(decode(prompt_ids))
        records = []
        for new_ids in rows:
            new_text = decode(prompt_ids + new_ids)[prompt_len:]
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

    def text_decoder(self, skip_special_tokens=None, clean_up_tokenization_spaces=None):
        """ids → text with the pipeline's defaults (transformers' postprocess): special tokens
        skipped, tokenization spaces cleaned up."""
        skip = True if skip_special_tokens is None else skip_special_tokens
        clean = True if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return lambda ids: self.tokenizer.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean)

    # -- streaming -------------------------------------------------------------------------

    def stream(self, prompt, **kwargs):
        """Yield the continuation of one prompt (or chat) as text pieces while tokens are produced.

        The pieces join to what the call returns with return_full_text=False: the prompt is
        encoded the same way, and text is re-decoded after the prompt at each token and released
        once it can't change (not half a character, not a space cleanup may still remove).

        A plain loop over the engine's events (no thread): each piece costs the engine steps
        that made it, and a consumer that stops iterating (closes the generator) cancels the
        sequence at once."""
        prompt_ids, config, pieces = self.stream_request(prompt, **kwargs)
        backend = getattr(self.model, "generation_backend", None)
        if backend is not None:  # backend="ctranslate2": its own token iterator
            tokens = backend.stream(self, prompt_ids, config)
            try:
                for token in tokens:
                    yield from pieces.push(token)
                yield from pieces.end()
            finally:
                tokens.close()
            return
        engine = self.engine(1, config)
        handle = self.submit(engine, prompt_ids, config)
        events = engine.events(handle)
        try:
            for event in events:
                yield from pieces.push(event.token)
            yield from pieces.end()
        finally:
            events.close()  # cancels the sequence if the consumer stopped early

    def stream_request(self, prompt, **kwargs):
        """What stream() submits, for a caller that steps a shared engine (the server's worker):
        the prompt's ids, its GenerationConfig and a `PieceDecoder` for the tokens that come back."""
        if not isinstance(prompt, (str, list, tuple)):
            raise TypeError(f"stream() takes one prompt string or chat, got {type(prompt).__name__}")
        options = self.call_options(kwargs)
        options.pop("batch_size", None)
        pipeline_opts, config = self.split_options(options)
        if config.num_return_sequences != 1 or config.num_beams != 1:
            raise ValueError("stream() produces one sequence: use num_return_sequences=1 and num_beams=1")
        prompt_ids = self.encode_items([prompt], pipeline_opts)[0]
        return prompt_ids, config, self.piece_decoder(prompt_ids, pipeline_opts)

    def piece_decoder(self, prompt_ids: list[int], pipeline_opts: dict) -> PieceDecoder:
        """Text pieces of generated token ids, joining to the pipeline's return_full_text=False
        text: the continuation is decoded after the prompt and the decoded prompt's length cut
        off, as `records` does, so a sentencepiece tokenizer's first word keeps its space."""
        decode = self.text_decoder(pipeline_opts.get("skip_special_tokens"),
                                   pipeline_opts.get("clean_up_tokenization_spaces"))
        clean = pipeline_opts.get("clean_up_tokenization_spaces") is not False
        return PieceDecoder(decode, self._decoding_context(prompt_ids), clean, self._is_byte_piece)

    def _decoding_context(self, prompt_ids: list[int]) -> list[int]:
        """The end of the prompt that decoding the continuation needs: decoders only look at
        neighbouring tokens (the first token's stripped space, a byte-fallback run, a cleaned-up
        space), so the last STREAM_CONTEXT tokens, started outside a byte run, decode the new
        text as the whole prompt would — without re-decoding a long prompt at every token."""
        start = max(len(prompt_ids) - STREAM_CONTEXT, 0)
        while start > 0 and self._is_byte_piece(prompt_ids[start]):
            start -= 1
        return prompt_ids[start:]

    def _is_byte_piece(self, token_id: int) -> bool:
        """A sentencepiece byte-fallback token (<0xE2>)."""
        token = self.tokenizer.id_to_token(token_id) or ""
        return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def encode_kwargs(value) -> dict:
    """tokenizer_encode_kwargs checked: a dict of names, none of them apply_chat_template's own arguments."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"tokenizer_encode_kwargs must be a dict of keyword arguments, got {value!r:.80}")
    refused = sorted(set(value) & CHAT_ARGUMENTS)
    if refused:
        raise ValueError(f"tokenizer_encode_kwargs can't set {refused}: it takes add_special_tokens and the chat "
                         "template's own variables (e.g. enable_thinking)")
    if "add_special_tokens" in value and not isinstance(value["add_special_tokens"], bool):
        raise TypeError(f"add_special_tokens must be True or False, got {value['add_special_tokens']!r}")
    return dict(value)


# what transformers' clean_up_tokenization removes a space from; a tail of the text that could
# grow into one of them may still lose its space
_CLEANED = tuple(before for before, _ in CLEANUPS)


def _stable_length(text: str) -> int:
    """How much of cleaned-up text later tokens can't change: all of it but a tail that starts
    a cleanup pattern (" n", " '", a lone space), with the spaces before that tail."""
    longest = max(len(p) for p in _CLEANED)
    for start in range(max(len(text) - longest + 1, 0), len(text)):
        tail = text[start:]
        if any(p.startswith(tail) and p != tail for p in _CLEANED):
            while start > 0 and text[start - 1] == " ":
                start -= 1
            return start
    return len(text)


class PieceDecoder:
    """Pushed token ids in, text pieces out: text is re-decoded after the prompt at each token and
    released once it can't change (not half a character, not a space cleanup may still remove)."""

    def __init__(self, decode, prompt_ids: list[int], clean: bool, is_byte_piece):
        self.decode, self.prompt_ids, self.clean, self.is_byte_piece = decode, prompt_ids, clean, is_byte_piece
        self.prompt_len = len(decode(prompt_ids))
        self.new_ids: list[int] = []
        self.sent = 0

    def push(self, token: int) -> list[str]:
        self.new_ids.append(token)
        settled = len(self.new_ids)
        while settled and self.is_byte_piece(self.new_ids[settled - 1]):
            settled -= 1  # a run of byte-fallback tokens decodes as one group, final once it ends
        text = self.decode(self.prompt_ids + self.new_ids[:settled])[self.prompt_len:]
        ready = len(text) if not text.endswith("\ufffd") else 0  # not half a character
        if self.clean and ready:
            ready = _stable_length(text)
        return self._release(text, ready)

    def end(self) -> list[str]:
        text = self.decode(self.prompt_ids + self.new_ids)[self.prompt_len:]
        return self._release(text, len(text))

    def _release(self, text: str, ready: int) -> list[str]:
        if ready <= self.sent:
            return []
        piece, self.sent = text[self.sent:ready], ready
        return [piece]
