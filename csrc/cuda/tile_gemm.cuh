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
#include "cuda/vec.cuh"

namespace sentfuse {
namespace gemm {

constexpr int kNormWarps = 8;

using sentfuse::cosine_from_dot;

// The fp32 sum of squares of one row, over a warp (every lane gets it): VEC-wide loads.
template <typename scalar_t, int VEC>
__device__ __forceinline__ float warp_row_sum_sq(const scalar_t* __restrict__ row, int64_t dim, int lane) {
  float sum = 0.f;
  for (int64_t d = static_cast<int64_t>(lane) * VEC; d < dim; d += 32 * VEC) {
    float v[VEC];
    load_vec<scalar_t, VEC>(row + d, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum = fmaf(v[k], v[k], sum);
  }
  return warp_sum(sum);
}

// One warp per row: fp32 L2 norm of the stored values.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kNormWarps * 32)
    row_norms_kernel(const scalar_t* __restrict__ x,  // [rows, dim]
                     int64_t rows, int64_t dim, float* __restrict__ out) {  // [rows]
  const int64_t row = blockIdx.x * static_cast<int64_t>(kNormWarps) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const float norm = norm_from_sum_sq(warp_row_sum_sq<scalar_t, VEC>(x + row * dim, dim, lane));
  if (lane == 0) out[row] = norm;
}

// Calls fn(scalar_t, VEC) for x [rows, dim] contiguous: the widest loads its rows allow.
template <typename Fn>
void dispatch_rows(const at::Tensor& x, Fn&& fn) {
  SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "sentfuse rows", [&] {
    const int vec = pick_vec_width<scalar_t>(x.const_data_ptr(), {x.size(1)});
    dispatch_vec_width<scalar_t>(vec, [&](auto vec_c) { fn(scalar_t{}, vec_c); });
  });
}

// x [rows, dim] contiguous -> [rows] fp32 norms.
inline at::Tensor row_norms(const at::Tensor& x) {
  auto out = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.size(0) == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto blocks = static_cast<unsigned>((x.size(0) + kNormWarps - 1) / kNormWarps);
  dispatch_rows(x, [&](auto type_c, auto vec_c) {
    using scalar_t = decltype(type_c);
    row_norms_kernel<scalar_t, decltype(vec_c)::value><<<blocks, kNormWarps * 32, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x.size(0), x.size(1), out.mutable_data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// fp16 copies of the unit rows x / |x| (zero rows stay zero), the 16-bit scans' operands under metric
// "cosine" and for fp32 data: the dot product of two copies is the score itself (no per-element norms
// in the select pass), nothing overflows whatever the norms, and fp16 is 8x finer than bf16. Each value
// is converted to fp32 exactly and divided in fp32, so the rounding is the same for every input dtype.
// One warp per row; with compute_norms the warp first computes the row's norm (as row_norms_kernel
// does) and stores it, so the row is read from memory once and then again from cache.
template <typename in_t, int VEC>
__global__ void __launch_bounds__(kNormWarps * 32)
    unit_rows_kernel(const in_t* __restrict__ x,  // [rows, dim]
                     int64_t rows, int64_t dim, float* __restrict__ norms,  // [rows], read or written
                     bool compute_norms, at::Half* __restrict__ out) {  // [rows, dim]
  const int64_t row = blockIdx.x * static_cast<int64_t>(kNormWarps) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const in_t* in_row = x + row * dim;
  float norm;
  if (compute_norms) {
    norm = norm_from_sum_sq(warp_row_sum_sq<in_t, VEC>(in_row, dim, lane));
    if (lane == 0) norms[row] = norm;
  } else {
    norm = norms[row];
  }
  at::Half* out_row = out + row * dim;
  for (int64_t d = static_cast<int64_t>(lane) * VEC; d < dim; d += 32 * VEC) {
    float v[VEC];
    load_vec<in_t, VEC>(in_row + d, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = norm == 0.f ? 0.f : v[k] / norm;  // a NaN norm stays NaN
    store_vec<at::Half, VEC>(out_row + d, v);
  }
}

// x [rows, dim] contiguous (any float dtype) -> fp16 unit rows [rows, dim]. norms [rows] fp32 holds the
// rows' norms, or receives them when compute_norms.
inline at::Tensor unit_rows(const at::Tensor& x, const at::Tensor& norms, bool compute_norms = false) {
  auto out = at::empty(x.sizes(), x.options().dtype(at::kHalf));
  if (x.size(0) == 0) return out;
  const auto blocks = static_cast<unsigned>((x.size(0) + kNormWarps - 1) / kNormWarps);
  // Only written when compute_norms.
  float* norms_ptr = compute_norms ? norms.mutable_data_ptr<float>() : const_cast<float*>(norms.const_data_ptr<float>());
  const auto stream = at::cuda::getCurrentCUDAStream();
  dispatch_rows(x, [&](auto type_c, auto vec_c) {
    using scalar_t = decltype(type_c);
    unit_rows_kernel<scalar_t, decltype(vec_c)::value><<<blocks, kNormWarps * 32, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x.size(0), x.size(1), norms_ptr, compute_norms,
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
