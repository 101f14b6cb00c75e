"""Every check of a request before anything is generated, and what to generate: from a parsed
request, the model the catalog resolved and the limits of `ServeConfig`, to a plan — or a
`serve.errors` error naming what is wrong (`error_handlers` gives each its status).

The functions are plain (no Ray, no FastAPI); `Planner` strings them together for a route and
runs what blocks (tokenising, reading a dataset, file checks) through `off_loop`, so the
ingress's event loop stays free. The order of the checks, for /evaluate and /evaluations:
the model (404), `max_tokens` and item count (413), the items or the dataset (422, 404, 413, 504,
502), `few_shot` (422), the context (422 for items; dataset rows too long are quarantined)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advdistill.config import DatasetConfig, ExperimentConfig, ServeConfig
from advdistill.data.loaders import DATASET_SUFFIXES, DatasetError, LoadResult, checked_record, load_records
from advdistill.generation.base import GenerationParams
from advdistill.generation.rows import fit_context, prompt_tokens, too_long_reason
from advdistill.prompts import exemplars_for, render_prompt
from advdistill.serve.catalog import Catalog, OffLoop, Served
from advdistill.serve.errors import ApiError, Invalid, NotFound, Timeout, TooLarge, UpstreamFailed
from advdistill.serve.openai_compat import OPENAI_DEFAULT_MAX_TOKENS, ChatCompletionRequest, CompletionRequest
from advdistill.serve.paths import is_file, requested_path
from advdistill.serve.schemas import DatasetRef, EvaluateRequest, Item, excerpt, issue
from advdistill.tasks import BadRow, get_task

Record = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """A checked evaluation request: the records to generate (those that fit the context), how,
    and what was left out (dataset requests only; None for items)."""

    model: str
    handle: Any  # the model's replicas (a configured model's deployment, or the checkpoints one)
    records: list[Record]
    group_by: str | None
    quarantined: list[Record] | None
    few_shot: int
    params: dict[str, Any]  # GenerationParams' fields and the seed


@dataclass(frozen=True)
class CompletionPlan:
    """A checked /v1 request: the prompts as the model reads them (text or token ids), with their
    token counts, and with `echo` each prompt as text."""

    served: Served
    prompts: list[str | list[int]]
    params: dict[str, Any]  # GenerationParams' fields
    prompt_tokens: list[int]
    echoed: list[str] | None = None


# ------------------------------------------------------------------------------ limits (413)


def check_max_tokens(max_tokens: int, limits: ServeConfig) -> None:
    if max_tokens > limits.max_request_tokens:
        raise TooLarge(f"max_tokens {max_tokens} exceeds the limit of {limits.max_request_tokens}")


def check_count(count: int, what: str, limits: ServeConfig, hint: str = "") -> None:
    """`what` says what is counted and how: "12 items exceed", "limit 900 exceeds"."""
    if count > limits.max_items:
        raise TooLarge(f"{what} the limit of {limits.max_items} per request{hint}")


# ------------------------------------------------------------------------------ items and datasets


def item_records(items: list[Item]) -> list[Record]:
    """The request's items as records; a reference or options its task cannot judge is a 422."""
    records, issues = [], []
    for i, item in enumerate(items):
        record = {"id": item.id or f"item-{i:05d}", "task": item.task, "question": item.question,
                  "reference": item.reference, "choices": item.choices, "meta": {}}
        try:
            records.append(checked_record(record, get_task(item.task)))
        except BadRow as err:
            field = "choices" if "choices" in str(err) and "reference" not in str(err) else "reference"
            issues.append(issue(["body", "items", i, field], str(err), value=record[field]))
    if issues:
        raise Invalid(issues)
    return records


def dataset_file(name: str, limits: ServeConfig) -> str:
    """The file a request names: a regular dataset file inside the data root, not in a hidden
    folder; NotFound (never a read) otherwise, TooLarge over the size limit."""
    resolved = requested_path(limits.data_root, name)
    if resolved is None or not is_file(resolved):
        raise NotFound(f"dataset file {excerpt(name, 200)!r} not found")
    if resolved.suffix not in DATASET_SUFFIXES:
        raise Invalid([issue(["body", "dataset", "path"], f"not a dataset file: give a "
                             f"{', '.join(DATASET_SUFFIXES)} file", value=name)])
    size = resolved.stat().st_size
    if size > limits.max_dataset_bytes:
        raise TooLarge(f"dataset file of {size} bytes exceeds the limit of {limits.max_dataset_bytes}")
    return str(resolved)


