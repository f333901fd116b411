#!/usr/bin/env bash
# Set up ./.venv with dtrl and its test tools. Safe to run again (it only adds what is missing).
#   - NVIDIA GPU present (nvidia-smi works): PyTorch's default build from PyPI, which is CUDA.
#   - otherwise: torch==2.13.0; on the dtrl dev/CI machines that resolves to a CPU build on disk.
#     On another CPU-only machine, avoid the multi-GB CUDA download by pointing pip at PyTorch's CPU
#     wheel index: DTRL_TORCH_INDEX=<cpu wheel index url> bash install.sh
#   - DTRL_TORCH="torch==X.Y" overrides the torch requirement entirely.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${DTRL_TORCH:-}" ]; then
    "${PIP[@]}" "$DTRL_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" torch
  elif [ -n "${DTRL_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" torch --index-url "$DTRL_TORCH_INDEX"
  else
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
"${PIP[@]}" -e ".[dev,sweep,report,wandb,hf,video]"
echo "dtrl installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
