#!/usr/bin/env bash
# Scale out behind nginx (issue 18): two `ferroformers serve` replicas of all-MiniLM-L6-v2 on
# loopback behind one nginx upstream; CLIENTS clients send /embed requests through nginx for
# SECONDS, one replica gets SIGTERM half-way, and the load must see zero failed requests:
# nginx retries on the other replica what the stopping one no longer takes.
#
# usage: scripts/nginx_demo.sh [SECONDS=20] [CLIENTS=16]
# Needs nginx (Debian's package: installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-20}
clients=${2:-16}
body='{"inputs":"The quick brown fox jumps over the lazy dog beside the quiet river bank."}'

if ! command -v nginx >/dev/null; then
    apt-get install -y nginx >&2 || { apt-get update >&2 && apt-get install -y nginx >&2; }
fi
python3 scripts/fetch_minilm.py >&2
cargo build --release -p ferroformers-cli --bin ferroformers -p ferroformers-bench --bin load >&2

work=$(mktemp -d)
pids=()
cleanup() {
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Start replica $1; its address in $work/replica$1.address.
start_replica() {
    HF_HUB_OFFLINE=1 target/release/ferroformers serve -m sentence-transformers/all-MiniLM-L6-v2 \
        --port 0 >"$work/replica$1.out" 2>"$work/replica$1.err" &
    pids+=($!)
    for _ in $(seq 600); do
        if grep -q -o 'http://[0-9.:]*' "$work/replica$1.out"; then
            grep -o 'http://[0-9.:]*' "$work/replica$1.out" | head -n 1 | sed 's|http://||' >"$work/replica$1.address"
            return 0
        fi
        sleep 0.1
    done
    echo "replica $1 did not start" >&2
    cat "$work/replica$1.err" >&2
    exit 1
}
start_replica 1
start_replica 2
replica1_pid=${pids[0]}
first=$(cat "$work/replica1.address")
second=$(cat "$work/replica2.address")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

mkdir -p "$work/temp"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/temp/body;
    proxy_temp_path $work/temp/proxy;
    fastcgi_temp_path $work/temp/fastcgi;
    uwsgi_temp_path $work/temp/uwsgi;
    scgi_temp_path $work/temp/scgi;
    upstream ferroformers {
        server $first max_fails=1 fail_timeout=30s;
        server $second max_fails=1 fail_timeout=30s;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://ferroformers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            # A replica that is stopping refuses connections, closes idle ones, and answers 503
            # once it takes no more work: try the request on the other replica. POST is retried
            # too (non_idempotent) because these routes are idempotent: an embedding (or a
            # score) depends on the request alone and changes nothing on the server, so running
            # it twice gives the same answer and no side effect.
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 2;
        }
    }
}
CONF
nginx -c "$work/nginx.conf" -p "$work"
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.1; done

echo "replicas $first and $second behind nginx on 127.0.0.1:$port; $clients clients for ${duration}s" >&2
target/release/load --url "http://127.0.0.1:$port/embed" --body "$body" --clients "$clients" \
    --seconds "$duration" >"$work/load.json" &
load_pid=$!
sleep "$(python3 -c "print($duration / 2)")"
served_by() {
    curl -s "http://$1/metrics" | awk '/^ferroformers_requests_total\{route="\/embed",status="200"\}/ {print $2}'
}
first_served=$(served_by "$first")
echo "SIGTERM to replica 1 ($first), which has served $first_served requests" >&2
kill -TERM "$replica1_pid"
status=0
wait "$replica1_pid" || status=$?
echo "replica 1 exited with status $status" >&2
wait "$load_pid"
result=$(cat "$work/load.json")
echo "$result"
second_served=$(served_by "$second")
# Each line is a request nginx passed on to the other replica.
retried=$(grep -c 'upstream' "$work/error.log" || true)
python3 - "$result" "${first_served:-0}" "${second_served:-0}" "$retried" <<'PY'
import json, sys
result = json.loads(sys.argv[1])
first, second, retried = (int(float(x)) for x in sys.argv[2:5])
ok = result["errors"] == 0 and result["ok"] > 0 and first > 0 and second > 0
print(json.dumps({"failed_requests": result["errors"], "served": result["ok"],
                  "replica1_served_before_sigterm": first, "replica2_served": second,
                  "nginx_upstream_errors_logged": retried,
                  "verdict": "no request lost" if ok else "requests failed"}))
sys.exit(0 if ok else 1)
PY
