#!/usr/bin/env bash
# The test command of README.md: installs the Debian packages the tests read
# (Fashion-MNIST for the real-data loader test, tmux for the dashboard end-to-end
# test, python3 for the benchmark comparison script's test) when they are missing, then
# runs the whole suite with the release profile (debug-built Burn is far too slow).
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages for the tests: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

cargo test --release "$@"
