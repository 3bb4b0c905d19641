#!/usr/bin/env bash
# Creates .venv with torch and segloop (editable) installed in it.
#   bash scripts/setup.sh          the package and what running it needs
#   bash scripts/setup.sh --dev    also the test tools, and Debian's chromium for the demo's browser tests
#   bash scripts/setup.sh --verl   instead, verl's own environment .venv-verl (verl pins its own transformers):
#                                  verl 0.9.1 with its core extra, segloop (editable) and pytest, for the verl
#                                  contract tests (.venv-verl/bin/python -m pytest tests/test_verl_adapter.py)
#
# What it installs, by default: torch==2.13.0 from pip's configured index, then segloop and its dependencies
# at the versions the tests passed with (constraints.txt; constraints-verl.txt for --verl). Choose where torch
# comes from with environment variables:
#   SEGLOOP_TORCH_INDEX=https://download.pytorch.org/whl/cpu     CPU-only wheels (small; no CUDA)
#   SEGLOOP_TORCH_INDEX=https://download.pytorch.org/whl/cu128   CUDA 12.8 wheels
#   SEGLOOP_TORCH="torch==2.13.0"                                the torch requirement itself
# SEGLOOP_SETUP_DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
venv=.venv
constraints=constraints.txt
packages=()
case "${1:-}" in
  "") ;;
  --dev) dev=1 ;;
  --verl) venv=.venv-verl; constraints=constraints-verl.txt; packages=("verl[verl-core]" pytest pytest-timeout) ;;
  *) echo "usage: bash scripts/setup.sh [--dev | --verl]" >&2; exit 2 ;;
esac
torch_req="${SEGLOOP_TORCH:-torch==2.13.0}"
torch_index="${SEGLOOP_TORCH_INDEX:-}"
dry="${SEGLOOP_SETUP_DRY_RUN:-0}"

run() {
  if [ "$dry" = 1 ]; then echo "would run: $*"; else "$@"; fi
}

say() { echo "segloop setup: $*"; }

extras=""
[ "$dev" = 1 ] && extras="[dev]"
[ "$venv" = .venv-verl ] && extras="[verl]"
say "creating $venv ($(python3 --version 2>&1))"
source_name="the index pip is configured with"
[ -n "$torch_index" ] && source_name="$torch_index"
say "installing ${torch_req} from ${source_name} (set SEGLOOP_TORCH_INDEX to choose, e.g. https://download.pytorch.org/whl/cpu)"
if [ ${#packages[@]} -gt 0 ]; then
  say "then segloop${extras} (editable), ${packages[*]} and their dependencies, pinned by $constraints"
else
  say "then segloop${extras} (editable) and its dependencies, pinned by $constraints"
fi
run python3 -m venv "$venv"
run env PIP_CONSTRAINT="$constraints" "$venv/bin/python" -m pip install -q -U pip wheel setuptools
if [ -n "$torch_index" ]; then
  run "$venv/bin/python" -m pip install -q "$torch_req" --index-url "$torch_index"
else
  run "$venv/bin/python" -m pip install -q "$torch_req"
fi
run env PIP_CONSTRAINT="$constraints" "$venv/bin/python" -m pip install -q -e ".${extras}" "${packages[@]}"

if [ "$dev" = 1 ]; then
  if command -v chromium >/dev/null 2>&1; then
    say "chromium found at $(command -v chromium): the browser tests will use it"
  elif ! command -v apt-get >/dev/null 2>&1; then
    say "skipping Chromium (no apt-get here): the demo's browser tests will be skipped; install Debian's chromium at /usr/bin/chromium to run them"
  elif [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium for the browser tests (apt-get)"
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    say "installing Debian's chromium for the browser tests (sudo apt-get)"
    run sudo apt-get update -qq
    run sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    say "skipping Chromium (not root, and no password-less sudo): the demo's browser tests will be skipped; run 'sudo apt-get install chromium' to run them"
  fi
fi
if [ "$venv" = .venv-verl ]; then
  say "done. Run the verl contract tests with: .venv-verl/bin/python -m pytest tests/test_verl_adapter.py"
else
  say "done. Run segloop as .venv/bin/segloop, or 'source .venv/bin/activate' first and then segloop"
fi
