#!/usr/bin/env bash
# selfdistill vs PyTorch, same networks / batch / optimiser / threads, in alternation.
#
#   bench/compare.sh                      # 2 threads, batch 64,128, both nets, 3 rounds
#   THREADS=1 BATCH=64 ROUNDS=5 bench/compare.sh
#   BACKEND=cuda bench/compare.sh          # needs a `--features cuda` build (see gpu.sh)
#   NO_ALLOC_ENV=1 bench/compare.sh        # PyTorch with glibc's default allocator settings
#   PAIR=run bench/compare.sh              # whole runs per framework instead of per-case pairs
#   PYTHON=python3 bench/compare.sh        # a Python that already has torch (no venv, no download)
#   BIN=path/to/selfdistill NO_BUILD=1 ... # a binary built elsewhere
#   READ_EVERY=1 BACKEND=cuda bench/compare.sh # loss read back every step (default: the
#                                          # trainer's cadence, 1 on cpu, 8 on cuda), both sides
#
# Creates bench/.venv (python3 -m venv) with a pinned torch from PyPI on first use
# (the default Linux wheel, which also pulls NVIDIA's CUDA libraries: ~3 GB, once).
#
# Output: a ratio table (selfdistill / PyTorch, median over all repetitions of all
# rounds, plus the spread of the ratios within pairs; see compare.py) and the raw JSON
# under $OUT (default bench/out/<date>). Pool runs with `bench/compare.py DIR1 DIR2 ...`.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${TORCH_VERSION:-2.15.0}"
NUMPY_VERSION="${NUMPY_VERSION:-2.4.6}"
BACKEND="${BACKEND:-cpu}"
THREADS="${THREADS:-2}"
BATCH="${BATCH:-64,128}"
MODELS="${MODELS:-cnn,resnet20}"
CASES="${CASES:-train,train-kd,infer}"
ROUNDS="${ROUNDS:-3}"
STEPS="${STEPS:-5}"        # selfdistill timed steps per repetition
PT_STEPS="${PT_STEPS:-20}" # PyTorch is faster; more steps keep its timings above noise
MIN_TIME="${MIN_TIME:-0.5}" # ... and each repetition, both sides, runs at least this long (s)
REPS="${REPS:-1}"
WARMUP="${WARMUP:-1}"
OUT="${OUT:-bench/out/$(date -u +%Y%m%dT%H%M%SZ)}"
VENV="${VENV:-bench/.venv}"
BIN="${BIN:-target/release/selfdistill}"
# Training steps per read of loss and hits (a host/device sync): the same for both sides;
# the default is what selfdistill's trainer does (src/model/ops.rs READBACK_EVERY).
READ_EVERY="${READ_EVERY:-$([[ "$BACKEND" == cuda ]] && echo 8 || echo 1)}"

if [[ -n "${PYTHON:-}" ]]; then
  # An interpreter that already has torch (a GPU image, a machine with no package index):
  # used as it is; its torch version goes into the JSON and the table's header.
  "$PYTHON" -c "import torch" || { echo "PYTHON=$PYTHON cannot import torch" >&2; exit 1; }
elif [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "== creating $VENV with torch==$TORCH_VERSION" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --progress-bar off "torch==$TORCH_VERSION" "numpy==$NUMPY_VERSION"
fi
PYTHON="${PYTHON:-$VENV/bin/python}"

if [[ -z "${NO_BUILD:-}" ]]; then
  features=()
  [[ "$BACKEND" == cuda ]] && features=(--features cuda)
  cargo build --release "${features[@]}"
fi

mkdir -p "$OUT"
# The same allocator settings for both: selfdistill raises glibc's mmap and trim thresholds
# at start-up (src/alloc.rs, mallopt) so per-op buffers are reused instead of mmapped and
# page-faulted afresh on every step; glibc reads the same settings for PyTorch from these
# variables. Without them PyTorch's CNN inference alone ran 0.55-0.65x of its speed with
# them (only its later cases in a full run were warmed by glibc's dynamic threshold).
ALLOC_ENV=(MALLOC_MMAP_THRESHOLD_=$((512 << 20)) MALLOC_TRIM_THRESHOLD_=$((512 << 20)) MALLOC_ARENA_MAX=1)
[[ -n "${NO_ALLOC_ENV:-}" ]] && ALLOC_ENV=()
common=(--backend "$BACKEND" --threads "$THREADS" --warmup "$WARMUP" --reps "$REPS" --min-time "$MIN_TIME" --read-every "$READ_EVERY")
sd_run() { # id, then per-case arguments
  local id=$1; shift
  "$BIN" bench "${common[@]}" "$@" --steps "$STEPS" --json "$OUT/selfdistill-$id.json" >/dev/null
}
pt_run() {
  local id=$1; shift
  env "${ALLOC_ENV[@]}" "$PYTHON" bench/pytorch_bench.py "${common[@]}" "$@" --steps "$PT_STEPS" --json "$OUT/pytorch-$id.json" >/dev/null
}
# One pair per case and round: each case runs in both frameworks back to back, seconds
# apart, the order alternating, so the machine's drift (10-25% over minutes on a shared VM)
# falls on both sides of a pair instead of on one whole run. PAIR=run keeps whole runs
# (every case in one process per framework and round: fewer process starts).
PAIR="${PAIR:-case}"
for r in $(seq 1 "$ROUNDS"); do
  if [[ "$PAIR" == run ]]; then
    echo "== round $r/$ROUNDS: both frameworks, every case" >&2
    args=(--batch "$BATCH" --models "$MODELS" --cases "$CASES")
    if (( r % 2 )); then sd_run "$r" "${args[@]}"; pt_run "$r" "${args[@]}"
    else pt_run "$r" "${args[@]}"; sd_run "$r" "${args[@]}"; fi
    continue
  fi
  n=$r # which framework goes first: alternating case by case, and round by round
  for m in ${MODELS//,/ }; do
    for b in ${BATCH//,/ }; do
      for c in ${CASES//,/ }; do
        id="$r-$m-$b-$c"
        args=(--batch "$b" --models "$m" --cases "$c")
        echo "== round $r/$ROUNDS: $m batch $b $c" >&2
        if (( n % 2 )); then pt_run "$id" "${args[@]}"; sd_run "$id" "${args[@]}"
        else sd_run "$id" "${args[@]}"; pt_run "$id" "${args[@]}"; fi
        n=$((n + 1))
      done
    done
  done
done
python3 bench/compare.py "$OUT" | tee "$OUT/ratios.txt"
python3 bench/compare.py "$OUT" --markdown > "$OUT/ratios.md"
echo "raw JSON and ratios in $OUT" >&2
