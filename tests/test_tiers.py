"""The test tiers (tests/tiers.py): a test is marked by what its fixtures and code start, and in the
fast tier (`pytest --fast`) a test that starts Ray, vLLM or an entry point anyway fails loudly.
Inner pytest runs here are in-process and start nothing: the guarded calls are refused before
anything runs."""

from __future__ import annotations

import sys
import textwrap

import pytest
import ray  # noqa: F401  (what the guard patches)
import tiers

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest
from tiers import pytest_addoption, pytest_collection_modifyitems, pytest_configure, pytest_unconfigure

@pytest.fixture(scope="session")
def ray_cluster():
    raise AssertionError("never set up: these runs only collect or are deselected")

@pytest.fixture
def uses_cluster(ray_cluster):
    return ray_cluster

@pytest.fixture
def app():
    from ray import serve
    return serve
"""

MARKED = """
import subprocess, sys
import pytest
from advdistill.generation.engines import VLLMEngine

def run_script():
    return subprocess.run([sys.executable, "script.py"])

def test_pure():
    assert 1 + 1 == 2

def test_cluster_through_a_fixture(uses_cluster):
    pass

def test_serve_through_a_fixture(app):
    pass

def test_process_through_a_helper():
    run_script()

def test_own_ray_init():
    import ray
    ray.init(num_cpus=1)

def test_vllm_engine():
    VLLMEngine

def test_vllm_engine_imported_inside():
    from advdistill.generation.engines import VLLMEngine as Engine
    Engine

@pytest.mark.slow
def test_marked_slow():
    pass
"""


QUIET = ["-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning"]


def markers(pytester) -> dict[str, set[str]]:
    items, _ = pytester.inline_genitems("--collect-only", *QUIET)
    return {item.name: {m for m in ("ray", "serve", "e2e", "vllm", "slow") if item.get_closest_marker(m)}
            for item in items}


def test_tests_are_marked_from_their_fixtures_and_code(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_marked=MARKED)
    assert markers(pytester) == {
        "test_pure": set(),
        "test_cluster_through_a_fixture": {"ray"},
        "test_serve_through_a_fixture": {"serve"},
        "test_process_through_a_helper": {"e2e"},
        "test_own_ray_init": {"ray"},
        "test_vllm_engine": {"vllm"},
        "test_vllm_engine_imported_inside": {"vllm"},
        "test_marked_slow": {"slow"},
    }


def test_the_fast_tier_keeps_only_unmarked_tests(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_marked=MARKED)
    result = pytester.runpytest_inprocess("--fast", *QUIET)
    result.assert_outcomes(passed=1, deselected=7)


# Starting Ray, vLLM or an entry point through code the scan does not follow (a module outside
# tests/, as library code is): unmarked, so in the fast tier, where the guard refuses it.
HIDDEN = """
import subprocess, sys

def ray_init():
    import ray
    ray.init(num_cpus=1)

def ray_start():
    subprocess.run(["ray", "start", "--head"])

def entry_point():
    subprocess.run([sys.executable, "ray_jobs/generate.py", "--help"])

def module_entry_point():
    subprocess.run([sys.executable, "-m", "advdistill.cli"])

def vllm_engine():
    from vllm import LLM
    LLM(model="models/tiny-teacher")

def inline_python():
    return subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout
"""

GUARDED = """
import pytest
import hidden
from tiers import FastTierViolation

@pytest.mark.parametrize("start", ["ray_init", "ray_start", "entry_point", "module_entry_point", "vllm_engine"])
def test_refused(start):
    with pytest.raises(FastTierViolation, match="fast tier"):
        getattr(hidden, start)()

def test_inline_python_is_allowed():
    assert hidden.inline_python() == "42\\n"
"""


def test_the_fast_tier_refuses_what_the_marks_missed(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(hidden=HIDDEN, test_guarded=GUARDED)
    pytester.syspathinsert()
    result = pytester.runpytest_inprocess("--fast", *QUIET)
    result.assert_outcomes(passed=6)


def test_the_guard_is_gone_after_a_fast_run(pytester):
    """An in-process `--fast` run restores what it patched (the suite's own later tests use them)."""
    patched = [(sys.modules["ray"], "init"), (tiers.subprocess.Popen, "__init__")]
    before = [getattr(owner, name) for owner, name in patched]
    meta_path = list(sys.meta_path)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_one=textwrap.dedent("""
        def test_one():
            pass
    """))
    pytester.runpytest_inprocess("--fast", *QUIET).assert_outcomes(passed=1)
    assert [getattr(owner, name) for owner, name in patched] == before
    assert sys.meta_path == meta_path
