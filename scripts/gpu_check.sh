#!/usr/bin/env bash
# The checks for the next lent GPU, in at most 8 minutes on one GPU (docs/precision.md):
#   1. env        env.json: torch, CUDA, the GPU, the TF32 switches (stops here without CUDA, unless --dry-run)
#   2. perf       `datafree perf` at CIFAR scale (resnet34 -> resnet18) for every method, and the segmentation
#                 cell: NYUv2 scale (DeepLabV3 resnet50 -> mobilenetv2, 128 px) for the methods that serve it:
#                 perf.json, perf.md
#   3. tests      the test suite on CUDA (device=auto runs there): tests.log         } side by side: neither
#   4. precision  fp32 against bf16 synthesis of deepinv, cmi and fast10, short,     } is a timing
#                 CIFAR-shaped (wrn40_2 -> wrn16_1): precision.json, precision_curves.csv
#   5. report     gpu_check.md: the steps, the tests' summary, the perf table, the comparison side by side
# Each step has its own time limit (its status says "timed out" when it ran out); perf and precision write as
# they go, so a step that ran out keeps what it did. Output: at most 8 files in OUT (the device tool brings back 8).
#
# usage: scripts/gpu_check.sh [--dry-run] [--out DIR]      (default DIR: results/gpu of the checkout)
#   --dry-run (or GPU_CHECK_DRY_RUN=1): the same plan on the CPU at tiny sizes, in well under a minute
#   (tests/test_gpu_check.py runs it in `make test`)
# environment: PYTHON (default .venv/bin/python, else python3); GPU_CHECK_TEACHER, a teacher checkpoint for the
#   comparison (default: untrained, BN statistics calibrated); GPU_CHECK_PERF_METHODS (default: perf's list);
#   GPU_CHECK_WHEELS, a folder of wheels installed first when kornia is missing (default .whl)
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DRY="${GPU_CHECK_DRY_RUN:-0}"
OUT_DIR="$ROOT/results/gpu"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR="${2:?--out needs a folder}"; shift ;;
    --out=*) OUT_DIR="${1#--out=}" ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$DRY" in ""|0|false|no) DRY="" ;; *) DRY=1 ;; esac
mkdir -p "$OUT_DIR" && OUT="$(cd "$OUT_DIR" && pwd)" || { echo "gpu_check: cannot write to $OUT_DIR" >&2; exit 2; }
cd "$ROOT"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# kornia is the one requirement the GPU image lacks: install carried wheels (README: "On a GPU machine")
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.whl}"
if ! "$PY" -c "import kornia" 2>/dev/null; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    SITE="${TMPDIR:-/tmp}/gpu_check_site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
      && export PYTHONPATH="$PYTHONPATH:$SITE"
  fi
  "$PY" -c "import kornia" 2>/dev/null || { echo "gpu_check: kornia is missing and no wheels in $WHEELS" >&2; exit 2; }
fi

for f in env.json steps.log tests.log perf.json perf.md precision.json precision_curves.csv gpu_check.md; do
  rm -f "$OUT/$f"
done

if [ -n "$DRY" ]; then
  # limits are generous on a shared CPU; the whole dry run takes seconds
  T_ENV=60; T_PERF=120; T_TESTS=120; T_PREC=120; T_REPORT=60
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  DEVICE=cpu; FLAG=--dry-run
  PERF_ARGS=(--scales mnist,mnist_seg --methods "${GPU_CHECK_PERF_METHODS:-deepinv}" --repeats 1 --warmup 0 --max-iters 2)
  # the precision tests only: the whole suite, which holds this script's own test, is the GPU plan
  TEST_ARGS=(-q -p no:randomly tests/test_runtime.py -k "precision or amp")
else
  # 30 + 260 + max(150, 150) + 30 = 470 s at most: inside the 8 minutes, with time for the wheels' install
  T_ENV=30; T_PERF=260; T_TESTS=150; T_PREC=150; T_REPORT=30
  DEVICE=cuda; FLAG=
  # nyuv2: the segmentation cell (a classification-only method is skipped there, in one line)
  PERF_ARGS=(--scales cifar,nyuv2 --repeats 3 --warmup 2 --max-iters 5)
  if [ -z "${GPU_CHECK_PERF_METHODS:-}" ]; then
    # every method of `datafree perf`; HiDFD only where CIFAR-10 is on disk (it collects real images)
    GPU_CHECK_PERF_METHODS=$("$PY" - <<'PYEOF'
import os
from datafree.cli import build_parser
from datafree.data.datasets import data_roots
methods = build_parser().parse_args(["perf"]).methods.split(",")
if not any(os.path.isdir(os.path.join(r, "cifar-10-batches-py")) for r in data_roots()):
    methods = [m for m in methods if m != "hidfd"]
print(",".join(methods))
PYEOF
)
  fi
  PERF_ARGS+=(--methods "$GPU_CHECK_PERF_METHODS")
  TEST_ARGS=(-q -p no:randomly tests --ignore=tests/test_gpu_check.py)
  if "$PY" -c "import xdist" 2>/dev/null; then TEST_ARGS+=(-n 6); fi
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then TEST_ARGS+=(--timeout 90); fi
fi

# step NAME LIMIT LOG CMD...: run CMD under the limit, its output appended to LOG, and its status line in steps.log
step() {
  local name="$1" limit="$2" log="$3" start rc
  shift 3
  start=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "[gpu_check] step $name rc=$rc seconds=$(( $(date +%s) - start )) limit=$limit" | tee -a "$OUT/steps.log"
  return $rc
}

step env "$T_ENV" "$OUT/steps.log" "$PY" -m datafree.gpucheck env --out "$OUT" $FLAG
rc_env=$?
if [ $rc_env -ne 0 ]; then
  "$PY" -m datafree.gpucheck report --out "$OUT" >/dev/null 2>&1
  echo "gpu_check: the env step failed (rc $rc_env): see $OUT/steps.log" >&2
  exit 1
fi

step perf "$T_PERF" "$OUT/steps.log" "$PY" -m datafree.cli perf "${PERF_ARGS[@]}" --device "$DEVICE" --out "$OUT"
rc_perf=$?

step tests "$T_TESTS" "$OUT/tests.log" "$PY" -m pytest "${TEST_ARGS[@]}" &
pid_tests=$!
PREC_ARGS=(--out "$OUT" --device "$DEVICE")
[ -n "${GPU_CHECK_TEACHER:-}" ] && PREC_ARGS+=(--teacher "$GPU_CHECK_TEACHER")
step precision "$T_PREC" "$OUT/steps.log" "$PY" -m datafree.gpucheck precision "${PREC_ARGS[@]}" $FLAG
rc_prec=$?
wait $pid_tests
rc_tests=$?

step report "$T_REPORT" "$OUT/steps.log" "$PY" -m datafree.gpucheck report --out "$OUT"
rc_report=$?
echo "gpu_check: wrote $OUT/gpu_check.md"
[ $rc_perf -eq 0 ] && [ $rc_tests -eq 0 ] && [ $rc_prec -eq 0 ] && [ $rc_report -eq 0 ]
