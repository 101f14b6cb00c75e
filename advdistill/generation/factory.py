"""`make_engine`: the engine an `EngineConfig` selects (`auto` = vLLM where installed, else
transformers; `openai` = an OpenAI-compatible server). Kept apart from the engines so that the
endpoint engine and the local ones never import each other."""

from __future__ import annotations

import logging

from advdistill.config import EngineConfig
from advdistill.generation.base import Engine, vllm_available
from advdistill.generation.endpoint import OpenAIEngine
from advdistill.generation.engines import HFEngine, VLLMEngine
from advdistill.storage import local_model

log = logging.getLogger(__name__)


def make_engine(model: str, cfg: EngineConfig | None = None, seed: int = 0, *,
                stall_at_step: int | None = None) -> Engine:
    """The configured engine; `auto` = vLLM where it is installed, else transformers; `openai` =
    the server of `cfg.endpoint` (`generation.endpoint`; `model` then names the teacher's tokenizer).
    `stall_at_step`: a vLLM engine's step-loop fault injection (tests only)."""
    cfg = cfg or EngineConfig()
    if cfg.backend != "openai":  # an endpoint teacher's weights stay on its server
        model = local_model(model)  # a folder on a URI (a run's final/ on S3) is fetched to this node first
    kind = cfg.backend
    if kind == "auto":
        kind = "vllm" if vllm_available() else "transformers"
    if kind == "openai":
        return OpenAIEngine(model, cfg, seed)
    if kind == "vllm":
        if not vllm_available():
            raise RuntimeError("engine 'vllm' requested but vllm is not installed (pip install 'advdistill[gpu]' or '[cpu]')")
        return VLLMEngine(model, cfg, seed, stall_at_step=stall_at_step)
    log.info("using the transformers engine for %s", model)
    return HFEngine(model, cfg, seed)
