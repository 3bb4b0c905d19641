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
    """import-linter's layers contract (pyproject.toml): cli > demos > rl > policies > agent > tools."""
    done = subprocess.run([BIN / "lint-imports", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 kept, 0 broken" in done.stdout


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
