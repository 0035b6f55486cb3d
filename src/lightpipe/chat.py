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


def render_chat(template: str, messages, add_generation_prompt: bool = True, **kwargs) -> str:
    return _compile(template).render(
        messages=validate_messages(messages), add_generation_prompt=add_generation_prompt,
        tools=None, documents=None, **kwargs,
    )
