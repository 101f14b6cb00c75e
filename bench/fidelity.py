"""The reproduction experiment (issue: show that distillation works): does AdvDistill make the
embedded student better, and better than SFT — with intervals, seeds and a fair protocol?

    python bench/fidelity.py                      # 3 seeds, the embedded default (~60 min here)
    python bench/fidelity.py --seeds 0 --quick    # a smoke run
    python bench/fidelity.py --saved              # recompute the tables from a finished run's saved verdicts

Protocol, on the embedded default (`configs/tiny.yaml`):
- Arms: student base; SFT (best response per group); AdvDistill with the K = 8 responses;
  AdvDistill with the first K' = 3 (the paper's ablation); the teacher for reference; and a
  diagnosis, not the method: AdvDistill with λ = 0 (no contrastive penalty), at its own rate.
  `--arms` runs a subset.
- Seeds: each seed draws its own teacher samples (`curate.sampling.seed`) and trains with its own
  `train.seed`; every arm of a seed trains on that seed's kept groups, for the same epochs, with
  the same optimizer and schedule.
- Learning rate: chosen per method (SFT, AdvDistill, λ = 0) on seed 0, by greedy accuracy on the
  `val` split (disjoint from test and OOD by construction), then used for every seed. The grid
  has half steps (×√10: 3.16e-4, 1e-3, 3.16e-3); where a method's best rate is at an edge, the
  grid is extended by one step beyond it (`choose_rate`; ties go to the lower rate). The
  selection's own noise is reported: val n, each rate's val accuracy with its cluster-bootstrap
  interval, and the paired difference between the chosen rate and the runner-up on val. The K' =
  3 arm is AdvDistill with fewer responses and takes AdvDistill's rate. Test and OOD are never
  looked at to choose anything.
- Measures: greedy accuracy on 1,000 test and 1,000 OOD items per seed, per seed and its spread,
  and paired differences over seeds, each with a 95% cluster-bootstrap interval
  (`advdistill.evaluation.stats`): the items' clusters (their arithmetic skeletons: 1,000 test
  items come from 753) are drawn once per replicate and kept for every seed, seeds resampled at a
  second level; an interval's n is the distinct items (the deterministic teacher and base are one
  evaluation, not one per seed); the behaviour
  metrics of the paper's Tables 6–7 (verbosity of correct / incorrect answers, seq-rep-4
  degeneracy, template adherence), the training cost of AdvDistill relative to SFT (seconds
  of optimizer steps and tokens, from each run's metrics.jsonl; paper Table 3: 4.5x), and how
  often `train.max_grad_norm` clipped a step (the pre-clip gradient norm in metrics.jsonl above
  it).

`--task` evaluates another registered task with `test` and `ood` splits (default: the config's
`eval.test.name`), e.g. a pre-registered variant (bench/preregistration.md).

Every stage runs through the command-line contract of SPEC §9b (`ray_jobs/curate.py`,
`train.py`, `evaluate.py`) on one local Ray cluster, so this measures the product, not a
re-implementation. Outputs go to `--out` (default runs/fidelity), and a rerun continues: each
stage is skipped when its output is complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, header

sys.path.insert(0, str(REPO))

from advdistill.evaluation.stats import bootstrap_accuracy, paired_difference, seed_spread  # noqa: E402

PYTHON = sys.executable
# Half steps of a decade (×√10), rounded to 3 significant digits; `choose_rate` extends it.
LR_GRID = (3.16e-4, 1e-3, 3.16e-3)
# What a learning rate is chosen for: name → (training method, extra overrides).
SELECTED = {
    "sft": ("sft", []),
    "advdistill": ("advdistill", []),
    "advdistill-lam0": ("advdistill", ["train.loss.lam=0"]),  # a diagnosis (RESULTS §11), not the method
}
ARMS = {  # arm → (training mode, extra overrides, whose learning rate it uses)
    "sft": ("sft", [], "sft"),
    "advdistill": ("advdistill", [], "advdistill"),
    "advdistill-k3": ("advdistill", ["train.responses_per_group=3"], "advdistill"),
    "advdistill-lam0": ("advdistill", ["train.loss.lam=0"], "advdistill-lam0"),
}
SPLITS = {"test": "test", "ood": "ood"}


class Runner:
    """Runs the entry points against one Ray cluster, skipping stages whose output exists."""

    def __init__(self, out: Path, config: str, overrides: list[str], log: Path, saved_only: bool = False,
                 task: str = "synthetic"):
        self.out, self.config, self.overrides, self.log, self.task = out, config, overrides, log, task
        self.saved_only = saved_only  # read finished stages only; a missing one is an error
        self.seconds: dict[str, float] = {}

    def _run(self, name: str, script: str, args: list[str], sets: list[str]) -> None:
        if self.saved_only:
            raise SystemExit(f"--saved: {name} has no saved output in {self.out}")
        cmd = [PYTHON, str(REPO / "ray_jobs" / script), "--config", self.config, *args]
        for s in [*self.overrides, *sets]:
            cmd += ["--set", s]
        start = time.perf_counter()
        with self.log.open("a") as handle:
            handle.write(f"\n$ {' '.join(cmd)}\n")
            handle.flush()
            result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"{name} failed (exit {result.returncode}); see {self.log}")
        self.seconds[name] = time.perf_counter() - start
        print(f"  {name}: {self.seconds[name]:.0f} s", flush=True)

    def curate(self, seed: int) -> Path:
        folder = self.out / f"seed-{seed}" / "curate"
        summary = folder / "summary.json"
        done = summary.is_file() and (lambda s: s["prompts_written"] == s["prompts_read"])(json.loads(summary.read_text()))
        if not done:
            self._run(f"curate seed {seed}", "curate.py", ["--output", str(folder)], [f"curate.sampling.seed={seed}"])
        return folder

    def train(self, name: str, groups: Path, mode: str, lr: float, seed: int, sets: list[str]) -> Path:
        folder = self.out / f"seed-{seed}" / f"train-{name}-lr{lr:g}"
        if not (folder / "result.json").is_file():
            self._run(f"train {name} lr {lr:g} seed {seed}", "train.py",
                      ["--groups", str(groups), "--output", str(folder), "--method", mode],
                      [f"train.method_lr.{mode}={lr}", f"train.seed={seed}", *sets])
        return folder

    def evaluate(self, name: str, model: Path | str, splits: list[str], limit: int, few_shot: int = 0) -> dict[str, Path]:
        """`model` on every split of `splits` in one evaluate.py call (one engine start):
        {split: its output folder}."""
        folder = self.out / "eval" / name
        outputs = {split: folder / split for split in splits} if len(splits) > 1 else {splits[0]: folder}
        if not all((out / "metrics.json").is_file() for out in outputs.values()):
            self._run(f"eval {name} {'+'.join(splits)}", "evaluate.py",
                      ["--model", str(model), "--dataset", self.task, *[a for s in splits for a in ("--split", s)],
                       "--limit", str(limit), "--output", str(folder), "--few-shot", str(few_shot)], [])
        return outputs  # one split writes into the folder itself (evaluate.py's contract)


def _predictions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line.strip()]


def verdicts(folder: Path) -> dict[str, bool]:
    return {r["id"]: bool(r["correct"]) for r in _predictions(folder)}


def item_clusters(folder: Path, split: str, task: str = "synthetic") -> dict[str, str]:
    """{item id: cluster} of an evaluation, from its predictions; predictions saved before they
    named clusters get them from the generator's records (deterministic: the same ids are the same
    problems)."""
    rows = _predictions(folder)
    if all("cluster" in r for r in rows):
        return {r["id"]: r["cluster"] for r in rows}
    from advdistill.config import DatasetConfig
    from advdistill.data.loaders import load_records
    from advdistill.tasks import record_cluster

    records = load_records(DatasetConfig(name=task, split=split, limit=len(rows))).records
    cluster_of = {r["id"]: record_cluster(r) for r in records}
    return {r["id"]: cluster_of[r["id"]] for r in rows}


def training_cost(folder: Path, max_grad_norm: float | None = None) -> dict[str, float]:
    """Seconds of optimizer steps and tokens read, from a run's metrics.jsonl (start-up excluded);
    with `max_grad_norm`, the share of steps it clipped (their logged pre-clip gradient norm above
    it) and the median pre-clip norm."""
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    cost = {"step_seconds": sum(s["step_seconds"] for s in steps), "tokens": steps[-1]["tokens"], "steps": len(steps)}
    if max_grad_norm is not None:
        norms = [s["grad_norm"] for s in steps]
        cost.update(max_grad_norm=max_grad_norm, clipped_share=sum(g > max_grad_norm for g in norms) / len(norms),
                    grad_norm_median=statistics.median(norms))
    return cost


def half_step(lr: float, direction: int) -> float:
    """The grid's next rate up (+1) or down (−1): ×√10 from the half decade nearest `lr` (10^(k/2)),
    to 3 significant digits (3.16e-4 → 1e-4, 1e-3 → 3.16e-3)."""
    return float(f"{10 ** ((round(2 * math.log10(lr)) + direction) / 2):.3g}")


def choose_rate(runner: "Runner", name: str, mode: str, sets: list[str], groups: Path, seed: int,
                grid: list[float], val_items: int) -> dict:
    """The learning rate of `name` with the best greedy val accuracy on `seed`'s groups (ties: the
    lower rate); where it is the lowest or highest rate tried, the grid is extended by one half step
    beyond it and the choice made again. Returned with what the choice rests on: every rate's val
    accuracy and cluster-bootstrap interval, val n and clusters, and chosen − runner-up on val
    (paired, cluster bootstrap)."""
    tried: dict[float, dict[str, bool]] = {}
    clusters: dict[str, str] = {}

    def evaluate(lr: float) -> None:
        run = runner.train(name, groups, mode, lr, seed, sets)
        out = runner.evaluate(f"{name}-lr{lr:g}-seed{seed}-val", run / "final", ["val"], val_items)["val"]
        tried[lr] = verdicts(out)
        clusters.update(item_clusters(out, "val", runner.task))

    def best() -> float:
        return max(sorted(tried), key=lambda lr: sum(tried[lr].values()))  # first maximum: the lower rate

    for lr in sorted(grid):
        evaluate(lr)
    extended = None
    if len(tried) > 1 and best() in (min(tried), max(tried)):
        extended = half_step(best(), -1 if best() == min(tried) else 1)
        evaluate(extended)
    chosen = best()
    ids = sorted(clusters)
    groups_of = [clusters[i] for i in ids]
    rows = {lr: [tried[lr][i] for i in ids] for lr in tried}
    rates = {f"{lr:g}": bootstrap_accuracy(rows[lr], groups_of).as_dict() for lr in sorted(tried)}
    out = {"chosen": chosen, "rates": rates, "extended": extended, "at_edge": chosen in (min(tried), max(tried)),
           "val_n": len(ids), "val_clusters": len(set(groups_of)), "runner_up": None, "chosen_minus_runner_up": None}
    others = [lr for lr in sorted(tried) if lr != chosen]
    if others:
        runner_up = max(others, key=lambda lr: sum(tried[lr].values()))
        out["runner_up"] = runner_up
        out["chosen_minus_runner_up"] = paired_difference(rows[chosen], rows[runner_up], groups_of).as_dict()
    return out


def start_cluster(num_cpus: int) -> str:
    """A local Ray head owned by this process, for every stage (each entry point joins it through
    RAY_ADDRESS); `ray.shutdown()` ends it and nothing else on the machine (`ray stop` would end
    every Ray process here). Token auth off, as for the test suite's cluster: loopback only."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from advdistill.local_ray import RAY_ENV_DEFAULTS

    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray.get_runtime_context().gcs_address


