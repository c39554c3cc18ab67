#!/usr/bin/env bash
# Instructions counted by callgrind (exact and repeatable, unlike timings on a shared VM) for
# the benches whose goals are ratios: per call for each `dispatch` variant, per agent turn for
# each `observe_overhead` variant. Every thread counts, so work moved to the span exporter's
# thread is not hidden. Per unit = (count at N + 1,000 units - count at N) / 1,000, which
# cancels start-up. Needs valgrind. Run: benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentkit/target}"
executable() {
  cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null \
    | sed -n "s/.*\"executable\":\"\([^\"]*$1[^\"]*\)\".*/\1/p" | tail -1
}
# count EXECUTABLE COUNT_VARIABLE VARIANT N: instructions of a run of N units of VARIANT.
count() {
  local out
  out=$(mktemp)
  env "$2=$4" AGENTKIT_VARIANT="$3" valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$1" >/dev/null 2>&1
  sed -n 's/^summary: \([0-9]*\).*/\1/p' "$out"
  rm -f "$out"
}
# report BENCH COUNT_VARIABLE UNIT WARM-UP VARIANT...: the first variant is the baseline.
report() {
  local bench=$1 variable=$2 unit=$3 warm=$4 base="" per exe
  shift 4
  exe=$(executable "$bench")
  for variant in "$@"; do
    per=$(( ($(count "$exe" "$variable" "$variant" $((warm + 1000))) \
      - $(count "$exe" "$variable" "$variant" "$warm")) / 1000 ))
    base=${base:-$per}
    awk -v b="$bench" -v v="$variant" -v n="$per" -v base="$base" -v u="$unit" \
      'BEGIN { printf "%s/%-18s %8d instructions per %s (%.2fx the first)\n", b, v, n, u, n / base }'
  done
}
report dispatch AGENTKIT_CALLS call 1000 serde_baseline tool_call inline_tool_call
report observe_overhead AGENTKIT_TURNS turn 200 no_hook off json_logs full
