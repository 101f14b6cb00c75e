"""`generate_rows`, the generation step curation (the Ray Data actor), evaluation and the Serve
replica share: a record's samples depend on its id and the seed, not on the batch it is in."""

from advdistill.config import EngineConfig, PromptConfig
from advdistill.data.synthetic import make_split
from advdistill.generation.base import GenerationParams
from advdistill.generation.engines import HFEngine
from advdistill.generation.rows import generate_rows
from advdistill.prompts import build_prompt
from advdistill.schema import GeneratedGroup, arrow_schema, from_arrow, to_arrow

from conftest import TINY_TEACHER


def test_rows_keep_their_samples_whatever_the_batch():
    engine = HFEngine(str(TINY_TEACHER), EngineConfig(backend="transformers"))
    records = make_split("test", 3)
    params = GenerationParams(n=2, temperature=0.9, max_tokens=24)
    prompt = PromptConfig(few_shot=0)
    together = generate_rows(engine, records, params, prompt=prompt, few_shot=0, seed=7)
    alone = generate_rows(engine, records[2:], params, prompt=prompt, few_shot=0, seed=7)
    assert together[2]["responses"] == alone[0]["responses"]
    assert generate_rows(engine, records[2:], params, prompt=prompt, few_shot=0, seed=8)[0]["responses"] != alone[0]["responses"]

    row = together[0]
    assert row["prompt"] == build_prompt(engine.tokenizer, records[0], prompt_cfg=prompt)
    assert len(row["responses"]) == len(row["token_lengths"]) == len(row["finish_reasons"]) == 2
    assert from_arrow(to_arrow(together, arrow_schema(GeneratedGroup))) == together  # a GeneratedGroup as it is
