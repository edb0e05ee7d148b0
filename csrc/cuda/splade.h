// The interface between cuda/splade.cpp (host entry points: C++ compiler) and cuda/splade.cu (fold kernel
// and launcher: nvcc). The launcher takes already-checked raw parameters and never throws.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace sentfuse {

// Folds one vocabulary tile of logits [T, nv] fp32 (rows: packed tokens; sequence b is rows
// offsets[b]:offsets[b + 1], offsets [B + 1] on the device) into out[b, 0:nv] (rows out_stride apart).
// sum: out += log1p^log1p_count(relu(logit + bias[v])) over the sequence's tokens; else out = max(out, logit)
// (bias and activation are applied after the last tile).
cudaError_t launch_splade_fold(const float* logits, int64_t nv, const int64_t* offsets, int64_t B, const float* bias,
                               bool sum, int log1p_count, float* out, int64_t out_stride, cudaStream_t stream);

}  // namespace sentfuse
