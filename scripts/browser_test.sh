#!/usr/bin/env bash
# The chat page (GET /) in a real browser: Debian's chromium driven by Playwright
# (tests/browser/chat_page.test.mjs). Installs what is missing (chromium from apt, playwright-core
# from the lock file: never a browser download), builds the binary, serves the model that
# tests/browser/make_model.mjs writes on a free port, runs the test and stops the server.
# Screenshots land in target/browser/. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "scripts/browser_test.sh needs Node.js 20 or newer with npm (playwright-core 1.65)" >&2
  exit 1
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# target/debug/ferroformers as `cargo test` builds it (a test target unifies the dev-dependencies'
# features): after `cargo test`, as in .ci/run, nothing recompiles, where `cargo build --bin`
# would rebuild candle and a few others with other features (~1.5 min).
cargo test --no-run --quiet --test cli

out=target/browser
mkdir -p "$out"
node tests/browser/make_model.mjs "$out/model"

# One thread for the model leaves the other cores to the browser: a page starved of CPU falls
# behind the server, and the Stop test must click while the server is still generating.
target/debug/ferroformers serve -m "$out/model" --task chat --port 0 --threads 1 \
  >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

# The server prints one line when it is ready, with its address.
url=""
for _ in $(seq 600); do
  url=$(grep -o -m1 'http://[0-9.]*:[0-9]*' "$out/server.log" || true)
  [ -n "$url" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "the server did not start:" >&2
    cat "$out/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "the server was not ready after 60 s:" >&2
  cat "$out/server.log" >&2
  exit 1
fi

FERROFORMERS_URL="$url" SCREENSHOT_DIR="$out" node --test tests/browser/chat_page.test.mjs
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true

# A Llama-style model in the page: the Llama fixture (Llama 3.1's chat template, two end
# tokens), its greedy reply streamed against the API's whole answer. The fixture decodes too
# fast for the Stop test, which the model above covers.
target/debug/ferroformers serve -m tests/fixtures/llama/lm-head --task chat --port 0 --threads 1 \
  >"$out/llama-server.log" 2>&1 &
server=$!
url=""
for _ in $(seq 600); do
  url=$(grep -o -m1 'http://[0-9.]*:[0-9]*' "$out/llama-server.log" || true)
  [ -n "$url" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "the Llama server did not start:" >&2
    cat "$out/llama-server.log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "the Llama server was not ready after 60 s:" >&2
  cat "$out/llama-server.log" >&2
  exit 1
fi
FERROFORMERS_URL="$url" SCREENSHOT_DIR="$out/llama" node --test \
  --test-name-pattern="a greedy reply streams in" tests/browser/chat_page.test.mjs
