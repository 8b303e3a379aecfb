#!/usr/bin/env bash
# perf_analyzer load test of the served ensemble (concurrency 1,2,4,8,16 -> docs/perf_analyzer.csv).
# Makes the perf_analyzer of the tritonclient==2.50.0 wheel runnable first: libb64 from Debian,
# libcudart.so.12 from a pinned PyPI wheel (newer perf_analyzer builds need glibc 2.38).
# Extra arguments go to `python -m tembed_bench.perf` (e.g. --url HOST:PORT, --concurrency 1,4).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if ! ldconfig -p | grep -q libb64.so.0d; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q libb64-0d >/dev/null || { apt-get update -q && apt-get install -y -q libb64-0d; }
  else echo "perf.sh: install libb64-0d (sudo apt-get install -y libb64-0d)" >&2; exit 1; fi
fi
if [ ! -e .cache/perf-deps/nvidia/cuda_runtime/lib/libcudart.so.12 ]; then
  "$VENV/bin/pip" install -q --no-deps --target .cache/perf-deps nvidia-cuda-runtime-cu12==12.4.127
fi
exec "$VENV/bin/python" -m tembed_bench perf "$@"