def stop_cluster() -> None:
    import ray

    ray.shutdown()


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs" / "fidelity"))
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr-grid", type=float, nargs="+", default=list(LR_GRID),
                        help="rates tried first; one half step (×√10) is added beyond a best rate at an edge")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="the trained arms to run")
    parser.add_argument("--task", help="the registered task to evaluate (default: the config's eval.test.name)")
    parser.add_argument("--items", type=int, default=1000, help="test and OOD items per evaluation")
    parser.add_argument("--val-items", type=int, default=500)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every stage (e.g. an ablation: train.loss.lam=0)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 128 prompts, 100 items, one epoch")
    parser.add_argument("--saved", action="store_true",
                        help="no Ray, nothing run: recompute fidelity.json/md from the stages saved in --out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(args.overrides)
    if args.quick:
        overrides += ["curate.dataset.limit=128", "train.epochs=1"]
        args.items, args.val_items = 100, 100
    header("Reproduction: base vs SFT vs AdvDistill (8 and 3 responses), seeds and intervals",
           "python bench/fidelity.py " + " ".join(sys.argv[1:]))
    from advdistill.config import load_config

    cfg = load_config(args.config, overrides)
    args.task = args.task or cfg.eval.test.name
    started = time.perf_counter()
    runner = Runner(out, args.config, overrides, out / "fidelity.log", saved_only=args.saved, task=args.task)
    if args.saved:
        results = run_protocol(runner, cfg, args)
        previous = out / "fidelity.json"
        results["wall_seconds"] = json.loads(previous.read_text())["wall_seconds"] if previous.is_file() else 0.0
    else:
        os.environ["RAY_ADDRESS"] = start_cluster(num_cpus=max(os.cpu_count() or 1, 4))
        try:
            results = run_protocol(runner, cfg, args)
        finally:
            stop_cluster()
        results["wall_seconds"] = time.perf_counter() - started
    results["task"] = args.task
    (out / "fidelity.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    (out / "fidelity.md").write_text(report)
    print(report)


def run_protocol(runner: Runner, cfg, args) -> dict:
    seeds = args.seeds
    # 1. Reference arms: deterministic greedy decoding, the same for every seed.
    splits = list(SPLITS)
    outputs = {name: runner.evaluate(name, model, splits, args.items)
               for name, model in (("teacher", cfg.teacher), ("base", cfg.student))}
    reference = {name: {split: verdicts(out[split]) for split in SPLITS} for name, out in outputs.items()}
    clusters = {split: item_clusters(outputs["teacher"][split], split, args.task) for split in SPLITS}
    reference_metrics = {name: {split: json.loads((out[split] / "metrics.json").read_text()) for split in SPLITS}
                         for name, out in outputs.items()}
    # 2. The learning rate of each method the arms use, on seed 0's groups, by val accuracy.
    groups0 = runner.curate(seeds[0])
    arm_list = {arm: ARMS[arm] for arm in args.arms}
    chosen, selection = {}, {}
    for name in dict.fromkeys(lr_of for _, _, lr_of in arm_list.values()):
        mode, sets = SELECTED[name]
        selection[name] = choose_rate(runner, name, mode, sets, groups0, seeds[0], args.lr_grid, args.val_items)
        chosen[name] = selection[name]["chosen"]
        print(f"  {name}: learning rate {chosen[name]:g} chosen on val "
              f"({ {lr: round(r['value'], 3) for lr, r in selection[name]['rates'].items()} })", flush=True)
    # 3. Every arm on every seed, at its chosen rate.
    arms: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        groups = runner.curate(seed)
        for arm, (mode, sets, lr_of) in arm_list.items():
            lr = chosen[lr_of]
            run = runner.train(arm, groups, mode, lr, seed, sets)
            out = runner.evaluate(f"{arm}-seed{seed}", run / "final", splits, args.items)
            arms.setdefault(arm, {})[seed] = {
                "lr": lr, "cost": training_cost(run, cfg.train.max_grad_norm),
                "result": json.loads((run / "result.json").read_text()),
                "splits": {split: verdicts(out[split]) for split in SPLITS},
                "metrics": {split: json.loads((out[split] / "metrics.json").read_text()) for split in SPLITS},
            }
    return summarize(reference, reference_metrics, arms, seeds, chosen, selection, runner.seconds, clusters)


def seeds_by_items(per_seed: list[dict[str, bool]], ids: list[str]) -> list[list[bool]]:
    """One row of verdicts per seed, the items in `ids` order."""
    if any(sorted(v) != ids for v in per_seed):
        raise ValueError("every arm and seed must be evaluated on the same items")
    return [[v[i] for i in ids] for v in per_seed]


def summarize(reference, reference_metrics, arms, seeds, chosen, selection, seconds, clusters) -> dict:
    """`reference[arm][split]`: a deterministic arm's verdicts (one evaluation stands for every
    seed); `arms[arm][seed]["splits"][split]`: a trained arm's; `clusters[split]`: {item: cluster};
    `selection[name]`: `choose_rate`'s record of each learning rate choice."""
    out = {"seeds": seeds, "learning_rates": chosen, "selection": selection, "stage_seconds": seconds,
           "interval": "cluster bootstrap, 95%: clusters drawn once per replicate for every seed, seeds resampled",
           "accuracy": {}, "differences": {}, "behaviour": {}, "cost": {}}
    ids = {split: sorted(clusters[split]) for split in SPLITS}
    cluster_list = {split: [clusters[split][i] for i in ids[split]] for split in SPLITS}
    # seeds × items per arm and split; a deterministic arm is one row, not one copy per seed
    matrix = {name: {split: seeds_by_items([per_split[split]], ids[split]) for split in SPLITS}
              for name, per_split in reference.items()}
    for arm, per_seed in arms.items():
        matrix[arm] = {split: seeds_by_items([per_seed[s]["splits"][split] for s in seeds], ids[split])
                       for split in SPLITS}
    for arm, per_split in matrix.items():
        for split, rows in per_split.items():
            interval = bootstrap_accuracy(rows, cluster_list[split])
            out["accuracy"].setdefault(arm, {})[split] = {
                **seed_spread(rows), "deterministic": arm in reference, "interval": [interval.low, interval.high],
                "n": interval.n, "clusters": interval.clusters, "seeds": interval.seeds}
    pairs = [("advdistill", "sft"), ("advdistill-k3", "sft"), ("advdistill", "advdistill-k3"),
             ("advdistill", "base"), ("advdistill-k3", "base"), ("sft", "base"),
             ("advdistill-lam0", "advdistill"), ("advdistill-lam0", "sft")]
    for a, b in (pair for pair in pairs if all(arm in matrix for arm in pair)):
        for split in SPLITS:
            d = paired_difference(matrix[a][split], matrix[b][split], cluster_list[split])
            out["differences"].setdefault(f"{a} − {b}", {})[split] = d.as_dict()
    for arm in list(reference_metrics) + list(arms):
        for split in SPLITS:
            ms = ([reference_metrics[arm][split]] if arm in reference_metrics
                  else [arms[arm][s]["metrics"][split] for s in seeds])
            def mean(key, sub=None):
                vals = [(m[key] if sub is None else m[key][sub]) for m in ms]
                vals = [v for v in vals if v is not None]
                return statistics.mean(vals) if vals else None
            out["behaviour"].setdefault(arm, {})[split] = {
                "tokens_correct": mean("mean_tokens_correct"), "tokens_incorrect": mean("mean_tokens_incorrect"),
                "verbosity_ratio": mean("verbosity_ratio"), "degeneracy_correct": mean("degeneracy_correct"),
                "degeneracy_incorrect": mean("degeneracy_incorrect"), "template_all": mean("template", "all"),
                "template_think": mean("template", "think"), "template_answer": mean("template", "answer"),
                "template_boxed": mean("template", "boxed")}
    for arm, per_seed in arms.items():
        costs = [per_seed[s]["cost"] for s in seeds]
        if all("clipped_share" in c for c in costs):
            out.setdefault("clipping", {})[arm] = {
                "max_grad_norm": costs[0]["max_grad_norm"], "by_seed": [c["clipped_share"] for c in costs],
                "clipped_share": statistics.mean(c["clipped_share"] for c in costs),
                "grad_norm_median": statistics.median(c["grad_norm_median"] for c in costs)}
        out["cost"][arm] = {"step_seconds": statistics.median(c["step_seconds"] for c in costs),
                            "tokens": statistics.median(c["tokens"] for c in costs),
                            "train_groups": statistics.median(per_seed[s]["result"]["train_groups"] for s in seeds),
                            "dropped_groups": statistics.median(per_seed[s]["result"].get("dropped_groups", 0) for s in seeds)}
    sft = out["cost"]["sft"]
    for arm, c in out["cost"].items():
        c["seconds_vs_sft"] = c["step_seconds"] / sft["step_seconds"]
        c["tokens_vs_sft"] = c["tokens"] / sft["tokens"]
    return out


LABELS = {"teacher": "Teacher", "base": "Student base", "sft": "SFT", "advdistill": "AdvDistill (K = 8)",
          "advdistill-k3": "AdvDistill (K' = 3)", "advdistill-lam0": "AdvDistill, λ = 0 (diagnosis)"}


def render_selection(selection: dict) -> list[str]:
    """The learning-rate choice and its own noise: every rate's val accuracy with its interval,
    and the chosen rate against the runner-up, paired on the same val items."""
    if not selection:
        return []
    lines = ["| Rate chosen for | val accuracy per rate [95% cluster bootstrap] | chosen | chosen − runner-up on val |",
             "|---|---|---|---|"]
    for name, s in selection.items():
        rates = "; ".join(f"{lr}: {pct(r['value'])} [{pct(r['low'])}, {pct(r['high'])}]" for lr, r in s["rates"].items())
        d = s["chosen_minus_runner_up"]
        versus = "–" if d is None else (f"{100 * d['value']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] "
                                        f"(vs {s['runner_up']:g})")
        note = (f" (grid extended to {s['extended']:g})" if s["extended"] else "") + (" — at the edge" if s["at_edge"] else "")
        lines.append(f"| {LABELS.get(name, name)} | {rates} | {s['chosen']:g}{note} | {versus} |")
    first = next(iter(selection.values()), None)
    if first:
        lines += ["", f"Val: {first['val_n']:,} items in {first['val_clusters']:,} clusters, seed 0's groups; "
                  "ties go to the lower rate.", ""]
    return lines


def render(r: dict) -> str:
    seeds = r["seeds"]
    first = next(iter(r["accuracy"].values()))
    design = ", ".join(f"{split}: {first[split]['n']:,} items in {first[split]['clusters']:,} skeletons" for split in SPLITS)
    lines = [f"Seeds {seeds}; learning rates chosen on `val`: "
             f"{ {k: float(f'{v:.3g}') for k, v in r['learning_rates'].items()} }; wall {r['wall_seconds'] / 60:.0f} min.", "",
             *render_selection(r.get("selection") or {}),
             f"Intervals: 95% cluster bootstrap ({design}; each replicate draws skeletons once for every seed, "
             "then resamples the seeds; n is the distinct items). Per seed and the seeds' standard deviation "
             "beside it; the teacher and the base decode greedily: one evaluation.", "",
             "| Arm | test: mean (per seed; sd) [95% interval] | OOD: mean (per seed; sd) [95% interval] |",
             "|---|---|---|"]
    for arm, per in r["accuracy"].items():
        cells = []
        for split in SPLITS:
            a = per[split]
            spread = ("one evaluation" if a["deterministic"]
                      else f"{', '.join(pct(x) for x in a['by_seed'])}; sd {pct(a['seed_sd'])}")
            cells.append(f"{pct(a['mean'])} ({spread}) [{pct(a['interval'][0])}, {pct(a['interval'][1])}]")
        lines.append(f"| {LABELS.get(arm, arm)} | {cells[0]} | {cells[1]} |")
    lines += ["", "Paired differences in points over seeds (cluster bootstrap as above, 95%; seed s of one arm "
              "paired with seed s of the other, a deterministic arm with every seed):", "",
              "| Difference | test | OOD |", "|---|---|---|"]
    for name, per in r["differences"].items():
        a, b = name.split(" − ")
        cells = [f"{100 * per[s]['value']:+.1f} [{100 * per[s]['low']:+.1f}, {100 * per[s]['high']:+.1f}]" for s in SPLITS]
        lines.append(f"| {LABELS.get(a, a)} − {LABELS.get(b, b)} | {cells[0]} | {cells[1]} |")
    lines += ["", "Behaviour (paper Tables 6–7; means over seeds): tokens of correct / incorrect answers, verbosity "
              "ratio, seq-rep-4 ×100 correct / incorrect, template adherence (all three parts):", "",
              "| Arm | split | tokens ✓ | tokens ✗ | ratio | rep-4 ✓ | rep-4 ✗ | template |", "|---|---|---|---|---|---|---|---|"]

    def f(x, d=1):
        return "–" if x is None else f"{x:.{d}f}"
    for arm, per in r["behaviour"].items():
        for split, b in per.items():
            lines.append(f"| {LABELS.get(arm, arm)} | {split} | {f(b['tokens_correct'])} | {f(b['tokens_incorrect'])} | "
                         f"{f(b['verbosity_ratio'], 2)} | {f(b['degeneracy_correct'], 2)} | {f(b['degeneracy_incorrect'], 2)} | "
                         f"{f(100 * b['template_all'] if b['template_all'] is not None else None)}% |")
    lines += ["", "Training cost (medians over seeds; seconds of optimizer steps, start-up excluded):", "",
              "| Arm | training groups | dropped (K') | steps s | × SFT | tokens | × SFT |", "|---|---|---|---|---|---|---|"]
    for arm, c in r["cost"].items():
        lines.append(f"| {LABELS.get(arm, arm)} | {c['train_groups']:.0f} | {c['dropped_groups']:.0f} | "
                     f"{c['step_seconds']:.0f} | {c['seconds_vs_sft']:.2f}× | {c['tokens']:,.0f} | {c['tokens_vs_sft']:.2f}× |")
    if r.get("clipping"):
        lines += ["", "Gradient clipping: the share of optimizer steps whose pre-clip gradient norm exceeded "
                  "`train.max_grad_norm` (so it was scaled down), per seed, and the median pre-clip norm:", "",
                  "| Arm | max_grad_norm | steps clipped (mean; per seed) | median pre-clip norm |", "|---|---|---|---|"]
        for arm, c in r["clipping"].items():
            lines.append(f"| {LABELS.get(arm, arm)} | {c['max_grad_norm']:g} | {100 * c['clipped_share']:.0f}% "
                         f"({', '.join(f'{100 * x:.0f}%' for x in c['by_seed'])}) | {c['grad_norm_median']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
