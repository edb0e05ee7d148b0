// The fused scans of threshold_pairs (cuda/pairs.cu) and cosine_topk (cuda/topk_fused.cu): a tensor-core
// GEMM whose epilogue filters in registers (host side: cuda/pair_scan.cuh).
//
// Each 256-thread block multiplies a 128-row block of a with a 128-row block of b (16-bit operands staged
// through shared memory, WMMA 16x16x16 with fp32 accumulators, 64 x 32 per warp) and never stores the
// tile: each warp spills one 16 x 16 accumulator at a time to its own scratch, and the pairs whose score
// may reach the threshold (score + bound >= threshold, the bound from select::rescore_bound) are appended
// with one atomic per warp. The host rescores those candidates in fp32 and keeps the ones that qualify,
// so the answer is exact while the work is one GEMM of the pairs asked for (the upper triangle for a
// against itself) and the memory follows the candidates.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "common/metric.h"
#include "cuda/reduce.cuh"
#include "cuda/tile_gemm.cuh"

namespace sentfuse::pair_gemm {

constexpr int kBlockRows = 128;
constexpr int kBlockCols = 128;
constexpr int kBlockK = 32;
constexpr int kThreads = 256;
constexpr int kWarpRows = 64;  // each of the 8 warps: 64 rows x 32 columns, 4 x 2 fragments
constexpr int kWarpCols = 32;
constexpr int kFrag = 16;
// Shared-memory rows are padded by 16 bytes against bank conflicts; WMMA needs a multiple of 8 elements.
constexpr int kLd = kBlockK + 8;

// torch's 16-bit storage types as the WMMA operand types of the same bits.
template <typename scalar_t>
struct Operand;
template <>
struct Operand<at::Half> {
  using type = __half;
};
template <>
struct Operand<at::BFloat16> {
  using type = __nv_bfloat16;
};

enum class PairScore : uint8_t {
  kDot,      // the dot product (metric "dot"; or unit-row copies under metric "cosine")
  kCosine,   // cosine_from_dot with the rows' norms
  kUnitDot,  // unit-row copies under metric "dot": scaled back by |a_i||b_j|
};

// What makes an accumulator a candidate pair.
struct PairFilter {
  const float* a_norms;  // [N] fp32 norms of the original rows
  const float* b_norms;  // [M]
  int64_t num_cols;      // M: a pair's key is row * M + col
  float threshold;
  const float* row_thresholds;  // [N] a threshold per row of a (cosine_topk's fused scan), or nullptr: threshold
  float relative_bound;  // times |a_i||b_j| under metric "dot"; cosine units otherwise
  PairScore kind;
  Metric metric;
  bool upper_only;  // a against itself: keep col > row only
  int* nonfinite;   // set to 1 when a dot product is NaN or inf
};

__device__ __forceinline__ bool is_candidate(const PairFilter& f, float dot, int64_t i, int64_t j) {
  if (!isfinite(dot)) {
    *f.nonfinite = 1;
    return false;
  }
  const float threshold = f.row_thresholds == nullptr ? f.threshold : f.row_thresholds[i];
  if (f.kind == PairScore::kDot && f.metric == Metric::Cosine) return dot + f.relative_bound >= threshold;
  const float na = f.a_norms[i], nb = f.b_norms[j];
  float score = dot;
  if (f.kind == PairScore::kCosine) score = cosine_from_dot(dot, na, nb);
  if (f.kind == PairScore::kUnitDot) score = dot * na * nb;
  const float bound = f.metric == Metric::Dot ? f.relative_bound * na * nb : f.relative_bound;
  return score + bound >= threshold;
}

// Stages rows [first, first + 128) x features [k0, k0 + 32) of x [rows, dim] into tile [128, kLd], zero
// outside x. kVector: dim is a multiple of 8 and x 16-byte aligned, so each thread moves 16-byte words.
template <bool kVector, typename T>
__device__ __forceinline__ void stage(const T* __restrict__ x, int64_t rows, int64_t dim, int64_t first, int64_t k0,
                                      T* tile) {
  constexpr int kWords = kBlockRows * kBlockK / 8;  // 16-byte words per tile
  for (int w = threadIdx.x; w < kWords; w += kThreads) {
    const int r = w / (kBlockK / 8), c = (w % (kBlockK / 8)) * 8;
    const int64_t row = first + r, col = k0 + c;
    T* dst = tile + r * kLd + c;
    if (kVector && row < rows && col + 8 <= dim) {
      *reinterpret_cast<uint4*>(dst) = __ldg(reinterpret_cast<const uint4*>(x + row * dim + col));
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        dst[e] = row < rows && col + e < dim ? x[row * dim + col + e] : T(0.f);
      }
    }
  }
}

