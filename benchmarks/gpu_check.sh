#!/usr/bin/env bash
# The prepared GPU check (issue 37), about 8 minutes on one GPU, in one call:
#   1. install (install.sh takes PyTorch's default CUDA build where nvidia-smi works) and show what torch sees;
#   2. the README's test suite;
#   3. the paper-size DT (--preset paper: 4 layers, 4 heads, 512 wide) pretrained for a few steps on a small
#      hopper-random dataset built here, then 5 GRPO-DT iterations of --preset paper on the GPU, with the
#      seconds per iteration split by stage (full rollouts, group rollouts, update, evaluation, the rest).
# Everything it prints also goes to $OUT (or /tmp/gpu_check) as gpu_check.log, with the runs' metrics.
# Knobs for a dry run elsewhere: DEVICE=cpu ITERATIONS=1 SKIP_TESTS=1 PRETRAIN_STEPS=20 bash benchmarks/gpu_check.sh
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

step "machine"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no GPU visible"
nproc

step "install"
bash install.sh > "$OUT/install.log" 2>&1 || { echo "install.sh failed (tail of $OUT/install.log):"; tail -5 "$OUT/install.log"; exit 1; }
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'available:', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
if [ "$DEVICE" = cuda ] && ! .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "torch sees no CUDA device: the GPU part cannot run (a CPU build of torch in .venv? remove .venv and rerun)"
  exit 1
fi

if [ -z "${SKIP_TESTS:-}" ]; then
  step "test suite (the README's command)"
  .venv/bin/python -m pytest -q -p no:randomly 2>&1 | tail -3
fi

step "data and the paper-size DT ($PRETRAIN_STEPS steps)"
.venv/bin/dtrl data build hopper-random --transitions 20000 --out "$WORK/hopper-random.hdf5" | tail -1
/usr/bin/time -f "pretrain: %e s wall" .venv/bin/dtrl pretrain --task hopper-random --dataset "$WORK/hopper-random.hdf5" \
  --preset paper --steps "$PRETRAIN_STEPS" --steps-per-iteration 50 --eval-episodes 2 --device "$DEVICE" \
  --out "$WORK/pretrain" | tail -2

step "GRPO-DT, --preset paper, $ITERATIONS iterations on $DEVICE"
/usr/bin/time -f "finetune: %e s wall" .venv/bin/dtrl finetune --algo grpo --task hopper-random --preset paper \
  --init "$WORK/pretrain" --iterations "$ITERATIONS" --eval-every "$ITERATIONS" --env-threads "$(nproc)" \
  --device "$DEVICE" --out "$WORK/grpo" | tail -2
cp "$WORK/grpo/metrics.jsonl" "$OUT/grpo_metrics.jsonl"
.venv/bin/python - "$WORK/grpo/metrics.jsonl" <<'PY'
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
