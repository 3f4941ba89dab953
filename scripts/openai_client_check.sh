#!/usr/bin/env bash
# The official `openai` Python client against `ferroformers serve` (issue 18): builds the binary,
# serves the embeddings fixture and the GPT-2 fixture with the ChatML chat template on free
# ports, runs scripts/openai_client_check.py against both, and stops them. Exits non-zero on
# any mismatch. Needs python3 with `openai` (pip install openai==3.51.0); PYTHON overrides
# the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

# target/debug/ferroformers as `cargo test` builds it (a test target unifies the dev-dependencies'
# features): after `cargo test`, as in .ci/run, nothing recompiles, where `cargo build --bin`
# would rebuild candle and a few others with other features (~1.5 min).
cargo test --no-run --quiet --test cli

out=target/openai-client-check
rm -rf "$out"
mkdir -p "$out/chat-model"
# The fixture GPT-2 (a copy: the loader refuses links out of the model folder) with the
# tokenizer_config.json that adds a ChatML template.
cp tests/fixtures/gpt2/lm-head/* "$out/chat-model/"
cp tests/fixtures/chat_templates/chatml_generation/tokenizer_config.json "$out/chat-model/"

servers=()
stop_servers() {
  for pid in "${servers[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_servers EXIT

# `serve NAME LOG ARGS...`: start `ferroformers serve ARGS` and, once it says it is ready, set
# the variable NAME to its URL (not in a subshell, so that the trap knows the server).
serve() {
  local name=$1 log=$2
  shift 2
  target/debug/ferroformers serve --port 0 "$@" >"$log" 2>&1 &
  servers+=($!)
  local pid=$!
  for _ in $(seq 600); do
    local url
    url=$(grep -o -m1 'http://[0-9.]*:[0-9]*' "$log" || true)
    if [ -n "$url" ]; then
      printf -v "$name" '%s' "$url"
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "the server did not start:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "the server was not ready after 60 s:" >&2
  cat "$log" >&2
  return 1
}

serve embed_url "$out/embed.log" -m tests/fixtures/bert/sentence-transformers --task embed
serve generate_url "$out/generate.log" -m "$out/chat-model" --task generate
# A Llama-style model: Llama 3.1's chat template (from chat_template.jinja), two end tokens.
serve llama_url "$out/llama.log" -m tests/fixtures/llama/lm-head --task chat
"${PYTHON:-python3}" scripts/openai_client_check.py \
  --embed-url "$embed_url" --generate-url "$generate_url" --generate-url "$llama_url"
