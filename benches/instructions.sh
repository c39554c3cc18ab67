#!/usr/bin/env bash
# Instructions counted by callgrind (exact and repeatable, unlike timings on a shared VM) for
# the benches whose goals are ratios: per call for each `dispatch` variant, per agent turn for
# each `observe_overhead` variant. Two figures per variant: every thread (so work handed to the
# telemetry thread is not hidden), and the calling thread alone (the request path). Per unit =
# (count at N + 1,000 units - count at N) / 1,000, which cancels start-up; N is large enough
# for buffers to reach their working size. Needs valgrind. Run: benches/instructions.sh [dispatch] [observe_overhead]
set -euo pipefail
cd "$(dirname "$0")/.."
only="$*"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentkit/target}"
executable() {
  cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null \
    | sed -n "s/.*\"executable\":\"\([^\"]*$1[^\"]*\)\".*/\1/p" | tail -1
}
# count EXECUTABLE COUNT_VARIABLE VARIANT N: "all-threads calling-thread" instructions of a
# run of N units of VARIANT. Where the bench has a `run_turns` function, callgrind writes
# the calling thread's count so far when it is entered and starts afresh: start-up (a clock
# calibration that runs for a set time, so for a varying number of instructions) stays out.
# The final files (`out-NN`, one per thread) hold what is counted.
count() {
  local dir all=0 main
  dir=$(mktemp -d)
  env "$2=$4" AGENTKIT_VARIANT="$3" AGENTKIT_ONE_BATCH=1 valgrind --tool=callgrind --separate-threads=yes \
    --dump-before='*run_turns*' --callgrind-out-file="$dir/out" "$1" >/dev/null 2>&1
  for file in "$dir"/out-*; do
    n=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$file")
    all=$((all + ${n:-0}))
  done
  main=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$dir/out-01")
  rm -rf "$dir"
  echo "$all $main"
}
# report BENCH COUNT_VARIABLE UNIT WARM-UP VARIANT...: the first variant is the baseline.
report() {
  local bench=$1 variable=$2 unit=$3 warm=$4 base="" base_main="" exe
  shift 4
  exe=$(executable "$bench")
  for variant in "$@"; do
    read -r all0 main0 < <(count "$exe" "$variable" "$variant" "$warm")
    read -r all1 main1 < <(count "$exe" "$variable" "$variant" $((warm + 1000)))
    per=$(( (all1 - all0) / 1000 ))
    per_main=$(( (main1 - main0) / 1000 ))
    base=${base:-$per}
    base_main=${base_main:-$per_main}
    awk -v b="$bench" -v v="$variant" -v n="$per" -v m="$per_main" -v base="$base" \
      -v bm="$base_main" -v u="$unit" 'BEGIN {
        printf "%s/%-18s %8d instructions per %s (%.2fx the first); calling thread %8d (%.2fx)\n",
          b, v, n, u, n / base, m, m / bm }'
  done
}
# Both benches, or the ones named: benches/instructions.sh observe_overhead
wanted() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }
if wanted dispatch; then
  report dispatch AGENTKIT_CALLS call 1000 serde_baseline tool_call inline_tool_call
fi
if wanted observe_overhead; then
  report observe_overhead AGENTKIT_TURNS turn 3000 no_hook off json_logs traces_metrics full
fi
