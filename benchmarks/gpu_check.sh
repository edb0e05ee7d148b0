#!/usr/bin/env bash
# One-shot check on a fresh GPU machine with no network: build sentfuse with its CUDA kernels into the
# current Python environment (torch, nvcc, cmake, ninja, pybind11, scikit-build-core already there), run
# the CUDA tests and the kernel benchmarks. Every log goes to $OUT (default ./gpu-out); each step's
# exit status goes to $OUT/summary.txt. A failing step does not stop the later ones. About 8 minutes at most.
#
#   OUT=/tmp/out benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu-out}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
overall=0

# step NAME TIMEOUT_S CMD...: CMD's output goes to the terminal and $OUT/NAME.log; its status to summary.txt.
step() {
  local name=$1 limit=$2 rc=0 start=$SECONDS
  shift 2
  echo "== $name: $*" | tee "$OUT/$name.log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log" || rc=$?
  echo "$name rc=$rc time=$((SECONDS - start))s" | tee -a "$SUMMARY"
  if [ "$rc" -ne 0 ]; then overall=1; fi
  return 0
}

# The toolkit's own bin folder first, or torch's CMake does not find CUDA.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
export PATH=$CUDA_HOME/bin:$PATH CUDACXX=$CUDA_HOME/bin/nvcc

# Only the GPU in this machine, e.g. 9.0 on an H100.
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PYTHON" -c \
  'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export TORCH_CUDA_ARCH_LIST

# A bare toolkit may lack the library headers (cusparse.h, ...) and libnvrtc that torch's CMake wants;
# the nvidia-* wheels torch was installed with have them.
build_args=(-C cmake.define.SENTFUSE_CUDA=ON)
site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
  header=$(find "$site/nvidia" -name cusparse.h -print -quit 2>/dev/null || true)
  if [ -n "$header" ]; then
    inc=$(dirname "$header")
    build_args+=(-C "cmake.define.CMAKE_CXX_FLAGS=-idirafter $inc"
      -C "cmake.define.CMAKE_CUDA_FLAGS=-Xcompiler=-idirafter,$inc")
  fi
fi
if ! ls "$CUDA_HOME"/lib64/libnvrtc.so* >/dev/null 2>&1; then
  nvrtc=$(find "$site/nvidia" -name 'libnvrtc.so.*' ! -name '*builtins*' ! -name '*alt*' -print -quit 2>/dev/null || true)
  if [ -n "$nvrtc" ]; then build_args+=(-C "cmake.define.CUDA_nvrtc_LIBRARY=$nvrtc"); fi
fi

step device 60 bash -c "nvidia-smi; nvcc --version; $PYTHON -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'"
# --no-index: nothing may come from the network; the environment already has every dependency.
step build 270 "$PYTHON" -m pip install -v --no-index --no-build-isolation --no-deps "${build_args[@]}" .
step import 60 "$PYTHON" -c 'from sentfuse import _ops; assert _ops.WITH_CUDA, "built without CUDA kernels"; print("WITH_CUDA", _ops.WITH_CUDA)'
step tests 300 "$PYTHON" -m pytest -q -rs tests/test_pooling_cuda.py tests/test_topk_cuda.py tests/test_pairs_cuda.py tests/test_pair_scores.py \
  tests/test_pooling.py
if command -v compute-sanitizer >/dev/null 2>&1; then
  # Out-of-bounds reads would hide in passing tests; memcheck catches them on the odd layouts.
  step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$PYTHON" -m pytest -q -x \
    tests/test_pooling_cuda.py -k "varlen or non_contiguous or empty or length_one or large_hidden"
fi
step bench 120 "$PYTHON" benchmarks/bench_pooling.py --device cuda --json "$OUT/bench_pooling_cuda.json"
step bench_topk 150 "$PYTHON" benchmarks/bench_topk.py --device cuda --corpus 1000000 --bf16-rescore \
  --json "$OUT/bench_topk_cuda.json"
# Encoder end to end vs sentence-transformers (random weights of MiniLM's shapes stand in if the bundled
# model is not installed here). The SQuAD texts are not in the repo: point SQUAD_DIR at a copy carried
# to this machine (e.g. an ignored gpu-data/ folder holding questions.txt and paragraphs.jsonl).
SQUAD_DIR=${SQUAD_DIR:-../shared/data/corpus/squad-v1.1}
step bench_encode 240 "$PYTHON" benchmarks/bench_encode.py --device cuda --dtypes fp32,bf16,fp16 \
  --data "$SQUAD_DIR" --json "$OUT/bench_encode_cuda.json"

echo "overall rc=$overall" | tee -a "$SUMMARY"
exit "$overall"
