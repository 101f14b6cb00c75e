"""The FastAPI app of the evaluation API: the routes (`serve.routes`), the error handlers
(`serve.error_handlers`) and, in front of everything, the ASGI `RequestGuard` (token, body size).
No Ray: `app.EvaluateAPI` serves it on Ray Serve; tests build it around an `EvaluationService`."""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI

from advdistill.serve.error_handlers import add_error_handlers
from advdistill.serve.guard import RequestGuard
from advdistill.serve.openai_errors import OpenAIErrors
from advdistill.serve.routes import evaluations, models, openai
from advdistill.serve.routes.dependencies import current_service
from advdistill.serve.service import EvaluationService


def make_api(service: Callable[[], EvaluationService] = current_service) -> FastAPI:
    """The app; `service()` gives the state of the replica answering (default: the Serve replica's
    own, `routes.dependencies.current_service`)."""
    api = FastAPI(
        title="AdvDistill evaluation API",
        description="Accuracy and behaviour (verbosity, degeneracy, template adherence) of served models.",
        version="0.1.0",
    )
    add_error_handlers(api)
    api.add_middleware(RequestGuard, settings=lambda: service().guard_settings())
    api.add_middleware(OpenAIErrors)  # outermost: the guard's /v1 refusals in OpenAI's shape too
    for routes in (models, evaluations, openai):
        api.include_router(routes.router)
    if service is not current_service:
        api.dependency_overrides[current_service] = service
    return api
