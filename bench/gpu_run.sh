#!/usr/bin/env bash
# Run on the GPU machine, from the checkout's root, with gpu_carry/ beside it (bench/gpu_prepare.sh):
#
#   bash bench/gpu_run.sh                # device tool: carry ["gpu_carry"], timeout 600
#   BUDGET_S=240 bash bench/gpu_run.sh   # a shorter budget, whole seconds (default 420)
#   DEVICE=cpu SUITE_ARGS="--smoke" PYTHON=.venv/bin/python bash bench/gpu_run.sh   # dry run here
#
# Installs the carried wheels into /tmp/site (not into the image's Python), puts the checkout on
# PYTHONPATH (the project is not pip-installed), runs bench/gpu_suite.py --device cuda, and leaves
# in $OUT: log.txt (everything printed), summary.md (all tables) and gpu_suite.tar.gz (every
# section's .md and .json). The suite's budget leaves ~3 minutes of the 600 s for start-up,
# installs, compilation overrun and the copy back.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
RES=/tmp/gpu_suite
rm -rf "$RES"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
{
  echo "== $(date -u) $(uname -m) $(nproc) cores"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  if ls gpu_carry/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site gpu_carry/wheels/*.whl || echo "wheels did not install: catalog rows skip"
  else
    echo "no gpu_carry/wheels: the catalog's rows (mgr train, mgr serve) will be skipped"
  fi
} 2>&1 | tee "$LOG"
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
BUDGET=${BUDGET_S:-420}
# A compilation that overruns its estimate must not take the copy back with it: the suite is
# stopped 140 s past its budget (it rewrites summary.md after every section), well inside 600 s.
# shellcheck disable=SC2086  # SUITE_ARGS is a list of options
timeout -s INT -k 10 "$((BUDGET + 140))" \
  "$PY" bench/gpu_suite.py --device "${DEVICE:-cuda}" --out "$RES" --budget-s "$BUDGET" \
  ${SUITE_ARGS:-} 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
cp "$RES/summary.md" "$OUT/" 2>/dev/null || true
tar -czf "$OUT/gpu_suite.tar.gz" -C /tmp gpu_suite 2>/dev/null || true
echo "== suite exit $rc, $(date -u)" | tee -a "$LOG"
exit "$rc"
