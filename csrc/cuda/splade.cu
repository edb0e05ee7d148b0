// CUDA fold kernel of splade_pool (host side and tiling: cuda/splade.cpp; semantics: reference.py).
//
// One thread per (sequence, vocabulary column): it walks the sequence's tokens down its column, so a warp
// reads 32 consecutive logits of a token row per step (coalesced) and each output is written by one thread,
// without atomics.
#include "cuda/splade.h"

namespace sentfuse {
namespace {

constexpr int kFoldThreads = 256;

// logits [T, nv], offsets [B + 1], bias [nv] (sum only), out [B, out_stride] at the tile's first column.
__global__ void splade_fold_kernel(const float* __restrict__ logits, int64_t nv, const int64_t* __restrict__ offsets,
                                   const float* __restrict__ bias, bool sum, int log1p_count,
                                   float* __restrict__ out, int64_t out_stride) {
  const int64_t b = blockIdx.x;
  const int64_t v = static_cast<int64_t>(blockIdx.y) * kFoldThreads + threadIdx.x;
  if (v >= nv) return;
  const int64_t begin = offsets[b], end = offsets[b + 1];
  float* dst = out + b * out_stride + v;
  float acc = *dst;
  if (sum) {
    const float bv = bias[v];
    for (int64_t t = begin; t < end; ++t) {
      float x = log1pf(fmaxf(logits[t * nv + v] + bv, 0.f));
      if (log1p_count == 2) x = log1pf(x);
      acc += x;
    }
  } else {
    for (int64_t t = begin; t < end; ++t) acc = fmaxf(acc, logits[t * nv + v]);
  }
  *dst = acc;
}

}  // namespace

cudaError_t launch_splade_fold(const float* logits, int64_t nv, const int64_t* offsets, int64_t B, const float* bias,
                               bool sum, int log1p_count, float* out, int64_t out_stride, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>((nv + kFoldThreads - 1) / kFoldThreads));
  splade_fold_kernel<<<grid, kFoldThreads, 0, stream>>>(logits, nv, offsets, bias, sum, log1p_count, out,
                                                         out_stride);
  return cudaGetLastError();
}

}  // namespace sentfuse
