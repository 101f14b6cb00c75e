"""What the evaluation API checks before a request reaches FastAPI (`RequestGuard`): the bearer
token first, then the body size. Plain ASGI: no Ray."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Callable, NamedTuple


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, list]:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]


# Paths that need no token: liveness and the API's documentation.
PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class GuardSettings(NamedTuple):
    token: str | None  # None: no authentication
    max_body_bytes: int  # serve.max_body_bytes
    body_timeout_s: float = 30.0  # serve.body_timeout_s


class RequestGuard:
    """ASGI middleware, before FastAPI reads anything: the bearer token (401), then the body size
    (413 from Content-Length, or while the body arrives) and the time it takes to arrive (408
    after `body_timeout_s`: a trickled body does not hold a request open); the body is then handed
    on as read.
    `settings()` gives the token and the limit of the replica answering (the app is built before
    any replica exists, so they are read per request)."""

    def __init__(self, app: Callable, settings: Callable[[], GuardSettings]) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token, max_bytes, body_timeout_s = self.settings()
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        root = scope.get("root_path", "")  # an app under a route prefix: ASGI's path includes it
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if token is not None and path not in PUBLIC_PATHS and not bearer_ok(headers.get(b"authorization", b""), token):
            return await _respond(send, *_error(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"}))
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > max_bytes:
                    return await _respond(send, *_error(413, f"request body of {int(declared)} bytes exceeds the limit "
                                                             f"of {max_bytes} bytes"))
            except ValueError:
                return await _respond(send, *_error(400, "invalid Content-Length"))
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # Read the body here, counting, so an over-long chunked body is refused as it arrives.
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                return await _respond(send, *_error(408, f"the request body did not arrive within {body_timeout_s:g} s "
                                                         "(serve.body_timeout_s)", {"Connection": "close"}))
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                return await _respond(send, *_error(413, f"request body exceeds the limit of {max_bytes} bytes"))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def bearer_ok(header: bytes, token: str) -> bool:
    scheme, _, given = header.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1", "replace"),
                                                              token.encode("latin-1", "replace"))


async def _respond(send: Callable, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
