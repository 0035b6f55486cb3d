"""Every error the server sends is JSON `{"error": message, "error_type": kind}` — the shape
text-generation-inference and text-embeddings-inference use, which huggingface_hub parses
(`error_type` "validation" / "overloaded" become its ValidationError / OverloadedError) and
the openai client shows as the message."""

from __future__ import annotations

import json


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type
        self.headers = headers or {}

    def body(self) -> bytes:
        return json.dumps({"error": self.message, "error_type": self.error_type}).encode()


def validation(message: str) -> ApiError:
    return ApiError(422, message, "validation")


def not_found(message: str) -> ApiError:
    return ApiError(404, message, "not_found")


def too_large(message: str) -> ApiError:
    return ApiError(413, message, "payload_too_large")


def overloaded(message: str) -> ApiError:
    return ApiError(429, message, "overloaded", {"Retry-After": "1"})


def loading(message: str) -> ApiError:
    return ApiError(503, message, "loading", {"Retry-After": "5"})


def from_exception(e: BaseException) -> ApiError:
    """What a pipeline's exception means for the client: bad input (the pipeline raises
    ValueError/TypeError naming the argument) is 422; anything else is the server's fault."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, (ValueError, TypeError)):
        return validation(str(e))
    return ApiError(500, f"{type(e).__name__}: {e}", "server_error")