def dataset_source(ref: DatasetRef, limits: ServeConfig) -> DatasetConfig:
    """What to load for a dataset request: a file inside the data root, a built-in generator, the
    file a task declared in the server's config names, or (with `serve.allow_hub`) the hub."""
    path = None
    spec = get_task(ref.name)
    if ref.path is not None:
        path = dataset_file(ref.path, limits)
    elif spec.generate is None and spec.source_file is None and not limits.allow_hub:
        raise Invalid([issue(["body", "dataset", "path"], f"{ref.name} is a hub dataset and this server loads none "
                             "from the hub: name a file inside its data root")])
    if ref.limit is not None:
        check_count(ref.limit, f"limit {ref.limit} exceeds", limits)
    try:
        return DatasetConfig(name=ref.name, split=ref.split, path=path, limit=ref.limit)
    except ValueError as err:  # a split the task does not have
        why = err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)
        raise NotFound(f"dataset not available: {excerpt(why, 300)}") from None


def load_failure(err: Exception, ref: DatasetRef, limits: ServeConfig) -> ApiError:
    """What a failed dataset load answers."""
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return Timeout(f"loading dataset {ref.name!r} took longer than {limits.load_timeout_s} s")
    if isinstance(err, DatasetError):
        return Invalid([issue(["body", "dataset", "path"], str(err).replace(str(Path(limits.data_root)), ""),
                              value=ref.path)])
    if isinstance(err, (ValueError, FileNotFoundError)):
        return NotFound(f"dataset not available: {excerpt(str(err), 300)}")
    # the hub (only with allow_hub) may be unreachable
    return UpstreamFailed(f"could not load dataset {ref.name!r}: {type(err).__name__}")


def dataset_records(loaded: LoadResult, ref: DatasetRef, limits: ServeConfig) -> tuple[list[Record], list[Record]]:
    """The records of a loaded dataset and its quarantined rows (their source left out)."""
    if not loaded.records:
        first = loaded.quarantined[0] if loaded.quarantined else None
        why = f"; first: line {first.get('line')}: {first['reason']}" if first else ""
        raise Invalid([issue(["body", "dataset"], f"no usable record in {ref.path or ref.name} "
                                                  f"({len(loaded.quarantined)} rows quarantined{why})")])
    count = len(loaded.records)
    check_count(count, f"{count} records exceed", limits, hint=": give a limit")
    return loaded.records, [{k: v for k, v in q.items() if k != "source"} for q in loaded.quarantined]


# ------------------------------------------------------------------------------ prompts


def check_few_shot(records: list[Record], few_shot: int, exemplars_path: str | None) -> None:
    for task in sorted({r["task"] for r in records}):
        try:
            exemplars_for(task, few_shot, exemplars_path)
        except ValueError as err:
            raise Invalid([issue(["body", "sampling", "few_shot"], f"task {task}: {err}", value=str(few_shot))]) from None


def check_fit(records: list[Record], fitting: list[Record], too_long: list[Record], from_items: bool) -> None:
    """Items whose prompt leaves no room for max_tokens are a 422 naming each; dataset rows are
    quarantined instead (as the offline evaluator does), unless none is left."""
    if from_items and too_long:
        position = {r["id"]: i for i, r in enumerate(records)}
        raise Invalid([issue(["body", "items", position[q["id"]], "question"], q["reason"]) for q in too_long])
    if not fitting:
        raise Invalid([issue(["body", "dataset"], f"no record of the dataset fits the model's context: "
                                                  f"{too_long[0]['reason']}")])


def check_prompt_lengths(counts: list[int], max_tokens: int, max_model_len: int, field: str) -> None:
    """/v1: a prompt that leaves no room for max_tokens is a 422 naming it."""
    over = [issue(["body", field] + ([i] if field == "prompt" else []), too_long_reason(n, max_model_len, max_tokens),
                  "context_length_exceeded")
            for i, n in enumerate(counts) if n + max_tokens > max_model_len]
    if over:
        raise Invalid(over)


