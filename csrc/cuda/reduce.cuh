// Device reductions and the cosine epilogue shared by every CUDA kernel: each written once.
#pragma once

#include <cmath>
#include <limits>

namespace sentfuse {

constexpr unsigned kFullWarp = 0xffffffffu;

// Sum over the 32 lanes of a warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullWarp, v, offset);
  return v;
}

// Block-wide reduction; every thread gets the result. blockDim.x must be a multiple of 32. `slots` holds
// one entry per warp and is free again when this returns. shuffle_fn(v, lane_mask) is __shfl_xor_sync for T.
template <typename T, typename Combine, typename Shuffle>
__device__ T block_all_reduce(T value, T* slots, Combine combine_fn, Shuffle shuffle_fn) {
  for (int offset = 16; offset > 0; offset >>= 1) value = combine_fn(value, shuffle_fn(value, offset));
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) slots[warp] = value;
  __syncthreads();
  T total = slots[0];
  for (int w = 1; w < blockDim.x / 32; ++w) total = combine_fn(total, slots[w]);
  __syncthreads();
  return total;
}

template <typename T>
__device__ __forceinline__ T block_sum(T value, T* slots) {
  return block_all_reduce(
      value, slots, [](T a, T b) { return a + b; }, [](T v, int m) { return __shfl_xor_sync(kFullWarp, v, m); });
}

// The cosine of two rows from their fp32 dot product and L2 norms, as every op reports it (and as the CPU
// kernels and reference.py compute it: one correctly rounded division of dot by |a| |b|):
// torch.nan_to_num(dot / (|a| |b|), nan=0), so zero vectors score 0 and overflow saturates.
// Callers test the dot product for NaN / inf first, so a NaN here only comes from 0 / 0.
__device__ __forceinline__ float cosine_from_dot(float dot, float a_norm, float b_norm) {
  const float s = __fdiv_rn(dot, __fmul_rn(a_norm, b_norm));
  if (isnan(s)) return 0.f;
  if (isinf(s)) return s > 0.f ? std::numeric_limits<float>::max() : -std::numeric_limits<float>::max();
  return s;
}

// The L2 norm from a sum of squares, correctly rounded like the CPU's std::sqrt.
__device__ __forceinline__ float norm_from_sum_sq(float sum_sq) { return __fsqrt_rn(sum_sq); }

}  // namespace sentfuse
