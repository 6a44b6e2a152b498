#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: build with CUDA, benchmark selfdistill
# (burn-cuda) against PyTorch CUDA, then train the cifar10-resnet20 preset for a few
# epochs headless. Target: under 10 minutes on a 16-core machine.
#
#   bench/gpu.sh [--data-dir DIR]      # DIR holds cifar10/ (or it is downloaded there)
#
# Env: EPOCHS (3), GENERATIONS (preset's 3), ROUNDS (3), BATCH (64,128), RUN_TIMEOUT (300 s),
#      SKIP_BUILD=1, SKIP_BENCH=1, SKIP_READS=1, SKIP_RUN=1, SKIP_REPRO=1, REPRO_TIMEOUT (90 s),
#      READS_ROUNDS (1), READS_STEPS (50), READS_MODELS (cnn,resnet20),
#      CUDARC_CUDA_VERSION (default: from nvidia-smi),
#      BIN (a `--features cuda` binary built on another machine; implies SKIP_BUILD),
#      PYTHON (an interpreter that already has torch with CUDA: no venv, nothing downloaded),
#      SELFDISTILL_CACHE_DIR (CubeCL's autotune picks; default $OUT/cache, kept with the results).
#
# On a GPU machine with no cargo and no package index (a rented box, a lab image):
#   here:   bench/pack_cuda.sh     # target/cuda/selfdistill.gz (~18 MB) and its COMMIT
#   there:  BIN=target/cuda/selfdistill.gz PYTHON=python3 bench/gpu.sh --data-dir DIR_WITH_cifar10
# (a BIN ending in .gz is unpacked first). Each selfdistill process compiles its CUDA kernels
# at start-up; PAIR=run ROUNDS=2 keeps that to four processes where time is short.
# Without CIFAR-10 (none under --data-dir and no download possible) the preset run is the
# offline `quick` preset on CUDA instead, said so in run.log, and the script exits 3.
# Output under bench/out/gpu-<date>/ (or $OUT): env.txt, build.log, bench/ (ratios.txt/.md +
# JSON), reads/result.txt (steps/s with loss read back every step vs every 8), run.log,
# run.time, cache/ (autotune picks), repro/result.txt (same seed, same numbers?); also packed
# as gpu.tgz beside it.
#
# Status: written and checked on a machine WITHOUT a GPU (the CUDA binary builds, and without
# a driver it stops with the driver's load error); not yet run on one.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    *) echo "usage: $0 [--data-dir DIR]" >&2; exit 2 ;;
  esac
done
DATA_DIR="${DATA_DIR:-bench/out/data}"
if [[ -n "${BIN:-}" ]]; then
  SKIP_BUILD=1
else
  BIN=target/release/selfdistill
fi
if [[ -z "${SKIP_BUILD:-}" ]] && ! command -v cargo >/dev/null; then
  echo "cargo not found: build with --features cuda on another machine and give the binary as BIN=path" >&2
  exit 1
fi
# bench/pack_cuda.sh leaves COMMIT beside the binary: which code is measured.
BUILT_FROM=""
[[ -f "$(dirname "$BIN")/COMMIT" ]] && BUILT_FROM=$(cat "$(dirname "$BIN")/COMMIT")
if [[ "$BIN" == *.gz ]]; then
  unpacked="${TMPDIR:-/tmp}/selfdistill-cuda-$$"
  trap 'rm -f "$unpacked"' EXIT
  gzip -dc "$BIN" > "$unpacked" && chmod +x "$unpacked"
  BIN="$unpacked"
fi
export BIN
OUT="${OUT:-bench/out/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT" "$DATA_DIR"
OUT=$(cd "$OUT" && pwd)
# CubeCL's autotune picks for every step below, kept with the results.
export SELFDISTILL_CACHE_DIR="${SELFDISTILL_CACHE_DIR:-$OUT/cache}"
start=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - start ))s] $*" >&2; }