def check_token_ids(prompts: list[str | list[int]], vocab_size: int) -> None:
    """/v1/completions: a token-id prompt holds only the model's token ids (422 naming it)."""
    bad = [(i, next(t for t in p if t >= vocab_size)) for i, p in enumerate(prompts)
           if not isinstance(p, str) and max(p) >= vocab_size]
    if bad:
        raise Invalid([issue(["body", "prompt", i], f"token id {token} is not in the model's vocabulary of "
                                                    f"{vocab_size}") for i, token in bad])


def count_tokens(tokenizer: Any, prompts: list[str | list[int]]) -> list[int]:
    """Each prompt's tokens: text through the tokenizer (`rows.prompt_tokens`), ids as given."""
    texts = iter(prompt_tokens(tokenizer, [p for p in prompts if isinstance(p, str)]))
    return [next(texts) if isinstance(p, str) else len(p) for p in prompts]


def as_text(tokenizer: Any, prompts: list[str | list[int]]) -> list[str]:
    """`echo`: each prompt as text (token ids decoded as the model's tokenizer reads them)."""
    return [p if isinstance(p, str) else tokenizer.decode(p) for p in prompts]


def check_chars(texts: list[str], limits: ServeConfig) -> None:
    """413 for more prompt text than `serve.max_request_chars`, counted before anything is
    tokenized (6.4 MB of prompts took a minute to tokenize only to be refused)."""
    total = sum(len(t) for t in texts if isinstance(t, str))  # token ids need no tokenizing
    if total > limits.max_request_chars:
        raise TooLarge(f"{total} characters of prompt text exceed the limit of {limits.max_request_chars} "
                       "(serve.max_request_chars)")


