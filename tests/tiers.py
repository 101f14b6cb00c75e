"""Test tiers: every test is marked by what it starts, so `make test-fast` checks a change in
minutes and `make test` still runs everything.

Markers (registered in pyproject.toml), applied at collection, never by hand-kept lists:
- `ray`: uses a Ray cluster — the session `ray_cluster` fixture or any fixture depending on it
  (pytest's fixture closure), or the test, one of its fixtures, or a helper of its module calls
  `ray.init`, `ray_nodes.start_node` or imports `ray.cluster_utils`;
- `serve`: uses Ray Serve — the test or one of its fixtures imports `ray.serve`;
- `e2e`: starts processes — uses `subprocess` (entry points, `ray start`, a vLLM server) or
  `ray_nodes.start_node`;
- `vllm`: loads a vLLM engine in this process (`VLLMEngine`, or imports `vllm`): ~10 s a test.
The code looked at is the test function, every fixture in its closure, and the functions and
classes of the test folder they call, followed transitively (library code is not followed). A
module that starts processes some other way says so with `pytestmark = pytest.mark.e2e`.

`--fast` (what `make test-fast` passes) deselects `ray`, `serve`, `e2e`, `vllm` and `slow` tests and
arms a guard: `ray.init` (also Ray's implicit one), importing `vllm`, and launching
`ray`/`serve`/`vllm`, a Ray binary, a console script or a Python script or `-m` module as a
subprocess raise `FastTierViolation`. A test that starts one of them through library code the scan
cannot see fails loudly instead of silently slowing the tier; mark it (e.g.
`pytestmark = pytest.mark.ray`) and it moves to `make test`. (`python -c` stays allowed: the
math-verify pool's fork server, part of scoring, is one.)
"""

from __future__ import annotations

import dis
import functools
import importlib.abc
import importlib.machinery
import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
HEAVY = ("ray", "serve", "e2e", "vllm", "slow")  # what the fast tier leaves to `make test`


class FastTierViolation(RuntimeError):
    pass


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="the fast tier: deselect ray/serve/e2e/vllm/slow tests; starting Ray, vLLM or "
                          "an entry point in a test fails (tests/tiers.py)")


_DISARM = pytest.StashKey()


def pytest_configure(config):
    if config.getoption("--fast", default=False):
        # OpenMP threads that sleep instead of spinning while they wait (same threads, same
        # numbers): on a busy 2-core machine torch's spinning threads made one transformers
        # generate test take 234 s instead of 5 s. Read when torch loads, i.e. after this.
        if "torch" not in sys.modules:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        config.stash[_DISARM] = _arm_guard()


def pytest_unconfigure(config):
    disarm = config.stash.get(_DISARM, None)
    if disarm is not None:
        disarm()


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in sorted(_starts(item)):
            item.add_marker(name)
    if config.getoption("--fast", default=False):
        kept, dropped = [], []
        for item in items:
            (dropped if any(item.get_closest_marker(m) for m in HEAVY) else kept).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept


# --- what a test starts, from its code ---------------------------------------------------------

def _starts(item) -> set[str]:
    found: set[str] = set()
    if "ray_cluster" in getattr(item, "fixturenames", ()):
        found.add("ray")
    test = getattr(item, "obj", None)
    if test is not None:
        found |= _scan(test)
    info = getattr(item, "_fixtureinfo", None)  # the fixture closure's definitions
    for name in getattr(item, "fixturenames", ()):
        if name == "ray_cluster":
            continue  # the suite's one cluster: `ray`, not each test's own processes (`e2e`)
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
            if _ours(fixturedef.func):  # not pytest's own (tmp_path, monkeypatch, pytester, ...)
                found |= _scan(fixturedef.func)
    return found


_cache: dict[object, frozenset[str]] = {}


