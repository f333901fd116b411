#!/usr/bin/env bash
# Wheels for a GPU machine that reaches no package registry but has its own Python with a CUDA PyTorch
# (the GPU machines lent to this project: Python 3.12, torch with CUDA, numpy, h5py, matplotlib, rich,
# safetensors, tensorboard, pandas, scipy, transformers, huggingface_hub, typer, pytest and pytest-xdist
# installed; nothing can be fetched there). Run it here, where pip reaches the registries; it puts into
# .whl/ (git-ignored) the wheels of what that image lacks, at the versions this checkout's .venv runs,
# for that Python and x86-64 Linux. benchmarks/gpu_check.sh installs them there when .whl/ travels with
# the working tree (the device tool's `carry`, next to the tree's 64 MiB limit).
# Not carried, for size: gymnasium-robotics (26 MB of assets: AntMaze, Adroit), ray (sweeps), PyOpenGL
# (rendering); the check names the tests that fail for them.
#   bash benchmarks/gpu_wheels.sh            # Python 3.12 (the GPU image's)
#   PY_VERSION=3.11 bash benchmarks/gpu_wheels.sh /tmp/whl   # another Python, another folder
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY_VERSION=${PY_VERSION:-3.12}
PACKAGES=(gymnasium farama-notifications mujoco mujoco-core glfw tyro docstring-parser typeguard
          pytorch-optimizer stable-baselines3 minari rliable arch)
[ -x .venv/bin/python ] || { echo "gpu_wheels.sh: no .venv here (bash install.sh first): its versions are the ones fetched" >&2; exit 2; }
mkdir -p "$DEST"
PY_TAG=cp${PY_VERSION/./}
for name in "${PACKAGES[@]}"; do
  version=$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "gpu_wheels.sh: $name is not installed in .venv" >&2; exit 2; }
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp --abi "$PY_TAG" --abi abi3 --abi none \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$DEST" "$name==$version" 2>/dev/null; then
    # published as a source distribution only (rliable 1.2): build a pure-Python wheel of it
    python3 -m pip wheel -q --no-deps -w "$DEST" "$name==$version"
  fi
done
ls "$DEST"/*.whl | sed 's|.*/||'
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s}')
echo "wheels $((wheels / 1048576)) MiB + tracked files $((tracked / 1048576)) MiB (the device tool carries at most 64 MiB)"
