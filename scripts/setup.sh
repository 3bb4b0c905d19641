#!/usr/bin/env bash
# Creates .venv with the CPU build of torch and segloop installed in it.
#   bash scripts/setup.sh          the package and what running it needs
#   bash scripts/setup.sh --dev    also the test tools and Debian's chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
python3 -m venv .venv
.venv/bin/python -m pip install -q -U pip wheel setuptools
# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
if [ "$dev" = 1 ]; then
  PIP_CONSTRAINT=constraints.txt .venv/bin/python -m pip install -q -e ".[dev]"
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
  fi
else
  PIP_CONSTRAINT=constraints.txt .venv/bin/python -m pip install -q -e .
fi
