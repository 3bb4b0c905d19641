"""Item 11: ``scripts/setup.sh`` says what it installs, lets the user choose where torch comes from, and with
``--dev`` on a machine without apt-get (or root) skips the browser tests' Chromium in one line instead of
failing. The script runs for real against stand-in ``python3`` and ``.venv/bin/python`` that log their
arguments, on a PATH without apt-get or chromium; ``pyproject.toml`` uses the SPDX licence form."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUB = """#!/bin/sh
echo "$0 $*" >> "{log}"
if [ "$1" = "--version" ]; then echo "Python 3.x (stand-in)"; fi
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
exit 0
"""


def _sandbox(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stub = bin_dir / "python3"
    stub.write_text(STUB.format(log=log))
    stub.chmod(0o755)
    for tool in ("bash", "dirname", "id", "env", "mkdir", "cp", "sh"):  # nothing else: no apt-get, no chromium
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return repo, log, env


def test_setup_states_what_it_installs_and_takes_the_torch_index_from_the_environment(tmp_path: Path) -> None:
    repo, log, env = _sandbox(tmp_path)
    env["SEGLOOP_TORCH_INDEX"] = "https://download.pytorch.org/whl/cpu"
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "installing torch==2.13.0 from https://download.pytorch.org/whl/cpu" in done.stdout
    assert "segloop (editable) and its dependencies" in done.stdout
    calls = log.read_text()
    assert "-m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in calls
    assert "-m pip install -q -e ." in calls


def test_dev_setup_without_apt_skips_chromium_in_one_line(tmp_path: Path) -> None:
    repo, log, env = _sandbox(tmp_path)
    done = subprocess.run(["bash", "scripts/setup.sh", "--dev"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = [line for line in (done.stdout + done.stderr).splitlines() if "Chromium" in line]
    assert len(skipped) == 1 and skipped[0].startswith("segloop setup: skipping Chromium")
    assert "from the index pip is configured with" in done.stdout
    assert '-m pip install -q -e .[dev]' in log.read_text()


def test_the_licence_is_an_spdx_expression() -> None:
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; segloop supports 3.10)
    assert re.search(r'^license = "Apache-2.0"$', text, re.MULTILINE)  # not the deprecated {text = ...} table
    assert "License ::" not in text  # no licence classifier next to an SPDX expression
