"""The dependencies pyproject.toml declares say what works (issue 31.4): each floor is pinned in
constraints/floors.txt, whose environment runs the fast tier, and the versions that were tested
satisfy the declarations."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins(name: str) -> dict[str, Version]:
    lines = (REPO / "constraints" / name).read_text().splitlines()
    found = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {r.name.lower().replace("_", "-"): Version(next(iter(r.specifier)).version) for r in found}


def declared() -> list[Requirement]:
    extras = PROJECT["optional-dependencies"]
    return [Requirement(text) for text in [*PROJECT["dependencies"], *extras["lora"], *extras["wandb"]]]


def floor(requirement: Requirement) -> Version | None:
    return next((Version(s.version) for s in requirement.specifier if s.operator == ">="), None)


def test_every_floor_is_pinned_in_the_floors_file_and_nothing_else_is():
    floors = pins("floors.txt")
    named = {r.name.lower().replace("_", "-"): floor(r) for r in declared()}
    assert all(named.values()), f"declared without a floor: {[n for n, f in named.items() if f is None]}"
    assert floors == named


def test_the_tested_versions_satisfy_the_declarations():
    """constraints/cluster.txt (what the whole suite runs on) and the floors both install."""
    for name in ("floors.txt", "cluster.txt"):
        tested = pins(name)
        for requirement in declared():
            version = tested.get(requirement.name.lower().replace("_", "-"))
            if version is not None:
                assert requirement.specifier.contains(version, prereleases=True), (name, str(requirement))


def test_what_the_package_declares_is_what_it_uses():
    """tqdm was declared and never imported; the package now imports huggingface_hub itself."""
    names = {r.name.lower() for r in declared()}
    assert "tqdm" not in names and "huggingface_hub" in names
