"""The repository's own rules, checked by the test suite (so CI enforces them): the package's layers, lint, and
an install that creates exactly one top-level package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_layers_contract_holds() -> None:
    """import-linter's layers contract (pyproject.toml): cli > demos | rl > policies | evaluation > agent > data >
    tools (``a | b``: neither imports the other)."""
    done = subprocess.run([BIN / "lint-imports", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_package_has_no_import_circle() -> None:
    """No module reaches back to one that imports it, not even through a lazy import inside a function (the
    policy registry is the only module that imports the policy implementations)."""
    import grimp

    graph = grimp.build_graph("segloop")
    circles = sorted({tuple(sorted((importer, imported))) for importer in graph.modules
                      for imported in graph.find_modules_directly_imported_by(importer)
                      if graph.chain_exists(importer=imported, imported=importer)})
    assert len(graph.modules) > 80 and circles == []


def test_what_reads_episodes_does_not_import_the_engine() -> None:
    """Records, statistics, the report and the rewards read trajectories without LangGraph."""
    code = ("import sys, segloop.agent.records, segloop.evaluation.stats, segloop.evaluation.report, "
            "segloop.rl.rewards; print(sorted({m.split('.')[0] for m in sys.modules} & {'langgraph', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _requirement_closure(root: str, extras: set[str]) -> dict[str, str]:
    """Every installed distribution ``root[extras]`` needs, directly or through another, name -> version."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        if (canonicalize_name(name), frozenset(wanted)) in seen:
            continue
        seen.add((canonicalize_name(name), frozenset(wanted)))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional dependency this platform does not install
        key = canonicalize_name(dist.metadata["Name"])
        found[key] = dist.version
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in wanted | {""}):
                todo.append((requirement.name, set(requirement.extras)))
    return found


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="constraints.txt pins the set tested on Python 3.11")
def test_constraints_pin_everything_the_dev_install_needs() -> None:
    """The README's claim: the install is pinned by constraints.txt, the whole set the tests passed with."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            pins[canonicalize_name(name)] = version
    needed = _requirement_closure("segloop", {"dev"})
    needed.pop("segloop")
    unpinned = sorted(set(needed) - set(pins))
    assert not unpinned, f"installed but not in constraints.txt: {unpinned}"
    differing = {name: (version, pins[name]) for name, version in needed.items()
                 if version.split("+")[0] != pins[name]}
    assert not differing, f"installed version differs from constraints.txt: {differing}"


def test_ruff_is_clean() -> None:
    done = subprocess.run([BIN / "ruff", "check", "src", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("segloop-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"segloop"}
    # What the offline agent and the demo need at run time ships inside it.
    assert "segloop/policies/compact/checkpoint/model.safetensors" in names
    assert any(n.startswith("segloop/demos/samples/") and n.endswith(".png") for n in names)
