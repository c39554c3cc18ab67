#!/usr/bin/env bash
# Where the NATS server's CPU goes in a `queue_throughput` phase. The machine's server is a
# stripped binary (perf sees no names), so this starts a second one on port 4223 with Go's
# profiler on, runs one phase against it and decodes the profile with benches/pprof_top.py.
# Run: benches/nats_server_profile.sh [raw|e2e] [delay_s] (the delay skips into the phase:
# for the raw + outcome loop, which follows the raw one, about 3 s at 40,000 jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:-e2e}
delay=${2:-0.3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentkit/target}"
exe=$(cargo bench --bench queue_throughput --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*queue_throughput[^"]*\)".*/\1/p' | tail -1)
dir=$(mktemp -d)
/usr/sbin/nats-server -a 127.0.0.1 -p 4223 -js -sd "$dir/store" --profile 6061 -l "$dir/log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:6061/debug/pprof/ && break; sleep 0.1; done
(sleep "$delay"; curl -sf -o "$dir/profile.pb.gz" "http://127.0.0.1:6061/debug/pprof/profile?seconds=3") &
profiler=$!
REDIS_URL=redis://127.0.0.1:1 NATS_URL=nats://127.0.0.1:4223 AGENTKIT_BENCH_ONLY="$phase" \
  AGENTKIT_BENCH_JOBS=40000 AGENTKIT_BENCH_ROUNDS=1 "$exe" --bench 2>&1 | grep 'jobs/s' || true
wait "$profiler"
python3 benches/pprof_top.py "$dir/profile.pb.gz" cum 40
