#!/usr/bin/env bash
# Run examples/device_check (built with --features cuda) on a machine with an NVIDIA GPU,
# finding the CUDA libraries that PyTorch's wheels and the driver install there.
#   scripts/gpu_check.sh path/to/device_check
set -u
binary=${1:?usage: scripts/gpu_check.sh path/to/device_check}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
dirs=""
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10; do
  found=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$lib" -print 2>/dev/null | head -n 1)
  echo "$lib: ${found:-not found}"
  [ -n "$found" ] && dirs="$dirs:$(dirname "$found")"
done
export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$binary" cuda "$(dirname "$0")/../tests/fixtures"
