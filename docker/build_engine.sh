#!/usr/bin/env bash
# Build the TensorRT engine of one exported model inside the image that will serve it, so the plan
# matches the server's TensorRT exactly (an engine only deserializes on the version that built it).
#
#   docker/build_engine.sh NAME [tembed engine options...]
#   e.g. docker/build_engine.sh qwen3-embedding-4b --precision bf16
#
# REPO (default ./model_repository) must hold NAME's models from `tembed export --backend tensorrt`. The timing cache persists in REPO/.cache (reused by rebuilds).
set -euo pipefail

IMAGE="${IMAGE:-tembed-builder:24.10}"
REPO="${REPO:-model_repository}"

if [[ "${1:-}" == "--inside" ]]; then
  shift
  name="$1"
  shift
  # The pip wheel of TensorRT must be the image's libnvinfer, or Triton cannot load the plan.
  lib="$(dpkg-query -W -f='${Version}' libnvinfer10 2>/dev/null | cut -d- -f1 || true)"
  py="$(python3 -c 'import tensorrt; print(tensorrt.__version__)')"
  echo "libnvinfer ${lib:-unknown}, tensorrt (Python) ${py}"
  if [[ -n "$lib" && "$lib" != "$py"* && "$py" != "$lib"* ]]; then
    echo "error: TensorRT Python ${py} differs from the image's libnvinfer ${lib}; rebuild the builder" \
      "image with --build-arg TENSORRT_PIP=tensorrt-cu12==${lib%.*}" >&2
    exit 1
  fi
  nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader
  exec tembed -v engine --repo /models --name "$name" --timing-cache /models/.cache/timing.cache "$@"
fi

if [[ $# -lt 1 ]]; then
  echo "usage: $0 NAME [tembed engine options...]" >&2
  exit 2
fi
if [[ ! -d "$REPO" ]]; then
  echo "error: model repository $REPO not found; run: tembed export MODEL_DIR --backend tensorrt --repo $REPO" >&2
  exit 1
fi
# Where NAME's files lie is tembed_serving.contract.Layout's business: `tembed engine` inside the image
# finds them and says which one is missing.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec docker run --rm --gpus all --shm-size 2g \
  -v "$(cd "$REPO" && pwd):/models" \
  -v "$here/build_engine.sh:/usr/local/bin/build_engine.sh:ro" \
  "$IMAGE" bash /usr/local/bin/build_engine.sh --inside "$@"
