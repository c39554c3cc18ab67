#!/usr/bin/env bash
# Instructions per agent turn for each observe_overhead variant, counted by callgrind (exact and
# repeatable, unlike timings on a shared VM). Every thread counts, so work moved to the span
# exporter's thread is not hidden. Per turn = (count at 1,200 turns - count at 200) / 1,000,
# which cancels start-up. Needs valgrind. Run: benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentkit/target}"
bench=$(cargo bench --bench observe_overhead --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*observe_overhead[^"]*\)".*/\1/p' | tail -1)
count() {
  local out
  out=$(mktemp)
  AGENTKIT_TURNS=$2 AGENTKIT_VARIANT=$1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bench" >/dev/null 2>&1
  sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out"
  rm -f "$out"
}
base=""
for variant in no_hook off json_logs full; do
  per_turn=$(( ($(count "$variant" 1200) - $(count "$variant" 200)) / 1000 ))
  base=${base:-$per_turn}
  awk -v v="$variant" -v n="$per_turn" -v b="$base" \
    'BEGIN { printf "%-10s %8d instructions per turn (%+.1f%% vs no_hook)\n", v, n, (n - b) * 100 / b }'
done
