#!/usr/bin/env bash
# Encoder load benchmark of `ferroformers serve` (issue 18): all-MiniLM-L6-v2, CLIENTS clients
# each sending one short sentence (~16 tokens with [CLS] and [SEP]) to /embed for SECONDS,
# once with the default batching and once one request at a time (--max-batch-requests 1);
# prints each run's JSON line (throughput, p50, p99, errors) and the throughput ratio.
#
# usage: scripts/bench_serve.sh [SECONDS=60] [CLIENTS=32] [CPUS=0-1]
# The server is pinned to CPUS with taskset; the load generator runs on the same CPUs (on a
# 2-core machine there is no other choice), so it takes a share of them: the numbers are a
# lower bound for the server alone.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-60}
clients=${2:-32}
cpus=${3:-0-1}
body='{"inputs":"The quick brown fox jumps over the lazy dog beside the quiet river bank."}'

model_dir=$(python3 scripts/fetch_minilm.py | tail -n 1)
echo "model: $model_dir" >&2
cargo build --release -p ferroformers-cli --bin ferroformers -p ferroformers-bench --bin load >&2
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Start a server with the extra options given, wait for its ready line, set $address.
start_server() {
    : >"$work/server.out"
    HF_HUB_OFFLINE=1 taskset -c "$cpus" target/release/ferroformers serve \
        -m sentence-transformers/all-MiniLM-L6-v2 --port 0 "$@" >"$work/server.out" 2>"$work/server.err" &
    server_pid=$!
    for _ in $(seq 600); do
        address=$(grep -o 'http://[0-9.:]*' "$work/server.out" | head -n 1 || true)
        [ -n "$address" ] && return 0
        kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err" >&2; exit 1; }
        sleep 0.1
    done
    echo "the server did not start" >&2
    exit 1
}

stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid" || true
    server_pid=
}

# One run: the load generator's JSON line, with the batching options in it.
run() {
    local label=$1
    shift
    start_server "$@"
    # A few requests first, so that the first measured ones do not pay for cold caches.
    taskset -c "$cpus" target/release/load --url "$address/embed" --body "$body" --clients 4 --seconds 2 >/dev/null
    # The server's CPU time (user + system, in clock ticks) over the measured load: its cost
    # per request does not depend on how much of the CPUs the other processes leave it.
    local ticks_before ticks_after result batches
    ticks_before=$(awk '{print $14 + $15}' "/proc/$server_pid/stat")
    result=$(taskset -c "$cpus" target/release/load --url "$address/embed" --body "$body" \
        --clients "$clients" --seconds "$duration")
    ticks_after=$(awk '{print $14 + $15}' "/proc/$server_pid/stat")
    batches=$(curl -s "$address/metrics" | grep -E '^ferroformers_(batch_size_(sum|count)|forward_passes_total) ' | tr '\n' ' ')
    stop_server
    python3 - "$result" "$label" "$batches" "$((ticks_after - ticks_before))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
result, label, batches, ticks, hertz = sys.argv[1:6]
r = json.loads(result)
cpu_seconds = int(ticks) / int(hertz)
r["run"] = label
r["server_metrics"] = batches.strip()
r["server_cpu_seconds"] = cpu_seconds
r["server_cpu_ms_per_request"] = round(1000 * cpu_seconds / max(r["ok"], 1), 3)
print(json.dumps(r))
PY
}

batched=$(run "batched (default: --max-batch-tokens 16384)")
echo "$batched"
single=$(run "one request at a time (--max-batch-requests 1)" --max-batch-requests 1)
echo "$single"
python3 - "$batched" "$single" <<'PY'
import json, sys
batched, single = (json.loads(line) for line in sys.argv[1:3])
ratio = batched["throughput_rps"] / single["throughput_rps"]
cpu_ratio = single["server_cpu_ms_per_request"] / batched["server_cpu_ms_per_request"]
print(json.dumps({"throughput_ratio": round(ratio, 2), "goal": 4.0,
                  "server_cpu_per_request_ratio": round(cpu_ratio, 2),
                  "errors": batched["errors"] + single["errors"]}))
PY
