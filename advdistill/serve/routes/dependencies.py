"""What every route depends on: the state of the ingress replica answering (`Service`) and, for
every route but /healthz, the bearer token (`authorized`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from advdistill.serve.errors import Unauthorized
from advdistill.serve.guard import bearer_ok
from advdistill.serve.service import EvaluationService


def current_service() -> EvaluationService:
    """The replica's `app.EvaluateAPI` (Serve's own lookup for class-based ingresses); an app
    built with `make_api(service=...)` (tests, no Serve) overrides it."""
    from ray import serve  # Ray only inside a Serve replica: the routes import without it

    return serve.get_replica_context().servable_object


Service = Annotated[EvaluationService, Depends(current_service)]


def authorized(request: Request, service: Service) -> None:
    """With `serve.token_env` set, `Authorization: Bearer <token>`. `RequestGuard` refused a wrong
    one before the body was read; this is the same check where the route is declared, so no
    protected route answers without it (a route added to the guard's public paths by mistake)."""
    header = request.headers.get("authorization", "").encode("latin-1", "replace")
    if service.token is not None and not bearer_ok(header, service.token):
        raise Unauthorized()
