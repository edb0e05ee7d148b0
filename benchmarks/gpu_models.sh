#!/usr/bin/env bash
# The second GPU script (<= 5 minutes), run right after benchmarks/gpu_check.sh on the same warm machine (it
# reuses that build): profile encode's host side, then measure the model types added since the last device
# run — cosine_topk's fused scan, cross-encoder reranking, MaxSim late interaction, the training kernels. Each step has its own limit;
# each writes $OUT/<step>.json; the summary is printed last (same format as gpu_check.sh).
#
#   OUT=/tmp/out benchmarks/gpu_models.sh [STEP ...]   # no STEP: all of them
set -uo pipefail
cd "$(dirname "$0")/.."

LOG_NAME=models_log.txt SUMMARY_NAME=models_summary.txt STEP_ARGS="$*"
DEFAULT_STEPS="import profile profile_topk topk_tiles topk_fused rerank maxsim train train_speed"
source benchmarks/gpu_steps.sh

# A machine that went back between the two scripts starts bare: build first (gpu_check's own log and summary).
if ! "$PYTHON" -c 'from sentfuse import _ops; assert _ops.WITH_CUDA' >/dev/null 2>&1; then
  bash benchmarks/gpu_check.sh build
fi
step import 20 "$PYTHON" -c 'from sentfuse import _ops; assert _ops.WITH_CUDA, "run benchmarks/gpu_check.sh build first"'
# Host side of encode: the device-busy share (goal >= 70%) and the ops that hold the host.
step profile 50 bash -c "cd benchmarks && $PYTHON profile_encode.py --device cuda --dtype bf16 --json $OUT/profile_encode.json"
# Where cosine_topk's time goes on the cases furthest from their goals (1 query x 1M at ~1 ms, k = 4096).
# (Its tables stay in the log: $OUT holds at most 8 files.)
step profile_topk 45 bash -c "cd benchmarks && $PYTHON profile_topk.py --device cuda"
# The tiled scan against its tile size (the selects of 64 L2-sized tiles took ~5 of 6.75 ms in the 2026-12-04 run);
# its table stays in the log.
step topk_tiles 45 "$PYTHON" benchmarks/sweep_topk_tiles.py
# cosine_topk's fused scan (opt-in, SENTFUSE_CUDA_TOPK=fused) on gpu_check's topk shapes, against its tiled
# scan there (goals: 1,000 x 1M fp16 <= 2 ms, fp32 exact <= 3 ms, 10,000 x 1M >= 2x torch.topk).
step topk_fused 45 env SENTFUSE_CUDA_TOPK=fused "$PYTHON" benchmarks/bench_topk.py --device cuda --corpus 1000000 \
  --queries 1000 10000 --k 10 100 --dtypes fp16 fp32 --skip st faiss --json "$OUT/bench_topk_fused.json"
# Retrieve + rerank: sentfuse CrossEncoder fp32 / bf16 vs sentence-transformers fp32 and fp16 rank (goal >= 5x fp16).
step rerank 60 "$PYTHON" benchmarks/bench_rerank.py --device cuda --json "$OUT/bench_rerank.json"
# MaxSim top-10, 100 queries x 10,000 packed documents, vs sentence-transformers' maxsim + torch.topk (goal >= 5x).
step maxsim 40 "$PYTHON" benchmarks/bench_multivector.py --device cuda --json "$OUT/bench_multivector.json"
# The training kernels: fused contrastive loss and pooling backward against their references.
step train 30 "$PYTHON" benchmarks/bench_contrastive_loss.py --device cuda --json "$OUT/bench_contrastive_loss.json"
# Fine-tuning on the GPU (the training issue: >= 2x sentence-transformers' bf16 samples/s), CoSENT on STS-B, a
# random-weight model of all-MiniLM-L6-v2's shapes. Both trainers need `datasets`, which this machine lacks: run
# benchmarks/gpu_wheels.sh before the device run and carry gpu-wheels/.
if [ -d gpu-wheels ] && ls gpu-wheels/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site gpu-wheels/*.whl &&
    export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
step train_speed 75 "$PYTHON" benchmarks/bench_train.py --device cuda --model random --dtypes bf16 --max-steps 60 \
  --test-rows 200 --json "$OUT/bench_train.json"

finish
