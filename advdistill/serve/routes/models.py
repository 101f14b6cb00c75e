"""GET /healthz (liveness, no token) and GET /models (what is served, from which checkpoint, with
which prompt settings; the checkpoints loaded on demand and those available)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from advdistill.serve.routes.dependencies import Service, authorized
from advdistill.serve.schemas import AUTH_RESPONSES, Health, ModelList

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/models", responses=AUTH_RESPONSES, dependencies=[Depends(authorized)])
async def list_models(service: Service) -> ModelList:
    return await service.catalog.listing()
