"""Secure by default: the API answers without a bearer token only on a loopback address.

- `auth_line(host, token, token_env)`: what the ingress replica logs when it starts ("auth: bearer
  token from $ADVDISTILL_API_TOKEN", "auth: off (loopback only)"), or `InsecureBind` — the replica
  refuses to start — for any other address without a token: `serve run` or `serve deploy` on
  `0.0.0.0` or a private address never serves an open API.
- `bind_host()`: the address Serve's HTTP proxies listen on, as the Serve controller holds it.
- `stored_token(path)`: `distill.py --serve` on a non-loopback address without a token makes one,
  stores it in a file only its owner reads (`serve_token_file`) and prints where.
Plain Python but for `bind_host` (which asks Serve)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

TOKEN_FILE = Path("~/.config/advdistill/api-token")  # where distill.py --serve keeps a token it made


class InsecureBind(RuntimeError):
    """A non-loopback bind with no token set."""


def is_loopback(host: str | None) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:  # a name other than localhost, or unknown (None): could be any interface
        return False


def auth_line(host: str | None, token: str | None, token_env: str) -> str:
    """The start-up log line for a bind on `host` with `token` (None: unset); InsecureBind for a
    non-loopback bind without one."""
    if token:
        return f"auth: bearer token from ${token_env}"
    if is_loopback(host):
        return "auth: off (loopback only)"
    raise InsecureBind(
        f"the evaluation API would listen on {host or 'an unknown address'} (not loopback) with no token: set "
        f"{token_env} in the API replica's environment (runtime_env env_vars; distill.py --serve makes one), or "
        "bind 127.0.0.1")


def bind_host() -> str | None:
    """The host Serve's HTTP proxies bind (http_options.host), or None if Serve cannot say."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:  # noqa: BLE001 - unknown is treated as not loopback
        return None


def stored_token(path: Path = TOKEN_FILE) -> tuple[str, Path]:
    """The token kept in `path`, made (and written readable by its owner only) if there is none."""
    path = path.expanduser()
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), path
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token, path
