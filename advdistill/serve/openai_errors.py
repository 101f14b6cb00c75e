"""Every /v1 error in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, which the
OpenAI SDKs read into their typed exceptions (`e.code`, `e.param`, `e.message`) and lm-eval logs.

The rest of the API answers FastAPI's `{"detail": ...}`; its errors come from several places —
the ASGI `guard` (401, 413, 400 before the body is parsed), the `error_handlers` table (every
`serve.errors` kind and pydantic's 422), Starlette itself (404 for an unknown route, 405) — and
each keeps its status code. `OpenAIErrors` is one ASGI middleware outside all of them: for a /v1
path it rewrites an error answer's body into OpenAI's shape (the status and headers stay), and
answers 500 in that shape for an exception nothing handled. Statuses stay ours (422 for a field
at fault, 413 over a limit): both are 4xx that the SDKs raise as `UnprocessableEntityError` and
`APIStatusError`.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable

from advdistill.serve.schemas import excerpt

log = logging.getLogger(__name__)

# OpenAI's `type` by status; the `code` where the status alone says what went wrong.
TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
CODES = {400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
         408: "timeout", 413: "limit_exceeded", 429: "rate_limit_exceeded", 503: "unavailable", 504: "timeout"}
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}  # pydantic's union-branch names in a loc


def is_openai_path(scope: dict) -> bool:
    """A /v1 route (also under a route prefix, where ASGI's path includes the root path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path == "/v1" or path.startswith("/v1/")


def param(loc: list[Any]) -> str | None:
    """A pydantic `loc` as OpenAI names a field: ["body", "messages", 0, "content"] ->
    "messages[0].content" (["path", "model"] -> "model"). Union-branch tags (`list[constrained-int]`, `function-after[...]`)
    are left out: they name pydantic's internals, not the request."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "path", "query") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _FIELD.match(part) and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out or None


def openai_error(status: int, detail: Any) -> dict[str, Any]:
    """FastAPI's `detail` (a message, or pydantic's list of issues) as OpenAI's error object."""
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        where = param(list(first.get("loc", [])))
        messages = [f"{param(list(i.get('loc', []))) or 'body'}: {i.get('msg', '')}" for i in detail]
        return {"error": {"message": excerpt("; ".join(messages), 2000), "type": kind, "param": where,
                          "code": first.get("type") or "invalid_value"}}
    message = detail if isinstance(detail, str) else json.dumps(detail)
    code = "model_not_found" if status == 404 and "model" in message else CODES.get(status)
    return {"error": {"message": excerpt(message, 2000), "type": kind, "param": None, "code": code}}


class OpenAIErrors:
    """ASGI middleware: /v1 error answers in OpenAI's shape (see the module's docstring)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not is_openai_path(scope):
            return await self.app(scope, receive, send)
        held: dict[str, Any] = {}  # an error answer's start, held until its body is complete
        started = False

        async def rewriting(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                content_type = dict(message.get("headers") or []).get(b"content-type", b"")
                if message["status"] >= 400 and content_type.startswith(b"application/json"):
                    held.update(start=message, body=b"")
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body", False):
                    return
                start = held.pop("start")
                body = self._rewritten(start["status"], held.pop("body"))
                headers = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                return await send({"type": "http.response.body", "body": body})
            await send(message)

        try:
            await self.app(scope, receive, rewriting)
        except Exception as err:  # noqa: BLE001 - a 500 in OpenAI's shape, not Starlette's plain text
            if started:
                raise
            log.exception("unhandled error on %s", scope.get("path"))
            body = json.dumps(openai_error(500, f"internal error: {type(err).__name__}")).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _rewritten(status: int, body: bytes) -> bytes:
        try:
            parsed = json.loads(body)
        except ValueError:
            return body
        if not isinstance(parsed, dict) or "detail" not in parsed:
            return body  # already OpenAI's shape, or not an error body of this API
        return json.dumps(openai_error(status, parsed["detail"])).encode()
