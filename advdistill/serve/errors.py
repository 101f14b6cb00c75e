"""What can be wrong with a request, by kind rather than by HTTP status: the checks (`planning`,
`catalog`, `job_runner`, `execution`) raise these, and `error_handlers` is the one place that
turns each kind into a status code and a body. Plain Python: no FastAPI, no Ray."""

from __future__ import annotations

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
    """The model's replicas could not generate (an engine failure, replicas that kept dying)."""


class Timeout(ApiError):
    """Loading the dataset took longer than `serve.load_timeout_s`."""
