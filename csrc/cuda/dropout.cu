// CUDA kernel of dropout: one thread per element (grid-stride), the mask from common/dropout_hash.h.
#include <algorithm>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/dropout_hash.h"
#include "cuda/dropout.h"

namespace sentfuse {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename in_t, typename out_t>
__global__ void dropout_kernel(const in_t* __restrict__ x, const out_t* __restrict__ residual, out_t* __restrict__ out,
                               int64_t numel, uint64_t seed, uint64_t threshold, float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const bool keep = dropout_bits(seed, static_cast<uint64_t>(i)) >= threshold;
    // __fmul_rn: never contracted with the residual add into a fused multiply-add (reference.dropout rounds twice)
    float value = keep ? __fmul_rn(static_cast<float>(x[i]), scale) : 0.0f;
    if (residual != nullptr) value += static_cast<float>(residual[i]);
    out[i] = static_cast<out_t>(value);
  }
}

}  // namespace

template <typename in_t, typename out_t>
cudaError_t launch_dropout(const in_t* x, const out_t* residual, out_t* out, int64_t numel, uint64_t seed,
                           uint64_t threshold, float scale, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>((numel + kThreads - 1) / kThreads, kMaxBlocks);
  dropout_kernel<in_t, out_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, residual, out, numel, seed,
                                                                                      threshold, scale);
  return cudaGetLastError();
}

#define SENTFUSE_INSTANTIATE_DROPOUT(IN, OUT)                                                              \
  template cudaError_t launch_dropout<IN, OUT>(const IN*, const OUT*, OUT*, int64_t, uint64_t, uint64_t, float, \
                                               cudaStream_t);
#define SENTFUSE_INSTANTIATE_DROPOUT_OUT(OUT)        \
  SENTFUSE_INSTANTIATE_DROPOUT(float, OUT)           \
  SENTFUSE_INSTANTIATE_DROPOUT(c10::Half, OUT)       \
  SENTFUSE_INSTANTIATE_DROPOUT(c10::BFloat16, OUT)
SENTFUSE_INSTANTIATE_DROPOUT_OUT(float)
SENTFUSE_INSTANTIATE_DROPOUT_OUT(c10::Half)
SENTFUSE_INSTANTIATE_DROPOUT_OUT(c10::BFloat16)

}  // namespace sentfuse
