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

// fp16 copies of the unit rows x / |x| (zero rows stay zero), the 16-bit scans' operands under metric
// "cosine" and for fp32 data: the dot product of two copies is the score itself (no per-element norms
// in the select pass), nothing overflows whatever the norms, and fp16 is 8x finer than bf16. Each value
// is converted to fp32 exactly and scaled in fp32, so the rounding is the same for every input dtype.
// (A template, so that every .cu may include it.)
template <typename in_t>
__global__ void unit_rows_kernel(const in_t* __restrict__ x,  // [rows, dim]
                                 const float* __restrict__ norms, int64_t rows, int64_t dim,  // [rows]
                                 at::Half* __restrict__ out) {  // [rows, dim]
  const int64_t total = rows * dim;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float norm = norms[e / dim];
    // A NaN norm stays NaN, so the scan sees the non-finite row.
    out[e] = static_cast<at::Half>(norm == 0.f ? 0.f : static_cast<float>(x[e]) / norm);
  }
}

// x [rows, dim] contiguous (any float dtype), norms [rows] fp32 -> fp16 [rows, dim].
inline at::Tensor unit_rows(const at::Tensor& x, const at::Tensor& norms) {
  auto out = at::empty(x.sizes(), x.options().dtype(at::kHalf));
  const int64_t total = x.numel();
  if (total == 0) return out;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65535));
  SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "unit_rows", [&] {
    unit_rows_kernel<scalar_t><<<blocks, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), norms.const_data_ptr<float>(), x.size(0), x.size(1),
        out.mutable_data_ptr<at::Half>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// 16-bit GEMMs accumulate in fp32 with no reduced-precision split-K reduction: the rescoring bounds
// (cuda/topk.cu) assume both. The process-wide cuBLAS settings are restored on exit.
class ExactAccumulationGuard {
 public:
  ExactAccumulationGuard()
      : fp16_(ctx().allowFP16ReductionCuBLAS()),
        bf16_(ctx().allowBF16ReductionCuBLAS()),
        fp16_accumulation_(ctx().allowFP16AccumulationCuBLAS()) {
    ctx().setAllowFP16ReductionCuBLAS(false);
    ctx().setAllowBF16ReductionCuBLAS(false);
    ctx().setAllowFP16AccumulationCuBLAS(false);
  }
  ~ExactAccumulationGuard() {
    ctx().setAllowFP16ReductionCuBLAS(reduced(fp16_), split_k(fp16_));
    ctx().setAllowBF16ReductionCuBLAS(reduced(bf16_), split_k(bf16_));
    ctx().setAllowFP16AccumulationCuBLAS(fp16_accumulation_);
  }
  ExactAccumulationGuard(const ExactAccumulationGuard&) = delete;
  ExactAccumulationGuard& operator=(const ExactAccumulationGuard&) = delete;

 private:
  static at::Context& ctx() { return at::globalContext(); }
  static bool reduced(at::CuBLASReductionOption o) {
    return o == at::CuBLASReductionOption::AllowReducedPrecisionWithSplitK;
  }
  static bool split_k(at::CuBLASReductionOption o) {
    return o != at::CuBLASReductionOption::DisallowReducedPrecisionDisallowSplitK;
  }
  at::CuBLASReductionOption fp16_, bf16_;
  bool fp16_accumulation_;
};

// dots [rows, cols] = a [rows, D] . b [cols, D]^T with fp32 accumulation, stored in dots' dtype (fp32, or
// a's 16-bit type); fp32 inputs never take TF32, 16-bit inputs run on tensor cores.
inline void tile_dots(const at::Tensor& a, const at::Tensor& b, at::Tensor& dots) {
  if (a.scalar_type() == at::kFloat) {
    at::NoTF32Guard exact_fp32;
    at::mm_out(dots, a, b.t());
  } else if (dots.scalar_type() == at::kFloat) {
    ExactAccumulationGuard exact_sums;
    at::mm_out(dots, a, b.t(), at::kFloat);
  } else {
    ExactAccumulationGuard exact_sums;
    at::mm_out(dots, a, b.t());
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
