#!/usr/bin/env bash
# CI: runs every cargo-fuzz target in fuzz/ for a bounded time, starting from the committed
# corpus in fuzz/corpus/<target>; a crash, a panic, a hang or an out-of-memory fails the step
# (libFuzzer saves the input under fuzz/artifacts/<target>/ and prints how to replay it).
#
#   FUZZ_SECONDS    seconds per target (default 30)
#   FUZZ_SANITIZER  address (default; catches out-of-bounds accesses in the crate's unsafe
#                   kernels) or none (faster to build and to run)
#   FUZZ_PROFILE    dev (default) or release. cargo-fuzz's release build (opt-level 3, one
#                   codegen unit per crate, every dependency instrumented) of candle, gemm and
#                   tokenizers took 10.5 min of CPU (29 min wall on a loaded 2-core machine);
#                   the dev build takes about 3 min of CPU (3m38s wall there), and its
#                   targets still run 150-650 inputs a second through config, header and
#                   tokenizer loading (with a forward pass) and ~7,000 a second through the
#                   pickle check.
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer, sanitizer-coverage passes) to rustc;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
sanitizer="${FUZZ_SANITIZER:-address}"
profile="${FUZZ_PROFILE:-dev}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# One build for all targets, with the same flags as the runs below so that they reuse it.
build=(--"$profile" --sanitizer "$sanitizer")
cargo fuzz build "${build[@]}"

# New inputs the fuzzer finds go to a scratch folder (the first corpus folder libFuzzer is
# given), so the committed corpus is only read.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target"
  # Tokens that mutations insert whole: the target's own dictionary, else the JSON one.
  dict="$PWD/fuzz/dict/$target.dict"
  [[ -f "$dict" ]] || dict="$PWD/fuzz/dict/json.dict"
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run "${build[@]}" "$target" "$scratch/$target" "$PWD/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -dict="$dict" \
    -print_final_stats=1
done
