"""The layering is real: the core imports nothing above it, and no module imports itself back.

The core (config, the registries, prompts, scoring, the loss, the tables, the pure metrics) is
what every stage builds on. Importing any core module must not pull in generation, training,
serving, curation, the evaluator, the run orchestration, or Ray; and the package's imports — at
module level and inside functions alike — form no cycle. A function-level import of a project
module is allowed only where it defers a heavy optional dependency, and is then listed below with
its reason.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "advdistill"

CORE = [
    "advdistill.config",
    "advdistill.tasks",
    "advdistill.registry",
    "advdistill.methods",
    "advdistill.template",
    "advdistill.prompts",
    "advdistill.schema",
    "advdistill.loss",
    "advdistill.scoring",
    *sorted(f"advdistill.scoring.{p.stem}" for p in (PACKAGE / "scoring").glob("*.py") if p.stem != "__init__"),
    "advdistill.evaluation.metrics",
    "advdistill.evaluation.stats",
]

# Module prefixes a core module must not import (directly or through another).
ABOVE_THE_CORE = (
    "advdistill.generation",
    "advdistill.train",
    "advdistill.serve",
    "advdistill.curate",
    "advdistill.evaluation.evaluator",
    "advdistill.run",
    "advdistill.local_ray",
    "ray",
)

# (importing module or package, imported module) -> why the import waits until a function runs.
FUNCTION_LEVEL_IMPORTS = {
    ("advdistill.methods", "advdistill.loss"):
        "torch: the config validates method names without loading it",
    ("advdistill.train.trainer", "advdistill.train.ingest"):
        "Ray Data and Ray Train at module level: the run folders and the report read TrainOutput without Ray",
    ("advdistill.train.checkpointing", "advdistill.train.lora"):
        "peft, only with train.lora.r (lora.py itself imports peft only when called: a candidate for module level)",
    ("advdistill.run.pipeline", "advdistill.serve.app"):
        "Ray Serve and FastAPI: loaded only when a run is served",
    ("advdistill.serve", "advdistill.scoring.math_verify_pool"):
        "math-verify workers: started by the API replica (serve/app.py), not where the app is built",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project_module(name: str) -> str | None:
    """The project module an imported name lives in (`a.b.c` -> `a.b` when c is not a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def project_imports() -> list[tuple[str, str, bool]]:
    """(importer, imported project module, inside a function?) for every import statement of the
    package, `if TYPE_CHECKING:` blocks left out (they never run)."""
    found: list[tuple[str, str, bool]] = []
    for importer, path in MODULES.items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if _is_type_checking(child):
                    continue
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                names: list[str] = []
                if isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    source = _resolve(child, importer, is_package)
                    # `from pkg import sub` imports the submodule; `from mod import name`, the module.
                    names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in child.names]
                for name in names:
                    target = _project_module(name) if name.startswith("advdistill") else None
                    if target and target != importer:
                        found.append((importer, target, in_function))
                visit(child, inner)

        visit(ast.parse(path.read_text(), str(path)), False)
    return found


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_package_has_no_import_cycle():
    edges = {(a, b) for a, b, _ in project_imports()}
    assert edges, "no imports found: the scan is broken"
    assert cycles(edges) == []


def test_the_cycle_check_finds_a_cycle():
    # The check itself: two modules importing each other, here through a function-level import.
    first, second = sorted(MODULES)[:2]
    assert cycles({(first, second), (second, first)}) == [sorted([first, second])]


def _listed(importer: str, imported: str) -> bool:
    return any(imported == target and (importer == owner or importer.startswith(owner + "."))
               for owner, target in FUNCTION_LEVEL_IMPORTS)


def test_function_level_imports_of_project_modules_are_listed_with_a_reason():
    unlisted = sorted({(a, b) for a, b, in_function in project_imports() if in_function and not _listed(a, b)})
    assert unlisted == [], ("import these at module level, or list them in FUNCTION_LEVEL_IMPORTS with the heavy "
                            "dependency they defer")
    assert all(reason.strip() for reason in FUNCTION_LEVEL_IMPORTS.values())


# One bare interpreter forks a child per module: each child imports that one module into an
# interpreter that has imported nothing of the project (nor anything a test imported before) and
# reports what is loaded then.
_LOADED_BY_EACH = """
import importlib, json, os, sys
for module in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            loaded = sorted(sys.modules)
        except Exception as err:
            loaded = {"error": f"{type(err).__name__}: {err}"}
        os.write(write, json.dumps({module: loaded}).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        print(pipe.read(), flush=True)
    os.wait()
"""


@pytest.fixture(scope="module")
def loaded_by():
    done = subprocess.run([sys.executable, "-c", _LOADED_BY_EACH, *CORE], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return {k: v for line in done.stdout.splitlines() if line.strip() for k, v in json.loads(line).items()}


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_nothing_above_the_core(module, loaded_by):
    loaded = loaded_by[module]
    assert isinstance(loaded, list), loaded  # else the import failed: its error
    assert module in loaded
    above = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in ABOVE_THE_CORE)]
    assert above == []
