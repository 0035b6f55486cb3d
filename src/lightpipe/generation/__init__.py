"""Text generation: one engine (continuous batching) for pipelines, streams and the server.

  engine.py      Engine: submit / step / cancel over a changing batch of sequences (its
                 docstring is the API), events() as a generator for streams
  request.py     Handle (a request and its results), Event, length resolution
  processors.py  logits processors, sampling, stop strings, the token History
  beams.py       beam search groups
  static.py      generate(): transformers' model.generate() call shape on the engine
KV cache rows live in models/kv_cache.py; the settings a request carries are generation_config.py's.
"""

from ..generation_config import GenerationConfig
from .engine import Engine
from .request import Event, Handle
from .static import generate

__all__ = ["Engine", "Event", "GenerationConfig", "Handle", "generate"]
