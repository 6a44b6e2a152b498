#!/usr/bin/env bash
# What the dashboard costs, measured on the real binary in tmux (apt-get install tmux):
#   1. launch-to-menu time: from starting the process to the menu on screen (LAUNCHES runs);
#   2. training wall time of a preset, headless vs in the dashboard, alternating (ROUNDS each);
#   3. bytes per second the dashboard writes to the terminal at steady state (tmux pipe-pane,
#      between STEADY_FROM and STEADY_TO seconds into the run), plus its own frame statistics.
#
#   bench/ui_measure.sh                    # quick preset, 2 rounds, 120x40 terminal
#   ROUNDS=3 COLS=80 ROWS=24 bench/ui_measure.sh
#
# Prints one line per measurement and writes them to $OUT/ui.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-target/release/selfdistill}"
PRESET="${PRESET:-quick}"
ROUNDS="${ROUNDS:-2}"
LAUNCHES="${LAUNCHES:-5}"
COLS="${COLS:-120}"
ROWS="${ROWS:-40}"
STEADY_FROM="${STEADY_FROM:-5}"
STEADY_TO="${STEADY_TO:-25}"
OUT="${OUT:-bench/out/ui-$(date -u +%Y%m%dT%H%M%SZ)}"
BIN="$(realpath "$BIN")"
mkdir -p "$OUT"
OUT="$(realpath "$OUT")"
SOCK="selfdistill-ui-$$"

tm() { tmux -L "$SOCK" "$@"; }
trap 'tm kill-server >/dev/null 2>&1 || true' EXIT
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
say() { echo "$*" | tee -a "$OUT/ui.txt"; }
# Status and wall time of the one run under a runs folder.
summary() { python3 -c "
import glob, json, sys
s = glob.glob('$1/*/summary.json')
d = json.load(open(s[0])) if s else {}
print(d.get('status', 'none'), d.get('wall_s', 0))"; }

say "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(nproc) logical CPUs), terminal ${COLS}x${ROWS}, preset $PRESET, $(date -u +%FT%TZ)"

# 1. Launch to menu.
for i in $(seq 1 "$LAUNCHES"); do
  start=$(now)
  tm new-session -d -x "$COLS" -y "$ROWS" "SELFDISTILL_RUNS_DIR=$OUT/menu-runs $BIN"
  until tm capture-pane -p 2>/dev/null | grep -q "Details"; do sleep 0.005; done
  say "launch_to_menu_s $(elapsed "$start" "$(now)")"
  tm kill-server >/dev/null 2>&1 || true
  sleep 0.5
done

# 2 and 3. Headless and dashboard runs, alternating.
for r in $(seq 1 "$ROUNDS"); do
  dir="$OUT/headless-$r"
  "$BIN" run --preset "$PRESET" --headless --runs-dir "$dir" >/dev/null
  read -r status wall <<<"$(summary "$dir")"
  say "headless round $r: status $status wall_s $wall"

  dir="$OUT/dashboard-$r"
  bytes="$OUT/pane-$r.bytes"
  : >"$bytes"
  tm new-session -d -x "$COLS" -y "$ROWS" \
    "SELFDISTILL_UI_STATS=$OUT/ui-stats-$r.json $BIN run --preset $PRESET --runs-dir $dir; sleep 3600"
  tm pipe-pane -o "cat >> $bytes"
  start=$(now)
  sleep "$STEADY_FROM"
  b0=$(stat -c %s "$bytes")
  t0=$(now)
  sleep $((STEADY_TO - STEADY_FROM))
  b1=$(stat -c %s "$bytes")
  t1=$(now)
  say "dashboard round $r: steady_bytes_per_s $(python3 -c "print(round(($b1 - $b0) / ($t1 - $t0)))") (${STEADY_FROM}-${STEADY_TO} s)"
  until [[ "$(summary "$dir" | cut -d' ' -f1)" == finished ]]; do sleep 0.5; done
  read -r status wall <<<"$(summary "$dir")"
  total=$(stat -c %s "$bytes")
  say "dashboard round $r: status $status wall_s $wall total_bytes $total ($(python3 -c "print(round($total / $wall))") B/s over the run)"
  tm send-keys q
  sleep 2
  tm kill-server >/dev/null 2>&1 || true
  [[ -f "$OUT/ui-stats-$r.json" ]] && say "dashboard round $r: ui stats $(cat "$OUT/ui-stats-$r.json")"
done
echo "results in $OUT/ui.txt" >&2
