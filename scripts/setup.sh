#!/usr/bin/env bash
# Create .venv and install scan with the given extras (default: dev), e.g. `scripts/setup.sh demo`.
#
# torch is installed first and pinned: on a CPU machine `torch==2.13.0` is the CPU build that pip
# finds on this workplace's disk; without the pin, a dependency asking for plain `torch` would pull
# a multi-GB CUDA build. On a GPU machine set TORCH_SPEC to the build you want (or TORCH_SPEC=skip
# with a venv that already has torch); the project accepts any torch from 2.4 on.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
if [ "${TORCH_SPEC:-torch==2.13.0}" != skip ]; then
  "$venv/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$venv/bin/python" -m pip install -q -e ".[$extras]"
"$venv/bin/python" -c "import torch, scan; print(f'scan ready: torch {torch.__version__}, venv {\"$venv\"}')"
