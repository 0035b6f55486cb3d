"""lightpipe's HTTP server: HF Inference API, OpenAI and text-embeddings-inference routes over
dynamically batched pipelines, and the browser playground. Needs the `serve` extra
(starlette, uvicorn)."""

from .app import create_app, serve, start_in_thread
from .common import ServerConfig

__all__ = ["create_app", "serve", "start_in_thread", "ServerConfig"]
