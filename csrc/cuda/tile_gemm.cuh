// Building blocks for ops that score tiles of a GEMM: fp32 row norms, the fp32-output tile GEMM and the
// scratch budget, shared by cuda/topk.cu and cuda/pairs.cu (the cosine epilogue lives in cuda/reduce.cuh).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "common/dispatch.h"
#include "cuda/reduce.cuh"

namespace sentfuse {
namespace gemm {

constexpr int kNormWarps = 8;

using sentfuse::cosine_from_dot;

// One warp per row: fp32 L2 norm of the stored values.
template <typename scalar_t>
__global__ void __launch_bounds__(kNormWarps * 32)
    row_norms_kernel(const scalar_t* __restrict__ x,  // [rows, dim]
                     int64_t rows, int64_t dim, float* __restrict__ out) {  // [rows]
  const int64_t row = blockIdx.x * static_cast<int64_t>(kNormWarps) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const scalar_t* p = x + row * dim;
  float sum = 0.f;
  for (int64_t d = lane; d < dim; d += 32) {
    const float v = static_cast<float>(p[d]);
    sum = fmaf(v, v, sum);
  }
  sum = warp_sum(sum);
  if (lane == 0) out[row] = norm_from_sum_sq(sum);
}

// x [rows, dim] contiguous -> [rows] fp32 norms.
inline at::Tensor row_norms(const at::Tensor& x) {
  auto out = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.size(0) == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto blocks = static_cast<unsigned>((x.size(0) + kNormWarps - 1) / kNormWarps);
  SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "row_norms", [&] {
    row_norms_kernel<scalar_t><<<blocks, kNormWarps * 32, 0, stream>>>(x.const_data_ptr<scalar_t>(), x.size(0),
                                                                       x.size(1), out.mutable_data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// dots [rows, cols] fp32 = a [rows, D] . b [cols, D]^T with fp32 accumulation; fp32 inputs never take
// TF32, 16-bit inputs run on tensor cores and write fp32.
inline void tile_dots(const at::Tensor& a, const at::Tensor& b, at::Tensor& dots) {
  if (a.scalar_type() == at::kFloat) {
    at::NoTF32Guard exact_fp32;
    at::mm_out(dots, a, b.t());
  } else {
    at::mm_out(dots, a, b.t(), at::kFloat);
  }
}

// Scratch budget for one call: a quarter of free device memory, between 32 MiB and 512 MiB.
inline int64_t workspace_bytes() {
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return std::clamp<int64_t>(static_cast<int64_t>(free_bytes / 4), int64_t{32} << 20, int64_t{512} << 20);
}

}  // namespace gemm
}  // namespace sentfuse