def _scan(obj, seen: set | None = None) -> frozenset[str]:
    """What a function (or a class's methods) of the test folder starts, helpers followed."""
    obj = inspect.unwrap(obj) if callable(obj) else obj
    if obj in _cache:
        return _cache[obj]
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return frozenset()
    seen.add(id(obj))
    found: set[str] = set()
    if isinstance(obj, type):
        for member in vars(obj).values():
            member = getattr(member, "__func__", member)
            if isinstance(member, types.FunctionType):
                found |= _scan(member, seen)
    elif isinstance(obj, types.FunctionType):
        found |= _scan_code(obj.__code__, obj.__globals__, seen)
    _cache[obj] = frozenset(found)
    return _cache[obj]


def _ours(value) -> bool:
    """Test code — a function or class of the test folder, a test module or a conftest — is
    followed; library code (the package, pytest's own fixtures, site-packages) is not."""
    if not isinstance(value, (types.FunctionType, type)):
        return False
    code = getattr(value, "__code__", None)
    filename = code.co_filename if code is not None else None
    if filename is None:
        try:
            filename = inspect.getfile(value)
        except (TypeError, OSError):
            return False
    return _test_file(filename)


@functools.cache
def _test_file(filename: str) -> bool:
    path = Path(filename).resolve()
    return path.is_relative_to(TESTS) or path.name.startswith("test_") or path.name == "conftest.py"


# What referring to these starts: a module (and anything in it), a module's attribute, or, with a
# leading dot, a class or function of that name wherever it lives.
STARTERS = {
    "subprocess": {"e2e"},
    "ray.init": {"ray"},
    "ray.cluster_utils": {"ray", "e2e"},
    "ray_nodes.start_node": {"ray", "e2e"},
    "ray.serve": {"serve"},
    "vllm": {"vllm"},
    ".VLLMEngine": {"vllm"},
}
_LOADS = ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE")
_STORES = ("STORE_FAST", "STORE_NAME", "STORE_GLOBAL", "STORE_DEREF")


def _marks_of(qualified: str) -> set[str]:
    found: set[str] = set()
    for name, marks in STARTERS.items():
        if qualified == name or qualified.startswith(name + ".") or (name[0] == "." and qualified.endswith(name)):
            found |= marks
    return found


def _qualified(value) -> str | None:
    if isinstance(value, types.ModuleType):
        return value.__name__
    if not isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return None
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    return f"{module}.{name}" if isinstance(module, str) and isinstance(name, str) else None


def _related(qualified: str) -> bool:
    """Whether a name is, contains or is inside one of STARTERS (`ray` for `ray.init`)."""
    return any(qualified == k or k.startswith(qualified + ".") or qualified.startswith(k + ".")
               or (k[0] == "." and (qualified.endswith(k) or qualified == k[1:])) for k in STARTERS)


def _worth_reading(code: types.CodeType, globals_: dict) -> bool:
    """A quick look at the names a function uses, before reading its bytecode (collection time)."""
    for name in code.co_names:
        if _related(name):
            return True
        value = globals_.get(name)
        if value is not None and (_ours(value) or ((q := _qualified(value)) is not None and _related(q))):
            return True
    return any(isinstance(c, types.CodeType) and _worth_reading(c, globals_) for c in code.co_consts)