command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no NVIDIA driver here" >&2; exit 1; }
nvidia-smi | tee "$OUT/env.txt"
# cudarc cannot ask nvcc (none needed); give it the driver's highest CUDA version:
# "CUDA Version: 13.0" -> 13000, "12.8" -> 12080.
if [[ -z "${CUDARC_CUDA_VERSION:-}" ]]; then
  v=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
  [[ -n "$v" ]] || { echo "cannot read the CUDA version from nvidia-smi; set CUDARC_CUDA_VERSION" >&2; exit 1; }
  read -r major minor <<<"$v"
  export CUDARC_CUDA_VERSION=$(( major * 1000 + minor * 10 ))
fi
{ echo "CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION"; nproc; grep -m1 'model name' /proc/cpuinfo; } | tee -a "$OUT/env.txt"
if [[ -n "$BUILT_FROM" ]]; then
  echo "binary built from: $BUILT_FROM" | tee -a "$OUT/env.txt"
  head=$(git rev-parse HEAD 2>/dev/null || true)
  if [[ -n "$head" && "${BUILT_FROM%% *}" != "$head" ]]; then
    echo "warning: the binary was built from ${BUILT_FROM%% *}, this checkout is $head" | tee -a "$OUT/env.txt" >&2
  fi
fi

if [[ -z "${SKIP_BUILD:-}" ]]; then
  stamp "cargo build --release --features cuda"
  cargo build --release --features cuda 2>&1 | tail -n 3 | tee "$OUT/build.log"
fi

if [[ -z "${SKIP_BENCH:-}" ]]; then
stamp "benchmark: selfdistill (cuda) vs PyTorch (cuda), alternating"
BACKEND=cuda NO_BUILD=1 THREADS="$(nproc)" BATCH="${BATCH:-64,128}" ROUNDS="${ROUNDS:-3}" \
  STEPS="${STEPS:-50}" PT_STEPS="${PT_STEPS:-50}" WARMUP="${WARMUP:-5}" OUT="$OUT/bench" \
  bench/compare.sh
fi

if [[ -z "${SKIP_READS:-}" ]]; then
  # What a host/device sync per step costs: selfdistill's training steps with loss and hits
  # read back every step against every 8 (the trainer's GPU default), in alternation.
  stamp "read-back cadence: selfdistill bench, every step vs every 8 steps"
  reads="$OUT/reads"
  mkdir -p "$reads"
  for r in $(seq 1 "${READS_ROUNDS:-1}"); do
    for n in 1 8; do
      "$BIN" bench --backend cuda --threads "$(nproc)" --batch "${BATCH:-64,128}" \
        --models "${READS_MODELS:-cnn,resnet20}" --cases train,train-kd \
        --steps "${READS_STEPS:-50}" --warmup 5 --reps 3 --read-every "$n" \
        --json "$reads/every$n-$r.json" >/dev/null 2>>"$reads/bench.err" \
        || echo "bench --read-every $n failed (see $reads/bench.err)" >&2
    done
  done
  python3 bench/compare.py --cadence "$reads" | tee "$reads/result.txt" || true
fi

status=0
if [[ -z "${SKIP_RUN:-}" ]]; then
  preset=""
  if ls "$DATA_DIR"/cifar10/* >/dev/null 2>&1; then
    preset=cifar10
  else
    stamp "downloading CIFAR-10 into $DATA_DIR"
    if "$BIN" data download cifar10 --data-dir "$DATA_DIR"; then
      preset=cifar10
    fi
  fi
  if [[ "$preset" == cifar10 ]]; then
    preset="$OUT/cifar10-resnet20-short.toml"
    sed -e "s/^epochs = .*/epochs = ${EPOCHS:-3}/" \
        -e 's/^name = .*/name = "cifar10-resnet20-short"/' \
        ${GENERATIONS:+-e "s/^generations = .*/generations = $GENERATIONS/"} \
        presets/cifar10-resnet20.toml > "$preset"
  else
    # Still an end-to-end CUDA training run, on the embedded offline data.
    echo "no CIFAR-10 under $DATA_DIR and none could be downloaded: running the offline quick preset on CUDA instead" | tee "$OUT/run.log" >&2
    preset=quick
    status=3
  fi
  stamp "training $preset headless (timeout ${RUN_TIMEOUT:-300}s)"
  timer=()
  [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -v)
  set +e
  "${timer[@]}" timeout -s INT "${RUN_TIMEOUT:-300}" "$BIN" run \
    --preset "$preset" --headless --backend cuda --data-dir "$DATA_DIR" \
    --runs-dir "$OUT/runs" >> "$OUT/run.log" 2> "$OUT/run.time"
  rc=$?
  set -e
  tail -n 15 "$OUT/run.log"
  # /usr/bin/time's lines are tab-indented; the rest is selfdistill's stderr.
  grep -v $'^\t' "$OUT/run.time" | tail -n 5 | cut -c1-400 || true
  grep -E "Elapsed|Maximum resident" "$OUT/run.time" || true
  stamp "run exit status $rc (124/130 = stopped by the timeout)"
  (( rc == 0 || status != 0 )) || status=$rc
