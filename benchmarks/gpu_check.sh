#!/usr/bin/env bash
# The prepared GPU check (issue 37), about 8 minutes on one GPU, in one call:
#   1. install and show what torch sees: with a .whl/ folder (benchmarks/gpu_wheels.sh, made where pip reaches
#      the registries, carried to a machine that reaches none but has a Python with CUDA PyTorch: the GPU
#      machines lent to this project), that Python plus those wheels and src/ on PYTHONPATH; otherwise
#      install.sh (PyTorch's default CUDA build where nvidia-smi works) into .venv;
#   2. the README's test suite (with .whl/: those tests that need a package not carried are counted apart);
#   3. the paper-size DT (--preset paper: 4 layers, 4 heads, 512 wide) pretrained for a few steps on a small
#      hopper-random dataset built here, then 5 GRPO-DT iterations of --preset paper on the GPU, with the
#      seconds per iteration split by stage (full rollouts, group rollouts, update, evaluation, the rest).
# Everything it prints also goes to $OUT (or /tmp/gpu_check) as gpu_check.log, with the runs' metrics.
# Knobs for a dry run elsewhere: DEVICE=cpu ITERATIONS=1 SKIP_TESTS=1 PRETRAIN_STEPS=20 bash benchmarks/gpu_check.sh
# (PYTEST_ARGS="tests/test_envs.py" runs part of the suite; PYTHON=... the Python that .whl/ goes with)
# On the device tool: bash benchmarks/gpu_wheels.sh here once, then run `OUT=$OUT bash benchmarks/gpu_check.sh`
# with carry [".whl"] and timeout_s 600.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
ITERATIONS=${ITERATIONS:-5}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-200}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
WORK=$(mktemp -d)
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }
timed() {  # timed LABEL COMMAND...: its output's last 2 lines, then its wall time (no /usr/bin/time needed)
  local label=$1 start=$SECONDS; shift
  "$@" | tail -2
  echo "$label: $((SECONDS - start)) s wall"
}

step "machine"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no GPU visible"
nproc

step "install"
if compgen -G ".whl/*.whl" > /dev/null; then
  # no registry reachable: the machine's own Python (its CUDA PyTorch) with the carried wheels and src/
  PY=${PYTHON:-python3}
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl > "$OUT/install.log" 2>&1 \
    || { echo "installing .whl/ failed (tail of $OUT/install.log):"; tail -5 "$OUT/install.log"; exit 1; }
  export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  echo "$PY ($("$PY" --version 2>&1)) with $(ls .whl/*.whl | wc -l) carried wheels and src/"
else
  bash install.sh > "$OUT/install.log" 2>&1 || { echo "install.sh failed (tail of $OUT/install.log):"; tail -5 "$OUT/install.log"; exit 1; }
  PY=.venv/bin/python
fi
DTRL=("$PY" -m dtrl)
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'available:', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "torch sees no CUDA device: the GPU part cannot run (a CPU build of torch in .venv? remove .venv and rerun)"
  exit 1
fi

if [ -z "${SKIP_TESTS:-}" ]; then
  step "test suite (the README's command)"
  PARALLEL=()
  "$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")
  # shellcheck disable=SC2086  # PYTEST_ARGS: extra arguments, e.g. a few test files for a dry run
  COLUMNS=1000 "$PY" -m pytest -q -p no:randomly -rf "${PARALLEL[@]}" ${PYTEST_ARGS:-} > "$OUT/tests.log" 2>&1
  tail -1 "$OUT/tests.log"
  # the packages .whl/ leaves out (benchmarks/gpu_wheels.sh) fail their tests by name; anything else is news
  missing="gymnasium-robotics|No module named .(gymnasium_robotics|ray|OpenGL)|needs Ray Tune"
  grep '^FAILED' "$OUT/tests.log" | grep -E -c "$missing" | sed 's/$/ failed for a package not carried (gymnasium-robotics, ray, PyOpenGL)/'
  grep '^FAILED' "$OUT/tests.log" | grep -E -v "$missing" | sed 's/^/other: /' | head -20
fi

step "data and the paper-size DT ($PRETRAIN_STEPS steps)"
"${DTRL[@]}" data build hopper-random --transitions 20000 --out "$WORK/hopper-random.hdf5" | tail -1
timed pretrain "${DTRL[@]}" pretrain --task hopper-random --dataset "$WORK/hopper-random.hdf5" \
  --preset paper --steps "$PRETRAIN_STEPS" --steps-per-iteration 50 --eval-episodes 2 --device "$DEVICE" \
  --out "$WORK/pretrain"

step "GRPO-DT, --preset paper, $ITERATIONS iterations on $DEVICE"
timed finetune "${DTRL[@]}" finetune --algo grpo --task hopper-random --preset paper \
  --init "$WORK/pretrain" --iterations "$ITERATIONS" --eval-every "$ITERATIONS" --env-threads "$(nproc)" \
  --device "$DEVICE" --out "$WORK/grpo"
cp "$WORK/grpo/metrics.jsonl" "$OUT/grpo_metrics.jsonl"
"$PY" - "$WORK/grpo/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'iteration':>9} {'env steps':>9} {'full':>6} {'groups':>7} {'update':>7} {'eval':>6} {'other':>6} {'total':>6}")
for before, row in zip(rows, rows[1:]):
    total = row["wall_time_s"] - before["wall_time_s"]
    parts = [row.get(f"time/{stage}_s", 0.0) for stage in ("full_rollouts", "group_rollouts", "update", "eval")]
    print(f"{row['iteration']:>9} {row['env_steps'] - before['env_steps']:>9} "
          + " ".join(f"{p:>6.2f}" for p in parts) + f" {total - sum(parts):>6.2f} {total:>6.2f}")
PY
rm -rf "$WORK"
