"""POST /evaluate (an evaluation, answered when done) and POST /evaluations + GET
/evaluations/{id} (the same as a background job to poll: `job_runner`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from advdistill.serve.routes.dependencies import Service, authorized
from advdistill.serve.schemas import (
    AUTH_RESPONSES,
    ERROR_RESPONSES,
    JOB_LIMIT_RESPONSE,
    EvaluateRequest,
    EvaluateResponse,
    EvaluationJob,
)

router = APIRouter(dependencies=[Depends(authorized)])


@router.post("/evaluate", responses=ERROR_RESPONSES)
async def evaluate(body: EvaluateRequest, service: Service) -> EvaluateResponse:
    return await service.evaluate(await service.planner.evaluation(body))


@router.post("/evaluations", status_code=202, responses={**ERROR_RESPONSES, 429: JOB_LIMIT_RESPONSE})
async def submit_evaluation(body: EvaluateRequest, service: Service) -> EvaluationJob:
    """The same body as /evaluate; answers at once with a job to poll. Every check /evaluate
    makes happens here first, so a bad request is a 4xx now, not a failed job later."""
    plan = await service.planner.evaluation(body)
    await service.jobs.check_store()  # a 503 now rather than a job whose state cannot be kept
    return EvaluationJob.model_validate(service.jobs.submit(body, plan))


@router.get("/evaluations/{job_id}", responses={**AUTH_RESPONSES, 404: ERROR_RESPONSES[404]})
async def get_evaluation(job_id: str, service: Service) -> EvaluationJob:
    return EvaluationJob.model_validate(await service.jobs.read(job_id))