fi
if [[ -z "${SKIP_REPRO:-}" ]]; then
  # Same seed, same numbers? CubeCL times candidate kernels per shape and keeps its picks
  # in $SELFDISTILL_CACHE_DIR/autotune; on wgpu, runs with the same picks agree and a run
  # whose picks other workloads had made did not (BENCHMARKS "CUDA"). `quick` cut to one
  # epoch and one generation, five times:
  #   fresh1: an empty cache (it tunes as it goes)
  #   again1: the copy of those picks fresh1 kept in its run folder (it loads them)
  #   fresh2: another empty cache                    warm:   the cache the steps above filled
  #   reads1: as again1, loss read back every step instead of every 8
  stamp "reproducibility: quick, 1 epoch, 5 runs (timeout ${REPRO_TIMEOUT:-90}s each)"
  repro="$OUT/repro"
  mkdir -p "$repro"
  repro=$(cd "$repro" && pwd)
  sed 's/^epochs = .*/epochs = 1/; s/^generations = .*/generations = 1/' presets/quick.toml > "$repro/quick1.toml"
  declare -A sum
  for which in fresh1 again1 fresh2 warm reads1; do
    extra=()
    case "$which" in
      fresh1) cache="$repro/cache-1" ;;
      again1|reads1)
        cache=$(ls -d "$repro/runs-fresh1"/*/ 2>/dev/null | head -1)
        cache="${cache%/}"
        [[ $which == reads1 ]] && extra=(--read-every 1) ;;
      fresh2) cache="$repro/cache-2" ;;
      warm) cache="$SELFDISTILL_CACHE_DIR" ;;
    esac
    SELFDISTILL_CACHE_DIR="$cache" timeout -s INT "${REPRO_TIMEOUT:-90}" "$BIN" run \
      --preset "$repro/quick1.toml" --headless --backend cuda --runs-dir "$repro/runs-$which" \
      "${extra[@]}" > "$repro/$which.log" 2>&1 || echo "reproducibility run $which failed (see $repro/$which.log)" >&2
    m=$(ls "$repro/runs-$which"/*/metrics.csv 2>/dev/null | head -1)
    sum[$which]=$([[ -n "$m" ]] && cut -d, -f1-15 "$m" | md5sum | cut -c1-12 || echo missing)
  done
  same() { [[ "${sum[$1]}" != missing && "${sum[$1]}" == "${sum[$2]}" ]] && echo same || echo DIFFERENT; }
  {
    echo "md5 of metrics.csv without elapsed_s: fresh1=${sum[fresh1]} again1=${sum[again1]} fresh2=${sum[fresh2]} warm=${sum[warm]} reads1=${sum[reads1]}"
    echo "tuning as it goes vs loading the picks it kept in its run folder (fresh1, again1): $(same fresh1 again1)"
    echo "two independent tunings (fresh1, fresh2): $(same fresh1 fresh2)"
    echo "own picks vs picks other workloads made (fresh1, warm): $(same fresh1 warm)"
    echo "loss read every 8 steps vs every step, same picks (again1, reads1): $(same again1 reads1)"
  } | tee "$repro/result.txt"
fi
tar -czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")" 2>/dev/null || true
stamp "done; results in $OUT and $OUT.tgz (copy ratios.md and run.log figures into BENCHMARKS.md)"
exit "$status"