def control_tokens(tokenizer: Any) -> list[str]:
    """The texts of the tokenizer's special tokens (`<|im_start|>`, `<|im_end|>`, ...): written in
    a message, the chat template's output would hold them as real role markers."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted({t.content for t in added.values() if getattr(t, "special", False) and t.content})


def check_no_control_tokens(contents: list[str], tokenizer: Any) -> None:
    """422 naming each chat message whose content holds special-token text: refused, not escaped
    (any escape changes what the model reads; a client that means the text can say so otherwise)."""
    tokens = control_tokens(tokenizer) if tokenizer is not None else []
    found = [(i, next(t for t in tokens if t in c)) for i, c in enumerate(contents) if any(t in c for t in tokens)]
    if found:
        raise Invalid([issue(["body", "messages", i, "content"], f"holds the special-token text {token!r}, which "
                             "would become a real role marker in the prompt: remove it") for i, token in found])


def openai_params(body: CompletionRequest | ChatCompletionRequest, max_tokens: int, prompts: int,
                  limits: ServeConfig, logprobs: int | None = None, prompt_logprobs: int | None = None
                  ) -> dict[str, Any]:
    check_max_tokens(max_tokens, limits)
    check_count(prompts * body.n, f"{prompts} prompts x n={body.n} exceed", limits)
    if body.stream and (logprobs is not None or getattr(body, "echo", False)):
        field = "logprobs" if logprobs is not None else "echo"
        raise Invalid([issue(["body", field], f"{field} is not supported with stream: true (ask without stream)")])
    params = {"n": body.n, **body.sampling, "max_tokens": max_tokens, "stop": list(body.stop or []),
              "logprobs": logprobs, "prompt_logprobs": prompt_logprobs}
    try:
        GenerationParams(**params)
    except ValueError as err:
        raise Invalid([issue(["body", "n"], str(err), value=body.n)]) from None
    return params


# ------------------------------------------------------------------------------ the planner


class Planner:
    """The checks of each route, in order, for one ingress replica."""

    def __init__(self, cfg: ExperimentConfig, catalog: Catalog, off_loop: OffLoop):
        self.cfg, self.catalog, self.off_loop = cfg, catalog, off_loop

    async def evaluation(self, body: EvaluateRequest) -> Plan:
        """/evaluate and /evaluations: every check before generation; what to generate and how."""
        served = await self.catalog.resolve(body.model)
        limits = self.cfg.serve
        max_tokens = body.sampling.max_tokens or self.cfg.eval.max_tokens
        check_max_tokens(max_tokens, limits)
        if body.items is not None:
            check_count(len(body.items), f"{len(body.items)} items exceed", limits)
            check_chars([t for item in body.items for t in (item.question, *(item.choices or []))], limits)
            records, group_by, quarantined = item_records(body.items), None, []
        else:
            records, quarantined = await self._dataset(body.dataset)
            group_by = get_task(body.dataset.name).group_by
        few_shot = body.sampling.few_shot if body.sampling.few_shot is not None else served.few_shot
        check_few_shot(records, few_shot, self.cfg.prompt.exemplars_path)
        if served.tokenizer is not None:
            fitting, too_long = await self.off_loop(fit_context, records, served.tokenizer,
                                                    max_model_len=self.cfg.eval.engine.max_model_len,
                                                    max_tokens=max_tokens, prompt=self.cfg.prompt, few_shot=few_shot)
            check_fit(records, fitting, too_long, from_items=body.items is not None)
            records, quarantined = fitting, quarantined + too_long
        temperature = body.sampling.temperature if body.sampling.temperature is not None else self.cfg.eval.temperature
        params = {"n": 1, "temperature": temperature, "top_p": 1.0, "max_tokens": max_tokens, "seed": body.sampling.seed}
        return Plan(body.model, served.handle, records, group_by, quarantined if body.dataset is not None else None,
                    few_shot, params)

    async def _dataset(self, ref: DatasetRef) -> tuple[list[Record], list[Record]]:
        limits = self.cfg.serve
        source = await self.off_loop(dataset_source, ref, limits)
        try:
            loaded = await self.off_loop(load_records, source, timeout=limits.load_timeout_s)
        except Exception as err:  # noqa: BLE001 - each failure answers its own status
            raise load_failure(err, ref, limits) from None
        return dataset_records(loaded, ref, limits)

    async def completion(self, body: CompletionRequest) -> CompletionPlan:
        """/v1/completions: the prompts as given (no chat template)."""
        served = await self.catalog.resolve(body.model)
        # echo with logprobs: the prompt's tokens' log-probs too (lm-eval's loglikelihood requests).
        params = openai_params(body, body.max_tokens or OPENAI_DEFAULT_MAX_TOKENS, len(body.prompt), self.cfg.serve,
                               logprobs=body.logprobs, prompt_logprobs=body.logprobs if body.echo else None)
        check_chars(body.prompt, self.cfg.serve)
        plan = await self._counted(served, body.prompt, params, "prompt")
        if not body.echo:
            return plan
        echoed = body.prompt if served.tokenizer is None else await self.off_loop(as_text, served.tokenizer, body.prompt)
        return CompletionPlan(served, plan.prompts, params, plan.prompt_tokens, echoed)

    async def chat(self, body: ChatCompletionRequest) -> CompletionPlan:
        """/v1/chat/completions: the messages rendered with the model's own chat template."""
        served = await self.catalog.resolve(body.model)
        max_tokens = body.max_completion_tokens or body.max_tokens or self.cfg.eval.max_tokens
        params = openai_params(body, max_tokens, 1, self.cfg.serve,
                               logprobs=(body.top_logprobs or 0) if body.logprobs else None)
        check_chars([m.content for m in body.messages], self.cfg.serve)
        check_no_control_tokens([m.content for m in body.messages], served.tokenizer)
        # The same rendering as every other prompt of the project (`prompts.render_prompt`: the
        # model's chat template, or a plain transcript for a tokenizer without one).
        messages = [m.model_dump(exclude={"name"}) for m in body.messages]
        prompt = await self.off_loop(render_prompt, served.tokenizer, messages)
        return await self._counted(served, [prompt], params, "messages")

    async def _counted(self, served: Served, prompts: list[str | list[int]], params: dict[str, Any], field: str
                       ) -> CompletionPlan:
        if served.tokenizer is None:
            return CompletionPlan(served, prompts, params, [0] * len(prompts))
        check_token_ids(prompts, len(served.tokenizer))
        counts = await self.off_loop(count_tokens, served.tokenizer, prompts)
        check_prompt_lengths(counts, params["max_tokens"], self.cfg.eval.engine.max_model_len, field)
        return CompletionPlan(served, prompts, params, counts)
