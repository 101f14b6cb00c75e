"""The one place a request error becomes an HTTP answer: each kind of `serve.errors` error has its
status code here (and the headers that go with it), pydantic's validation errors answer 422 with
short excerpts, and a job that fails records the same `status: detail` a request would get.

(The ASGI `guard` answers its own 401/413/400 before FastAPI runs: it refuses before the body is
read, where no handler is reachable.)"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from advdistill.serve.errors import (
    ApiError,
    Busy,
    Invalid,
    NotFound,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    UpstreamFailed,
)
from advdistill.serve.schemas import MAX_ERRORS_SHOWN, excerpt, issue

STATUS: dict[type[ApiError], int] = {
    Unauthorized: 401,
    NotFound: 404,
    TooLarge: 413,
    Invalid: 422,
    Busy: 429,
    UpstreamFailed: 502,
    Unavailable: 503,
    Timeout: 504,
}
HEADERS: dict[type[ApiError], dict[str, str]] = {
    Unauthorized: {"WWW-Authenticate": "Bearer"},
    Busy: {"Retry-After": "30"},
}


def status_of(err: ApiError) -> int:
    return STATUS[type(err)]


def validation_error(issues: list[dict[str, Any]]) -> JSONResponse:
    """422 with the fields at fault: at most MAX_ERRORS_SHOWN issues, then a count of the rest."""
    shown = issues[:MAX_ERRORS_SHOWN]
    if len(issues) > MAX_ERRORS_SHOWN:
        shown.append(issue(["body"], f"{len(issues) - MAX_ERRORS_SHOWN} more errors not shown", "too_many_errors"))
    return JSONResponse(status_code=422, content={"detail": shown})


def error_response(err: ApiError) -> JSONResponse:
    if isinstance(err, Invalid):
        return validation_error(err.issues)
    headers = dict(HEADERS.get(type(err), {}))
    if getattr(err, "retry_after", None) is not None:
        headers["Retry-After"] = str(err.retry_after)
    return JSONResponse(status_code=status_of(err), content={"detail": err.detail}, headers=headers or None)


def failure_text(err: Exception) -> str:
    """What a failed evaluation job records: `status: detail` for a request error, as the
    synchronous route would have answered, else the exception."""
    text = f"{status_of(err)}: {err}" if isinstance(err, ApiError) else f"{type(err).__name__}: {err}"
    return excerpt(text, 500) or ""


async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc)


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own handler echoes every input in full (a 20 MB body comes back) and fails with a
    # 500 on inputs JSON cannot carry (NaN, lone surrogates): excerpts only.
    return validation_error([issue(list(e.get("loc", ())), str(e.get("msg", "")), str(e.get("type", "value_error")),
                                   e.get("input")) for e in exc.errors()])


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
