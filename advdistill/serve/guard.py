"""What the evaluation API checks before a request reaches FastAPI (`RequestGuard`: the bearer
token first, then the body size), and the path containment rules for models and dataset files."""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Callable

from ray import serve

from advdistill.storage import location

# ------------------------------------------------------------------------------ the guard


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, list]:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]


# Paths that need no token: liveness and the API's documentation.
PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DEFAULT_MAX_BODY_BYTES = 8 * 2**20


class RequestGuard:
    """ASGI middleware, before FastAPI reads anything: the bearer token (401), then the body size
    (413 from Content-Length, or while the body arrives); the body is then handed on as read.
    Settings come from the replica's `EvaluateAPI` (outside Serve: no token, the default limit)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    @staticmethod
    def _settings() -> tuple[str | None, int]:
        try:
            server = serve.get_replica_context().servable_object
            return server.token, server.cfg.serve.max_body_bytes
        except Exception:  # noqa: BLE001 - not in a Serve replica (tests of the bare app)
            return None, DEFAULT_MAX_BODY_BYTES

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        token, max_bytes = self._settings()
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
        while True:
            message = await receive()
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



def inside_location(root: str, candidate: str):
    """`candidate` (a relative path without `..`) under a URI root, as a `storage.Location`."""
    parts = candidate.split("/")
    if not candidate or candidate.startswith("/") or "://" in candidate or ".." in parts or "\0" in candidate:
        return None
    return location(root) / candidate


def inside(root: Path, candidate: str) -> Path | None:
    """`candidate` resolved under `root`, or None if it would leave it (.., absolute, symlinks)
    or cannot be a path at all (NUL bytes, names too long for the OS)."""
    try:
        root = root.resolve()
        path = (root / candidate).resolve()
    except (OSError, ValueError, RuntimeError):
        return None
    return path if path == root or root in path.parents else None


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


