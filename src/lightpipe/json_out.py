"""Results as JSON text any parser accepts. JSON has no NaN or Infinity (Python's json module
would write them bare, which `jq`, JavaScript and most parsers reject), so a non-finite float —
a score from a model that overflowed, say — is written as null."""

from __future__ import annotations

import json
import math


def finite(value):
    """`value` with every NaN/±Infinity float replaced by None; arrays and tensors become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch / numpy
        return finite(value.tolist())
    return value


def dumps(value, **kwargs) -> str:
    """json.dumps of `finite(value)`, UTF-8 as is (ensure_ascii=False); never NaN or Infinity."""
    return json.dumps(finite(value), ensure_ascii=False, allow_nan=False, **kwargs)
