#!/usr/bin/env bash
# Build the `--features cuda` binary here and pack it for a GPU machine without cargo:
# target/cuda/selfdistill.gz (stripped, ~18 MB) and target/cuda/COMMIT (the commit it was
# built from, "+dirty" when the tree had changes). bench/gpu.sh records COMMIT and warns
# when it is not the checkout's HEAD.
#
#   bench/pack_cuda.sh            # CUDARC_CUDA_VERSION defaults to 13000 (driver 580)
#   BIN=target/cuda/selfdistill.gz PYTHON=python3 bench/gpu.sh    # there
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
cargo build --release --features cuda
mkdir -p target/cuda
rm -f target/cuda/selfdistill target/cuda/selfdistill.gz
strip -o target/cuda/selfdistill target/release/selfdistill
gzip target/cuda/selfdistill
commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock || commit="$commit+dirty"
echo "$commit CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION" > target/cuda/COMMIT
ls -l target/cuda
cat target/cuda/COMMIT
