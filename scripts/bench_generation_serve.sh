#!/usr/bin/env bash
# Generation load benchmark (issue 18): a random GPT-2 small served by
# `ferroformers serve --task generate` (release build), STREAMS concurrent greedy streams of
# TOKENS tokens over /v1/completions against the same streams one at a time.
#
#   PYTHON=/path/to/venv/bin/python scripts/bench_generation_serve.sh
#
# PYTHON needs torch and transformers (to write the random checkpoint once, into MODEL_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MODEL_DIR=${MODEL_DIR:-target/bench-models/gpt2-random}
STREAMS=${STREAMS:-8}
TOKENS=${TOKENS:-128}
PORT=${PORT:-8391}

cargo build --release -p ferroformers-cli --bin ferroformers
[ -e "$MODEL_DIR/model.safetensors" ] || "$PYTHON" scripts/random_gpt2.py "$MODEL_DIR"
target/release/ferroformers serve -m "$MODEL_DIR" --task generate --port "$PORT" &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 1
done
grep -o -w 'avx2\|avx512f\|avx512_bf16\|avx512_vnni' /proc/cpuinfo | sort -u | tr '\n' ' '
echo "($(nproc) cores)"
"$PYTHON" scripts/bench_generation_serve.py --url "http://127.0.0.1:$PORT" \
    --streams "$STREAMS" --tokens "$TOKENS"
