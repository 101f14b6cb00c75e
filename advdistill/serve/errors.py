"""What can be wrong with a request, by kind rather than by HTTP status: the checks (`planning`,
`catalog`, `job_runner`, `execution`) raise these, and `error_handlers` is the one place that
turns each kind into a status code and a body. Plain Python: no FastAPI, no Ray."""

from __future__ import annotations

import re
from typing import Any


class ApiError(Exception):
    """A request the API answers with an error; `detail` says why, in words a client can act on."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class Unauthorized(ApiError):
    """No bearer token, or the wrong one."""

    def __init__(self, detail: str = "missing or invalid bearer token"):
        super().__init__(detail)


class NotFound(ApiError):
    """An unknown model, evaluation job, dataset file or dataset split."""


class TooLarge(ApiError):
    """Over a configured limit (`serve.max_items`, `serve.max_request_tokens`,
    `serve.max_dataset_bytes`)."""


class Invalid(ApiError):
    """Fields at fault after the request parsed (a reference its task cannot judge, `few_shot`
    beyond the exemplars, a prompt longer than the context): `issues` as `schemas.issue` builds
    them, each with the field's path (`loc`), e.g. ["body", "items", 3, "question"]."""

    def __init__(self, issues: list[dict[str, Any]]):
        super().__init__(issues[0]["msg"] if issues else "invalid request")
        self.issues = issues


class Busy(ApiError):
    """`serve.max_concurrent_jobs` evaluation jobs are running: retry later."""


class UpstreamFailed(ApiError):
    """A dataset hub could not be reached (only with `serve.allow_hub`)."""


class Unavailable(ApiError):
    """The model's replicas could not generate (an engine failure, replicas that kept dying), the
    on-demand engines are all busy, or the job store cannot be opened. `retry_after`: seconds a
    client should wait before trying again (the Retry-After header), when that is known."""

    def __init__(self, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.retry_after = retry_after


class Timeout(ApiError):
    """Loading the dataset took longer than `serve.load_timeout_s`."""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_WHERE = re.compile(r"\s*\((?:pid|ip|node)=[^)]*\)|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$")


def describe(err: BaseException, limit: int = 300) -> str:
    """`Type: message` of what went wrong, in one line a client may read: the exception raised in
    the replica or actor rather than Ray's wrapper (`RayTaskError.cause`), and never a traceback,
    terminal colour codes, a process id or an address."""
    seen = set()
    while getattr(err, "cause", None) is not None and isinstance(err.cause, BaseException) and id(err) not in seen:
        seen.add(id(err))
        err = err.cause
    lines = [line.strip() for line in _ANSI.sub("", str(err)).splitlines() if line.strip()]
    # An actor that died in its constructor reports the traceback as text: its last `Type: message`.
    raised = [m for m in map(_RAISED.match, lines) if m]
    name = type(err).__name__
    if raised and ("Traceback" in str(err) or name.startswith(("RayTaskError", "ActorDied", "RayActorError"))):
        name, message = raised[-1].group(1).rsplit(".", 1)[-1], raised[-1].group(2)
    else:
        message = lines[0] if lines else ""
    text = f"{name}: {_WHERE.sub('', message)}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
