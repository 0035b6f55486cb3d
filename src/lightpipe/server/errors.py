"""Errors the server sends, in the shape each client family parses:

- HF Inference API, TGI and TEI routes: `{"error": message, "error_type": kind}` (huggingface_hub
  turns `error_type` "validation" / "overloaded" into its ValidationError / OverloadedError);
- OpenAI routes (`/v1/...`, `/models/{id}/v1/...`): OpenAI's `{"error": {"message", "type",
  "param", "code"}}`, whose message the openai client puts in the exception it raises.

A client's mistake is a 4xx; 5xx (which clients retry) is kept for the server's own faults.
Messages never carry the server's folders: `scrub` replaces them before anything is sent."""

from __future__ import annotations

import json
import os
import re

OPENAI_PATH = re.compile(r"^(/v1/|/models/.+/v1/)")


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str, headers: dict | None = None,
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type
        self.headers = headers or {}
        self.param = param  # the request field at fault (OpenAI's `param`)
        self.code = code  # OpenAI's `code` when it has a name for the case (else error_type)

    def body(self, path: str = "") -> bytes:
        """The JSON body for a request to `path`: OpenAI's shape on OpenAI routes, else HF's."""
        message = scrub(self.message)
        if OPENAI_PATH.match(path):
            content = {"error": {"message": message, "type": openai_type(self.status), "param": self.param,
                                 "code": self.code or self.error_type}}
        else:
            content = {"error": message, "error_type": self.error_type}
        return json.dumps(content, ensure_ascii=False).encode()


def openai_type(status: int) -> str:
    """OpenAI's error `type` for a status."""
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "invalid_request_error")


def validation(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(422, message, "validation", param=param, code=code)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "validation", param=param)


def not_found(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(404, message, "not_found", param=param, code=code)


def too_large(message: str, param: str | None = None) -> ApiError:
    return ApiError(413, message, "payload_too_large", param=param)


def overloaded(message: str) -> ApiError:
    return ApiError(429, message, "overloaded", {"Retry-After": "1"})


def loading(message: str) -> ApiError:
    return ApiError(503, message, "loading", {"Retry-After": "5"})


def client_gone() -> ApiError:
    """The client closed the connection before its answer: nothing is sent; 499 in the metrics
    and the log (nginx's "client closed request")."""
    return ApiError(499, "the client closed the connection", "cancelled")


def from_exception(e: BaseException) -> ApiError:
    """What a pipeline's exception means for the client: bad input (the pipeline raises
    ValueError/TypeError naming the argument) is 422; anything else is the server's fault, and
    its text (which may hold a C++ trace or a folder) stays in the server's log."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, (ValueError, TypeError)):
        return validation(str(e))
    return internal()


def internal() -> ApiError:
    return ApiError(500, "internal server error; the server's log has the details (look for this request's "
                         "X-Request-Id)", "server_error")


# -- the server's folders never leave it --------------------------------------------------------

_hidden: dict[str, str] = {}  # folder → what to say instead


def hide(folder, shown_as: str) -> None:
    """Replace `folder` (and anything under it) by `shown_as` in every message sent."""
    text = os.fspath(folder).rstrip("/\\")
    if len(text) > 1:
        _hidden[text] = shown_as
        real = os.path.realpath(text)
        if real != text:
            _hidden[real] = shown_as


def scrub(message: str) -> str:
    """`message` without the server's folders: served models' folders, the Hugging Face cache,
    the working directory and the home directory (the last three as they are now)."""
    hidden = {**_places(), **_hidden}
    for folder in sorted(hidden, key=len, reverse=True):  # the longest (most specific) first
        if folder in message:
            message = re.sub(re.escape(folder) + r"[^\s'\"),;]*", hidden[folder], message)
    return message


def _places() -> dict[str, str]:
    from ..hub import cache_dir

    places = {}
    for folder, shown in ((os.path.expanduser("~"), "<home>"), (os.getcwd(), "<cwd>"), (str(cache_dir()), "<hf-cache>")):
        folder = folder.rstrip("/\\")
        if len(folder) > 1:
            places[folder] = shown
    return places
