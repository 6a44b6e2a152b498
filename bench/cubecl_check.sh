#!/usr/bin/env bash
# The CUDA build's code path, run without an NVIDIA GPU. `--features cuda` trains on
# Burn's fused CubeCL backend (`Fusion<CubeBackend<CudaRuntime>>`) through the same generic
# code (our `KernelBackend` defaults, the trainer, the KD loss, the bench) that any CubeCL
# runtime runs. This script builds a copy of HEAD with that runtime swapped for wgpu
# (`Fusion<CubeBackend<WgpuRuntime>>`), runs it on Mesa's lavapipe (Vulkan on the CPU),
# and checks that every benchmark case and a short distillation run (teachers, KD, the
# self method's replacements) complete, that CubeCL's autotune picks go to selfdistill's
# cache folder (not to the `target/` of the Cargo project it was started in), that the run
# keeps a copy of them in its folder, and that a second run of the same preset and seed
# loading that copy (SELFDISTILL_CACHE_DIR=<run folder>) gives the same numbers. What it
# cannot check: NVRTC's compilation of the kernels, cudarc and the driver; those need a GPU
# (bench/gpu.sh).
#
#   bench/cubecl_check.sh          # ~10 min build on 2 cores (once), ~3 min of runs
#
# Env: OUT (bench/out/cubecl-<date>), TARGET (target/cubecl-check: kept between runs).
# Needs: mesa-vulkan-drivers and libvulkan1 (installed with apt-get when missing) and python3.
# CI runs it (.ci/run) so the GPU code path is exercised at every change.
# The copy is patched in 4 places (checked: the script stops if the code moved); the
# labels it prints say `cuda`, which here means the wgpu runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="${OUT:-bench/out/cubecl-$(date -u +%Y%m%dT%H%M%SZ)}"
TARGET="${TARGET:-$ROOT/target/cubecl-check}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if ! dpkg -s mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1; then
  sudo=""
  [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
  echo "installing Debian packages: mesa-vulkan-drivers libvulkan1" >&2
  { $sudo apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
           mesa-vulkan-drivers libvulkan1; } >"$OUT/apt.log" 2>&1 \
    || { echo "need mesa-vulkan-drivers and libvulkan1 (see $OUT/apt.log)" >&2; exit 1; }
fi
# wgpu's Vulkan loader wants a runtime dir (none in a plain SSH or CI shell).
if [[ -z "${XDG_RUNTIME_DIR:-}" || ! -d "$XDG_RUNTIME_DIR" ]]; then
  export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/selfdistill-xdg-$UID"
  mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
fi

SRC=$(mktemp -d "${TMPDIR:-/tmp}/selfdistill-cubecl-XXXXXX")
trap 'rm -rf "$SRC"' EXIT
git archive HEAD | tar -x -C "$SRC"
commit=$(git rev-parse --short HEAD)

# file, text, replacement: each must match.
patch() {
  local file="$SRC/$1"
  grep -qF -- "$2" "$file" || { echo "cubecl_check: '$2' not found in $1: update this script" >&2; exit 1; }
  python3 - "$file" "$2" "$3" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
open(path, "w").write(text.replace(old, new))
EOF
}
patch Cargo.toml 'cuda = ["burn/cuda", "burn/cubecl"]' 'cuda = ["burn/wgpu", "burn/cubecl"]'
patch src/model/ops.rs 'impl KernelBackend for burn::backend::Cuda {' 'impl KernelBackend for burn::backend::Wgpu {'
patch src/train/backend.rs 'pub use burn::backend::{cuda::CudaDevice as GpuDevice, Cuda as Gpu};' \
  'pub use burn::backend::{wgpu::WgpuDevice as GpuDevice, Wgpu as Gpu};'
patch src/train/backend.rs 'GpuDevice::new(0)' 'GpuDevice::default()'

echo "== build (HEAD $commit, CubeCL on wgpu) -> $TARGET" >&2
(cd "$SRC" && CARGO_TARGET_DIR="$TARGET" cargo build --release --features cuda) 2>&1 | tail -n 3 | tee "$OUT/build.log"
BIN="$TARGET/release/selfdistill"
vulkaninfo_line=$(ls /usr/share/vulkan/icd.d/ 2>/dev/null | tr '\n' ' ')
{ echo "HEAD $commit; CubeCL runtime: wgpu on Vulkan ICDs: $vulkaninfo_line"; nproc; grep -m1 'model name' /proc/cpuinfo; } | tee "$OUT/env.txt"

status=0
fail() { echo "$1" >&2; status=1; }
# CubeCL's autotune picks: a fresh folder, its path checked below. The binary runs in the
# patched copy, a Cargo project: CubeCL left to itself would write its picks to ./target.
export SELFDISTILL_CACHE_DIR="$OUT/cache"
rm -rf "$SELFDISTILL_CACHE_DIR"
sed 's/^epochs = .*/epochs = 2/; s/^generations = .*/generations = 2/' presets/quick.toml >"$OUT/quick2.toml"
cd "$SRC"

echo "== bench: every case of both models, batch 8" >&2
if ! timeout 900 "$BIN" bench --backend cuda --models resnet20,cnn --cases train,train-kd,infer \
     --batch 8 --threads 2 --reps 1 --steps 2 --warmup 1 --min-time 0 --json "$OUT/bench.json" \
     >"$OUT/bench.txt" 2>"$OUT/bench.err"; then
  fail "bench FAILED (see $OUT/bench.err)"
fi
cat "$OUT/bench.txt"

# quick, 2 epochs and 2 generations, twice: the run (picks in $SELFDISTILL_CACHE_DIR), then
# a rerun that loads the copy of the picks the run kept in its folder. metrics.csv without
# its elapsed-time column must be the same.
sums=()
for which in run rerun; do
  echo "== $which: quick, 2 epochs, 2 generations (teachers, KD, replacements)" >&2
  cache="$SELFDISTILL_CACHE_DIR"
  [[ $which == rerun ]] && cache=$(ls -d "$OUT"/run/*/ 2>/dev/null | head -1)
  if SELFDISTILL_CACHE_DIR="${cache%/}" timeout 900 "$BIN" run --preset "$OUT/quick2.toml" \
       --backend cuda --headless --runs-dir "$OUT/$which" >"$OUT/$which.log" 2>&1 \
     && ls "$OUT/$which"/*/summary.json >/dev/null 2>&1; then
    tail -n 9 "$OUT/$which.log"
    sums+=("$(cut -d, -f1-15 "$OUT/$which"/*/metrics.csv | md5sum | cut -c1-12)")
  else
    fail "$which FAILED (see $OUT/$which.log)"; tail -n 20 "$OUT/$which.log" >&2
  fi
done

echo "== autotune picks and same-seed reproducibility" >&2
picks=$(find "$SELFDISTILL_CACHE_DIR/autotune" -name '*.json.log' 2>/dev/null | wc -l)
echo "autotune cache files under $SELFDISTILL_CACHE_DIR/autotune: $picks"
(( picks > 0 )) || fail "no autotune picks in $SELFDISTILL_CACHE_DIR/autotune"
[[ ! -e "$SRC/target/autotune" ]] || fail "CubeCL wrote its picks to the working directory's target/autotune"
kept=$(find "$OUT"/run/*/autotune -name '*.json.log' 2>/dev/null | wc -l)
echo "autotune picks kept in the run folder: $kept"
(( kept > 0 )) || fail "the run kept no copy of its autotune picks"
grep -qF "GPU kernel picks kept in" "$OUT/run.log" || fail "run.log does not say where the picks were kept"
grep -qF "GPU autotune picks: $SELFDISTILL_CACHE_DIR/autotune" "$OUT/run.log" \
  || fail "run.log does not name the autotune folder"
python3 - "$OUT"/run/*/summary.json "$SELFDISTILL_CACHE_DIR/autotune" <<'EOF' || fail "summary.json does not record the autotune folder"
import json, sys
recorded = json.load(open(sys.argv[1]))["plan"].get("autotune_cache")
print("summary.json plan.autotune_cache:", recorded)
sys.exit(recorded != sys.argv[2])
EOF
echo "metrics.csv md5 (without elapsed_s): ${sums[*]}"
if [[ ${#sums[@]} == 2 && "${sums[0]}" == "${sums[1]}" ]]; then
  echo "same seed, the picks the run kept: same numbers"
else
  fail "the rerun with the same seed and the run's kept picks gave other numbers"
fi
echo "== done ($([[ $status == 0 ]] && echo passed || echo FAILED)); results in $OUT" >&2
exit $status
