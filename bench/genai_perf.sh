#!/usr/bin/env bash
# genai-perf 0.0.16 (NVIDIA's load tester, with tritonclient 2.50's perf_analyzer) against the gateway, the
# way NIM users run it: embeddings (/v1/embeddings, OpenAI's body) and rankings (/v1/ranking, NIM's body).
# Needs a running gateway (`make serve` on a repository with an embedding model and a reranker).
# Offline: genai-perf's own venv (.venv-genai-perf, pinned), the tokenizer from the served model's folder,
# perf_analyzer's libraries as bench/perf.sh finds them. Results: bench_out/genai-perf/*/ (JSON, CSV).
#   GATEWAY_URL (http://127.0.0.1:30000)  EMBED_MODEL (multilingual-e5-small)  RERANK_MODEL (empty: skip)
#   TOKENIZER (fixtures/$EMBED_MODEL)  CONCURRENCY (4)  BATCH (8 texts / passages per request)  INTERVAL_MS (10000)
set -euo pipefail
cd "$(dirname "$0")/.."
URL=${GATEWAY_URL:-http://127.0.0.1:30000}
EMBED=${EMBED_MODEL:-multilingual-e5-small}
RERANK=${RERANK_MODEL:-}
TOKENIZER=${TOKENIZER:-fixtures/$EMBED}
CONCURRENCY=${CONCURRENCY:-4}
BATCH=${BATCH:-8}
INTERVAL_MS=${INTERVAL_MS:-10000}
GP=${GP_VENV:-.venv-genai-perf}
if [ ! -x "$GP/bin/genai-perf" ]; then
  python3 -m venv "$GP" && "$GP/bin/pip" install -q genai-perf==0.0.16 tritonclient==2.50.0
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q libb64-0d >/dev/null || { apt-get update -q && apt-get install -y -q libb64-0d; }
  else echo "genai_perf.sh: install libb64-0d (sudo apt-get install -y libb64-0d)" >&2; exit 1; fi
fi
if [ ! -e .cache/perf-deps/nvidia/cuda_runtime/lib/libcudart.so.12 ]; then
  "${VENV:-.venv}/bin/pip" install -q --no-deps --target .cache/perf-deps nvidia-cuda-runtime-cu12==12.4.127
fi
export PATH="$PWD/$GP/bin:$PATH" LD_LIBRARY_PATH="$PWD/.cache/perf-deps/nvidia/cuda_runtime/lib:${LD_LIBRARY_PATH:-}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=bench_out/genai-perf
common=(-u "$URL" --concurrency "$CONCURRENCY" --batch-size-text "$BATCH" --tokenizer "$TOKENIZER"
        --measurement-interval "$INTERVAL_MS" --num-dataset-entries 64 --random-seed 7)
genai-perf profile -m "$EMBED" --endpoint-type embeddings --synthetic-input-tokens-mean 64 \
  --synthetic-input-tokens-stddev 0 "${common[@]}" --artifact-dir "$OUT/embeddings"
if [ -n "$RERANK" ]; then
  genai-perf profile -m "$RERANK" --endpoint-type rankings --input-file synthetic:queries,passages \
    --synthetic-input-tokens-mean 64 --synthetic-input-tokens-stddev 0 "${common[@]}" --artifact-dir "$OUT/rankings"
fi