// grid (column blocks, row blocks). Block (bx, by) scores rows row_begin + 128 by of a against rows
// col_begin + 128 bx of b, rows below row_end only; candidate keys go to keys[*count...] while they fit
// in capacity (*count keeps counting, so the caller can size a retry).
template <bool kVector, typename T>
__global__ void __launch_bounds__(kThreads)
    pair_filter_kernel(const T* __restrict__ a,  // [N, dim]
                       const T* __restrict__ b,  // [M, dim]
                       int64_t num_rows, int64_t dim, int64_t row_begin, int64_t row_end, int64_t col_begin,
                       PairFilter f, int64_t* __restrict__ keys, int64_t capacity,  // [capacity]
                       unsigned long long* __restrict__ count) {
  using namespace nvcuda;
  const int64_t i0 = row_begin + static_cast<int64_t>(blockIdx.y) * kBlockRows;
  const int64_t j0 = col_begin + static_cast<int64_t>(blockIdx.x) * kBlockCols;
  // Against itself, a block wholly on or below the diagonal holds no pair col > row.
  if (i0 >= row_end || (f.upper_only && j0 + kBlockCols - 1 <= i0)) return;

  __shared__ __align__(128) T a_tile[kBlockRows * kLd];
  __shared__ __align__(128) T b_tile[kBlockCols * kLd];
  __shared__ __align__(128) float scratch[kThreads / 32][kFrag * kFrag];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_row = (warp / (kBlockCols / kWarpCols)) * kWarpRows;
  const int warp_col = (warp % (kBlockCols / kWarpCols)) * kWarpCols;

  wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> acc[kWarpRows / kFrag][kWarpCols / kFrag];
#pragma unroll
  for (int x = 0; x < kWarpRows / kFrag; ++x)
#pragma unroll
    for (int y = 0; y < kWarpCols / kFrag; ++y) wmma::fill_fragment(acc[x][y], 0.f);

  for (int64_t k0 = 0; k0 < dim; k0 += kBlockK) {
    stage<kVector>(a, num_rows, dim, i0, k0, a_tile);
    stage<kVector>(b, f.num_cols, dim, j0, k0, b_tile);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBlockK; kk += kFrag) {
      wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, T, wmma::row_major> fa[kWarpRows / kFrag];
      wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, T, wmma::col_major> fb[kWarpCols / kFrag];
#pragma unroll
      for (int x = 0; x < kWarpRows / kFrag; ++x)
        wmma::load_matrix_sync(fa[x], a_tile + (warp_row + x * kFrag) * kLd + kk, kLd);
#pragma unroll
      for (int y = 0; y < kWarpCols / kFrag; ++y)
        wmma::load_matrix_sync(fb[y], b_tile + (warp_col + y * kFrag) * kLd + kk, kLd);
#pragma unroll
      for (int x = 0; x < kWarpRows / kFrag; ++x)
#pragma unroll
        for (int y = 0; y < kWarpCols / kFrag; ++y) wmma::mma_sync(acc[x][y], fa[x], fb[y], acc[x][y]);
    }
    __syncthreads();  // the tiles are restaged next round
  }

  float* mine = scratch[warp];
#pragma unroll
  for (int x = 0; x < kWarpRows / kFrag; ++x) {
#pragma unroll
    for (int y = 0; y < kWarpCols / kFrag; ++y) {
      wmma::store_matrix_sync(mine, acc[x][y], kFrag, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int t = 0; t < kFrag * kFrag / 32; ++t) {
        const int e = t * 32 + lane;
        const int64_t i = i0 + warp_row + x * kFrag + e / kFrag;
        const int64_t j = j0 + warp_col + y * kFrag + e % kFrag;
        const bool keep = i < row_end && j < f.num_cols && (!f.upper_only || j > i) && is_candidate(f, mine[e], i, j);
        const unsigned ballot = __ballot_sync(kFullWarp, keep);
        if (ballot == 0) continue;
        unsigned long long base = 0;
        if (lane == 0) base = atomicAdd(count, static_cast<unsigned long long>(__popc(ballot)));
        base = __shfl_sync(kFullWarp, base, 0);
        const unsigned long long at = base + __popc(ballot & ((1u << lane) - 1u));
        if (keep && at < static_cast<unsigned long long>(capacity)) keys[at] = i * f.num_cols + j;
      }
      __syncwarp();  // scratch is rewritten by the next fragment
    }
  }
}

// One warp per candidate key: its fp32 score as the tiled path computes it (dot, or cosine_from_dot with
// the fp32 row norms); NaN or inf sets *nonfinite.
template <typename scalar_t>
__global__ void __launch_bounds__(256)
    rescore_pairs_kernel(const scalar_t* __restrict__ a,  // [N, dim]
                         const scalar_t* __restrict__ b,  // [M, dim]
                         int64_t dim, const int64_t* __restrict__ keys, int64_t count, int64_t num_cols,
                         const float* __restrict__ a_norms, const float* __restrict__ b_norms, Metric metric,
                         int* nonfinite, float* __restrict__ scores) {  // [count]
  const int64_t p = blockIdx.x * static_cast<int64_t>(8) + threadIdx.x / 32;
  if (p >= count) return;
  const int lane = threadIdx.x % 32;
  const int64_t i = keys[p] / num_cols, j = keys[p] % num_cols;
  const scalar_t* u = a + i * dim;
  const scalar_t* v = b + j * dim;
  float dot = 0.f;
  for (int64_t d = lane; d < dim; d += 32) dot = fmaf(static_cast<float>(u[d]), static_cast<float>(v[d]), dot);
  dot = warp_sum(dot);
  if (lane != 0) return;
  if (!isfinite(dot)) *nonfinite = 1;
  scores[p] = metric == Metric::Dot ? dot : cosine_from_dot(dot, a_norms[i], b_norms[j]);
}

}  // namespace sentfuse::pair_gemm