def _scan_code(code: types.CodeType, globals_: dict, seen: set) -> set[str]:
    found: set[str] = set()
    if not _worth_reading(code, globals_):
        return found
    local_modules: dict[str, str] = {}  # names bound by `import x` inside this function
    instructions = list(dis.get_instructions(code))
    for i, ins in enumerate(instructions):
        after = instructions[i + 1] if i + 1 < len(instructions) else None
        if ins.opname == "IMPORT_NAME":
            module = ins.argval
            found |= _marks_of(module)
            if after is not None and after.opname in _STORES:  # `import x` / `import x.y as z`
                top = module.split(".")[0]
                local_modules[after.argval] = top if after.argval == top else module
            j = i + 1
            while j < len(instructions) and instructions[j].opname in ("IMPORT_FROM", *_STORES):
                if instructions[j].opname == "IMPORT_FROM":  # `from x import y`
                    found |= _marks_of(f"{module}.{instructions[j].argval}")
                    value = vars(sys.modules[module]).get(instructions[j].argval) if module in sys.modules else None
                    if _ours(value):
                        found |= _scan(value, seen)
                j += 1
            continue
        if ins.opname not in _LOADS:
            continue
        if ins.argval in local_modules:
            qualified = local_modules[ins.argval]
        elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            value = globals_.get(ins.argval)
            if _ours(value):
                found |= _scan(value, seen)
            qualified = _qualified(value)
        else:
            continue
        if qualified is None:
            continue
        found |= _marks_of(qualified)
        if after is not None and after.opname in ("LOAD_ATTR", "LOAD_METHOD"):  # `ray.init`
            found |= _marks_of(f"{qualified}.{after.argval}")
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions, lambdas, comprehensions
            found |= _scan_code(const, globals_, seen)
    return found


# --- the fast tier's guard ------------------------------------------------------------------------

_RAY_PROGRAMS = {"ray", "serve", "vllm", "raylet", "gcs_server"}


def _refuse(what: str):
    raise FastTierViolation(
        f"{what} in the fast tier (`make test-fast` / `pytest --fast`). This test starts Ray or a "
        "process: mark it (`pytestmark = pytest.mark.ray` / `serve` / `e2e`) or use the `ray_cluster` "
        "fixture, and `make test` runs it (tests/tiers.py).")


def _check_command(args, executable=None) -> None:
    argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
    if not argv:
        return
    program = os.fsdecode(executable or argv[0])
    if isinstance(args, (str, bytes)) and " " in program:  # shell=True or one command string
        program = program.split()[0]
    name = Path(program).name
    venv_bin = Path(sys.executable).parent
    if name in _RAY_PROGRAMS:
        _refuse(f"starting `{name}`")
    if name.startswith("python"):
        rest = [os.fsdecode(a) for a in argv[1:]]
        flags = [a for a in rest if a.startswith("-")]
        if "-c" in flags:
            return  # inline code (e.g. scoring's math-verify fork server), not an entry point
        if "-m" in rest or any(a.endswith(".py") for a in rest):
            _refuse(f"starting the Python entry point {' '.join(rest[:3])!r}")
        return
    if Path(program).parent.resolve() == venv_bin.resolve():
        _refuse(f"starting the console script `{name}`")


class _RefuseVLLM(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import vllm` finds vLLM (probes still see it is installed) but executing it refuses."""

    def find_spec(self, name, path=None, target=None):
        if name != "vllm" or "vllm" in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = self
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        _refuse("loading vLLM (`import vllm`)")


def _arm_guard():
    """Arms the guard; returns what disarms it (None when one is armed already, e.g. a pytest run
    inside a fast-tier run)."""
    import ray
    import ray._private.worker as worker

    if getattr(subprocess.Popen.__init__, "_fast_tier_guard", False):
        return None

    def refuse_init(*args, **kwargs):
        _refuse("ray.init()")

    def refuse_llm(*args, **kwargs):
        _refuse("loading a vLLM engine (`vllm.LLM`)")

    original_popen = subprocess.Popen.__init__

    def guarded_popen(self, args, *rest, **kwargs):
        _check_command(args, kwargs.get("executable"))
        original_popen(self, args, *rest, **kwargs)

    guarded_popen._fast_tier_guard = True
    patches = [(ray, "init", refuse_init),  # also what Ray's implicit init (ray.get, ray.data, ...) calls
               (worker, "init", refuse_init),
               (subprocess.Popen, "__init__", guarded_popen)]
    if "vllm" in sys.modules:  # imported already (a pytest run inside another): refuse its engine
        patches.append((sys.modules["vllm"], "LLM", refuse_llm))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    finder = _RefuseVLLM()
    sys.meta_path.insert(0, finder)

    def disarm():
        sys.meta_path.remove(finder)
        for owner, name, value in saved:
            setattr(owner, name, value)

    return disarm
