"""Chat templates rendered exactly as transformers renders them: a sandboxed jinja2
environment with trim_blocks/lstrip_blocks, `raise_exception`, `strftime_now` and a
`tojson` that doesn't HTML-escape. Templates come from the checkpoint and are data, never code
we trust: the sandbox keeps them from reaching Python internals.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache


class ChatTemplateError(ValueError):
    """A template's `raise_exception` (wrong roles, unsupported messages): the caller's input is
    at fault, so a ValueError like every bad input (the server answers 422, not 500).
    transformers raises jinja2's TemplateError here."""


@lru_cache(maxsize=8)
def _compile(template: str):
    try:
        import jinja2.ext  # for loopcontrols: a submodule, which `import jinja2` alone doesn't load
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - jinja2 is in the chat extra
        raise ImportError("chat templates need jinja2: pip install 'lightpipe[chat]'") from e

    def raise_exception(message):
        raise ChatTemplateError(f"the model's chat template refused these messages: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def validate_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("chat input must be a non-empty list of {'role': ..., 'content': ...} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"chat message {i} must be a dict with 'role' and 'content', got {m!r}")
    return list(messages)


# transformers marks the final message's end with this tag to find where to cut the rendering
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def render_chat(template: str, messages, add_generation_prompt: bool = True, continue_final_message: bool = False,
                **kwargs) -> str:
    """The rendered chat. `continue_final_message`: end the text inside the last message (no
    end-of-turn after it) so the model continues it, cut as transformers cuts it: where a tag
    appended to the message lands, minus trailing space when the template trimmed the message."""
    messages = validate_messages(messages)
    if continue_final_message:
        if add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible: "
                             "continue_final_message continues the last message, add_generation_prompt starts a new one")
        messages, final = _tag_final_message(messages)
    text = _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     tools=None, documents=None, **kwargs)
    if not continue_final_message:
        return text
    tag = CONTINUE_TAG.strip()
    if final.strip() not in text or tag not in text:
        raise ValueError("continue_final_message is set but the final message does not appear in the chat after "
                         "applying the chat template (the template drops part of it)")
    at = text.rindex(tag)
    return text[:at] if text[at:at + len(CONTINUE_TAG)] == CONTINUE_TAG else text[:at].rstrip()


def _tag_final_message(messages: list[dict]) -> tuple[list[dict], str]:
    """A copy of the messages whose last text ends with CONTINUE_TAG, and that text untagged."""
    last = dict(messages[-1])
    content = last["content"]
    if isinstance(content, (list, tuple)):  # content blocks: the last one with text
        blocks = [dict(b) if isinstance(b, dict) else b for b in content]
        for block in reversed(blocks):
            if isinstance(block, dict) and "text" in block:
                final = block["text"]
                block["text"] = final + CONTINUE_TAG
                break
        else:
            raise ValueError("continue_final_message is set but the final message has no text to continue")
        last["content"] = blocks
    elif isinstance(content, str):
        final = content
        last["content"] = content + CONTINUE_TAG
    else:
        raise TypeError(f"the final message's content must be a string to continue it, got {type(content).__name__}")
    return messages[:-1] + [last], final
