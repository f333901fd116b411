#!/usr/bin/env bash
# Commit a long study's evaluation rows each time one of its runs finishes.
#
# Run directories stay on the machine that made them; a session may end on one machine and the
# study continue on another. What survives is what was committed. Reporting only at the end of a
# session lost 18 finished Table 1 runs (2026-12-01) when the session moved machines before it.
# With this beside the sweep, a change of machine loses only the runs in progress.
#
#   bash benchmarks/studies/commit_as_runs_finish.sh RUN_ROOT OUT_DIR [dtrl report args ...] &
#   e.g. bash benchmarks/studies/commit_as_runs_finish.sh runs/table1_cpu benchmarks/results/table1_cpu \
#          runs/pretrain/hopper-random/pretrain/seed{1,2,3} --x iterations env_steps wall_time_s --at-minutes 20 &
#
# Every INTERVAL seconds (default 120) it looks for finished runs (final.json) under RUN_ROOT; when
# the set changed, it runs `dtrl report RUN_ROOT ... --finished-only --out OUT_DIR` (niced, reading
# back OUT_DIR/evaluations.csv when it exists, so rows from other machines are kept) and commits
# OUT_DIR alone (`git commit -- OUT_DIR`: nothing else staged goes with it). Paths are relative to
# the repository root, as in the study specs. The report's messages go to OUT_DIR/../.<name>.log
# (untracked). Stop it with kill.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$1; OUT=$2; shift 2
INTERVAL=${INTERVAL:-120}
if [ -z "${DTRL:-}" ]; then
  DTRL=dtrl
  [ -x .venv/bin/dtrl ] && DTRL=.venv/bin/dtrl
fi
LOG="$(dirname "$OUT")/.$(basename "$OUT").log"
mkdir -p "$(dirname "$OUT")"  # a study's first run: its results folder (e.g. claims/) may not exist yet
previous=""
while true; do
  # runs moved aside by --force (RUN.bak-<time>) are not the study's
  finished=$(find "$ROOT" -name final.json -not -path "*.bak-*" 2>/dev/null | sort)
  if [ -n "$finished" ] && [ "$finished" != "$previous" ]; then
    count=$(echo "$finished" | wc -l)
    from=(); [ -f "$OUT/evaluations.csv" ] && from=(--from-csv "$OUT/evaluations.csv")
    if nice -n 10 "$DTRL" report "$ROOT" "$@" "${from[@]}" --finished-only --out "$OUT" >"$LOG" 2>&1 \
        && git add "$OUT" \
        && { git diff --cached --quiet -- "$OUT" \
             || git commit -q -m "$(basename "$OUT"): evaluation rows of $count finished runs" -- "$OUT"; }; then
      previous=$finished
      echo "$(date -u +%FT%TZ) $OUT up to date in git ($count finished runs under $ROOT)"
    else
      echo "$(date -u +%FT%TZ) report or commit failed (see $LOG); trying again in ${INTERVAL}s" >&2
    fi
  fi
  sleep "$INTERVAL"
done
