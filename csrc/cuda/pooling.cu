// CUDA kernels and launchers for masked_pool, masked_pool_varlen, l2_normalize and their backward ops
// (semantics: python/sentfuse/reference.py; host entry points: cuda/pooling.cpp).
//
// Pooling is bandwidth-bound: each valid token is read once with 16-byte loads, padding never. A block is a
// grid of `cols` x `groups` logical threads: `cols` split the feature dim into VEC-wide vectors, `groups`
// split the tokens, and shared memory folds the groups together. When the batch has too few rows to fill
// the GPU, each row is also cut into `splits` token ranges, one block each, writing fp32 partials that
// finish_kernel folds, scales and normalizes; otherwise one block per row does everything, keeping the
// pooled row in shared memory until it has the L2 norm.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/bounds.h"
#include "cuda/launch.cuh"
#include "cuda/pooling.h"
#include "cuda/reduce.cuh"
#include "cuda/vec.cuh"

namespace sentfuse {
namespace {

constexpr int kPoolThreads = 512;
constexpr int kFinishThreads = 256;
// A split covers at least this many tokens: shorter ones cost more in partials than they win in parallelism.
constexpr int kMinSplitTokens = 64;
// Resident blocks' worth the split plan aims for: two waves hide the tail of uneven rows.
constexpr int kTargetBlocksPerSm = 2;
// Tokens each thread loads before it accumulates: keeps several 16-byte loads in flight per thread,
// which matters when the batch has fewer rows than the GPU has SMs.
constexpr int kTokenUnroll = 4;

// What a row pools over, agreed by the whole block. Tokens [begin, end) are candidates (those with
// mask == 0 are skipped); `first` anchors weightedmean's weights.
struct RowPlan {
  int begin;
  int end;
  int first;
  int count;
  float denom;
  bool weighted;
};

struct MaskStats {
  int count;
  int lo;
  int hi;
  long long pos_sum;
};

__device__ __forceinline__ MaskStats combine(MaskStats a, MaskStats b) {
  return {a.count + b.count, min(a.lo, b.lo), max(a.hi, b.hi), a.pos_sum + b.pos_sum};
}

__device__ __forceinline__ MaskStats shfl_xor(MaskStats s, int lane_mask) {
  return {__shfl_xor_sync(0xffffffffu, s.count, lane_mask), __shfl_xor_sync(0xffffffffu, s.lo, lane_mask),
          __shfl_xor_sync(0xffffffffu, s.hi, lane_mask), __shfl_xor_sync(0xffffffffu, s.pos_sum, lane_mask)};
}

__device__ __forceinline__ float pool_denominator(PoolMode mode, int count, long long weight_sum) {
  if (mode == PoolMode::Mean) return static_cast<float>(count);
  if (mode == PoolMode::MeanSqrtLen) return sqrtf(static_cast<float>(count));
  if (mode == PoolMode::WeightedMean) return static_cast<float>(weight_sum);
  return 1.f;  // max, cls, lasttoken
}

// Narrows [begin, end) to the single picked token for cls / lasttoken.
__device__ __forceinline__ RowPlan make_plan(PoolMode mode, int lo, int hi, int first, int count,
                                             long long weight_sum) {
  RowPlan plan{lo, hi + 1, first, count, pool_denominator(mode, count, weight_sum), mode == PoolMode::WeightedMean};
  if (mode == PoolMode::Cls) plan.end = lo + 1;
  if (mode == PoolMode::LastToken) plan.begin = hi;
  return plan;
}

// One row of the attention mask as the caller stored it (bool or an integer type: no conversion pass),
// or no mask at all (every token valid).
struct RowMask {
  const unsigned char* data;  // [seq] elements of `bytes` bytes, or nullptr
  int bytes;

  __device__ __forceinline__ bool operator[](int t) const {
    switch (bytes) {
      case 1: return data[t] != 0;
      case 2: return reinterpret_cast<const uint16_t*>(data)[t] != 0;
      case 4: return reinterpret_cast<const uint32_t*>(data)[t] != 0;
      default: return reinterpret_cast<const unsigned long long*>(data)[t] != 0ull;
    }
  }
  __device__ __forceinline__ bool valid(int t) const { return data == nullptr || (*this)[t]; }
};

// Padded rows: scans the mask to find the first present token, then the valid tokens after skip (one
// scan when nothing is skipped: the first valid token is then the lowest one counted).
__device__ RowPlan plan_masked_row(const RowMask& mask,  // [seq]
                                   int seq_len, int skip_tokens, PoolMode mode) {
  __shared__ int first_slots[32];
  __shared__ MaskStats stat_slots[32];
  int first = seq_len;
  int begin = 0;
  if (skip_tokens > 0) {  // uniform over the block
    for (int t = threadIdx.x; t < seq_len; t += blockDim.x) {
      if (mask[t]) {
        first = t;
        break;
      }
    }
    first = block_all_reduce(
        first, first_slots, [](int a, int b) { return min(a, b); },
        [](int v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); });
    // first + skip may exceed seq_len (or overflow int for huge skip); either way nothing is valid.
    begin = static_cast<int>(min(static_cast<long long>(first) + skip_tokens, static_cast<long long>(seq_len)));
  }
  MaskStats local{0, seq_len, -1, 0};
  for (int t = begin + threadIdx.x; t < seq_len; t += blockDim.x) {
    if (mask[t]) local = combine(local, MaskStats{1, t, t, t});
  }
  const MaskStats s = block_all_reduce(
      local, stat_slots, [](MaskStats a, MaskStats b) { return combine(a, b); },
      [](MaskStats v, int m) { return shfl_xor(v, m); });
  if (skip_tokens <= 0) first = s.count > 0 ? s.lo : seq_len;
  // weights are t + 1 - first
  const long long weight_sum = s.pos_sum + static_cast<long long>(s.count) * (1 - first);
  return make_plan(mode, s.lo, s.hi, first, s.count, weight_sum);
}

// Packed rows: every token is valid and the row starts at its first token.
__device__ RowPlan plan_dense_row(int len, int skip_tokens, PoolMode mode) {
  const int begin = static_cast<int>(min(static_cast<long long>(skip_tokens), static_cast<long long>(len)));
  const int count = len - begin;
  // sum of t + 1 over t in [begin, len)
  const long long weight_sum = (static_cast<long long>(len) * (len + 1) - static_cast<long long>(begin) * (begin + 1)) / 2;
  return make_plan(mode, begin, len - 1, 0, count, weight_sum);
}

__device__ __forceinline__ float max_nan(float a, float b) {
  // torch.amax propagates NaN; fmaxf would drop it.
  return (a > b || a != a) ? a : b;
}


// VEC floats to 16-byte-aligned shared memory (8-byte for VEC 2) in as few stores as possible.
template <int VEC>
__device__ __forceinline__ void store_floats(float* dst, const float (&v)[VEC]) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int k = 0; k < VEC; k += 4) {
      *reinterpret_cast<float4*>(dst + k) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
    }
  } else if constexpr (VEC == 2) {
    *reinterpret_cast<float2*>(dst) = make_float2(v[0], v[1]);
  } else {
    dst[0] = v[0];
  }
}

// Folds the tokens [plan.begin, plan.end) of one row (masked ones skipped) over the groups and calls
// emit(f, v) once per feature f with the raw sum (weighted for weightedmean) or max; threads beyond
// cols * groups only join the shared-memory fold. `row` points at token 0, token t at row + t * token_stride.
// Dynamic shared memory: groups * cols * VEC floats, 16-byte aligned.
template <typename scalar_t, int VEC, bool kMax, typename Emit>
__device__ void fold_row(const scalar_t* __restrict__ row,  // [seq, hidden]
                         int64_t token_stride,
                         const RowMask& mask,  // [seq], or no data when every token is valid
                         const RowPlan& plan, int hidden, int cols, int groups, float* fold, Emit emit) {
  const int tid = threadIdx.x;
  const int col_in_chunk = tid % cols;
  const int group = tid / cols;
  const int vec_cols = hidden / VEC;
  for (int chunk = 0; chunk < vec_cols; chunk += cols) {
    const int col = chunk + col_in_chunk;
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = kMax ? -INFINITY : 0.f;

    if (group < groups && col < vec_cols) {
      const scalar_t* col_ptr = row + static_cast<int64_t>(col) * VEC;
      for (int t0 = plan.begin + group; t0 < plan.end; t0 += kTokenUnroll * groups) {
        // The loads in flight stay packed (16-bit data in half the registers of floats): 8-wide bf16 rows
        // otherwise took 72 registers a thread, one 512-thread block per SM (ptxas -v, sm_90).
        VecWord<scalar_t, VEC> raw[kTokenUnroll];
        bool take[kTokenUnroll];
#pragma unroll
        for (int u = 0; u < kTokenUnroll; ++u) {
          const int t = t0 + u * groups;
          take[u] = t < plan.end && mask.valid(t);
          if (take[u]) raw[u] = load_raw<scalar_t, VEC>(col_ptr + t * token_stride);
        }
#pragma unroll
        for (int u = 0; u < kTokenUnroll; ++u) {
          if (!take[u]) continue;
          float x[VEC];
          unpack_vec<scalar_t, VEC>(raw[u], x);
          if constexpr (kMax) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[k] = max_nan(acc[k], x[k]);
          } else {
            const float w = plan.weighted ? static_cast<float>(t0 + u * groups + 1 - plan.first) : 1.f;
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[k] = fmaf(w, x[k], acc[k]);
          }
        }
      }
    }

    __syncthreads();  // the previous chunk's readers of `fold` are done
    if (group < groups) store_floats<VEC>(fold + (group * cols + col_in_chunk) * VEC, acc);
    __syncthreads();
    // Entry f = c * VEC + k of each group's slice is feature (chunk + c) * VEC + k = chunk * VEC + f, so
    // consecutive threads emit consecutive features: coalesced partial and output writes.
    for (int f = tid; f < cols * VEC; f += blockDim.x) {
      if (chunk + f / VEC >= vec_cols) continue;
      float v = fold[f];
      for (int g = 1; g < groups; ++g) {
        const float other = fold[g * cols * VEC + f];
        v = kMax ? max_nan(v, other) : v + other;
      }
      emit(chunk * VEC + f, v);
    }
  }
}

// Token range [begin, end) of split `s` of `splits` equal parts of [plan.begin, plan.end).
__device__ __forceinline__ RowPlan split_plan(RowPlan plan, int s, int splits) {
  const int len = plan.end - plan.begin;
  const int per = (len + splits - 1) / splits;
  plan.begin = min(plan.end, plan.begin + s * per);
  plan.end = min(plan.end, plan.begin + per);
  return plan;
}

// Where row b's tokens start and what it pools, for either layout.
template <typename scalar_t>
__device__ __forceinline__ RowPlan plan_row(const PoolArgs& p, int64_t b, const scalar_t*& row,
                                            RowMask& row_mask) {
  const auto* hidden = static_cast<const scalar_t*>(p.hidden);
  if (p.cu_seqlens == nullptr) {
    row = hidden + b * p.batch_stride;
    row_mask = {static_cast<const unsigned char*>(p.mask) + b * p.seq_len * p.mask_bytes, p.mask_bytes};
    return plan_masked_row(row_mask, p.seq_len, p.skip_tokens, p.mode);
  }
  // Offsets are not validated on the device: clamp so that bad ones read nothing out of range.
  const int64_t start = min(max(p.cu_seqlens[b], int64_t{0}), p.total_tokens);
  const int64_t stop = min(max(p.cu_seqlens[b + 1], int64_t{0}), p.total_tokens);
  row = hidden + start * p.token_stride;
  row_mask = {nullptr, 1};
  return plan_dense_row(static_cast<int>(max(stop - start, int64_t{0})), p.skip_tokens, p.mode);
}

// grid (batch, splits). With one split, block b pools row b into out (scaled, normalized when
// launch.fused_norm). With several, block (b, s) writes the raw fold of its token range to
// workspace [batch, splits, hidden] and finish_kernel completes the row.
template <typename scalar_t, int VEC, bool kMax>
__global__ void pool_kernel(PoolArgs p, PoolLaunch launch, float* __restrict__ workspace) {
  extern __shared__ __align__(16) float smem[];
  __shared__ float sum_slots[32];
  const int64_t b = blockIdx.x;
  const int H = p.hidden_size;
  const scalar_t* row;
  RowMask row_mask;
  const RowPlan plan = plan_row<scalar_t>(p, b, row, row_mask);
  // Every token of [begin, end) is valid (a padded row without holes, the usual case): the fold reads no
  // mask, so each token's load no longer waits for its mask byte.
  if (plan.count == plan.end - plan.begin) row_mask.data = nullptr;
  float* fold = smem;  // [groups, cols, VEC]

  if (launch.splits > 1) {
    float* partial = workspace + (b * launch.splits + blockIdx.y) * H;  // [hidden]
    const RowPlan part = split_plan(plan, blockIdx.y, launch.splits);
    fold_row<scalar_t, VEC, kMax>(row, p.token_stride, row_mask, part, H, launch.cols, launch.groups, fold,
                                  [&](int f, float v) { partial[f] = v; });
    return;
  }
  auto* out_row = static_cast<scalar_t*>(p.out) + b * H;
  if (plan.count <= 0) {
    for (int f = threadIdx.x; f < H; f += blockDim.x) out_row[f] = scalar_t(0.f);
    return;
  }
  float* pooled = smem + launch.cols * launch.groups * VEC;  // [hidden], only with fused_norm
  float sum_sq = 0.f;
  fold_row<scalar_t, VEC, kMax>(row, p.token_stride, row_mask, plan, H, launch.cols, launch.groups, fold,
                                [&](int f, float v) {
                                  if constexpr (!kMax) v = v / plan.denom;
                                  if (launch.fused_norm) {
                                    pooled[f] = v;
                                    sum_sq += v * v;
                                  } else {
                                    out_row[f] = static_cast<scalar_t>(v);
                                  }
                                });
  if (launch.fused_norm) {
    const float norm = fmaxf(sqrtf(block_sum(sum_sq, sum_slots)), kNormEps);
    for (int f = threadIdx.x; f < H; f += blockDim.x) out_row[f] = static_cast<scalar_t>(pooled[f] / norm);
  }
}

// One block per row: folds the splits' partials [splits, hidden], scales, normalizes, writes the row.
template <typename scalar_t, bool kMax>
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(PoolArgs p, int splits, const float* __restrict__ workspace) {  // [batch, splits, hidden]
  __shared__ float sum_slots[32];
  const int64_t b = blockIdx.x;
  const int H = p.hidden_size;
  const scalar_t* row;
  RowMask row_mask;
  const RowPlan plan = plan_row<scalar_t>(p, b, row, row_mask);
  auto* out_row = static_cast<scalar_t*>(p.out) + b * H;
  const float* partials = workspace + b * splits * H;
  auto pooled = [&](int f) {
    float v = partials[f];
    for (int s = 1; s < splits; ++s) v = kMax ? max_nan(v, partials[s * H + f]) : v + partials[s * H + f];
    return kMax ? v : v / plan.denom;
  };
  float scale = 1.f;
  if (plan.count <= 0) {
    scale = 0.f;
  } else if (p.normalize) {
    float sum_sq = 0.f;
    for (int f = threadIdx.x; f < H; f += blockDim.x) {
      const float v = pooled(f);
      sum_sq += v * v;
    }
    scale = 1.f / fmaxf(sqrtf(block_sum(sum_sq, sum_slots)), kNormEps);
  }
  for (int f = threadIdx.x; f < H; f += blockDim.x) {
    out_row[f] = static_cast<scalar_t>(plan.count <= 0 ? 0.f : (p.normalize ? pooled(f) * scale : pooled(f)));
  }
}

// One warp per row: embedding rows are a few KB, so a warp keeps enough loads in flight and needs no
// block-wide synchronization. In-place (x == out) is allowed: each lane rewrites only what it read.
template <typename scalar_t, int VEC>
__global__ void l2_normalize_kernel(const scalar_t* x,  // [rows, >= dim], row stride row_stride
                                    int64_t row_stride, int64_t rows, int dim,
                                    scalar_t* out) {  // [rows, dim]
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kL2RowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x % 32;
  const scalar_t* in_row = x + r * row_stride;
  scalar_t* out_row = out + r * dim;
  float sum_sq = 0.f;
  for (int f = lane * VEC; f < dim; f += 32 * VEC) {
    float v[VEC];
    load_vec<scalar_t, VEC>(in_row + f, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum_sq = fmaf(v[k], v[k], sum_sq);
  }
  const float norm = fmaxf(sqrtf(warp_sum(sum_sq)), kNormEps);
  for (int f = lane * VEC; f < dim; f += 32 * VEC) {
    float v[VEC];
    load_vec<scalar_t, VEC>(in_row + f, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] /= norm;
    store_vec<scalar_t, VEC>(out_row + f, v);
  }
}

// ---- Backward ----------------------------------------------------------------------------------------------
// Two passes. row_grad_kernel (one block per row) turns grad_out's row into d(loss)/d(pooled row) in fp32,
// through the normalization when the forward normalized (recomputing the pooled row), and finds max's argmax
// per feature; token_grad_kernel (blocks over rows x token slices) then writes every token's gradient once,
// zeros included. Threads run along the features, so every global access is coalesced.

// Row b's first token in grad_hidden (contiguous: [batch, seq, hidden] or [total_tokens, hidden]).
template <typename scalar_t>
__device__ __forceinline__ scalar_t* grad_row(const PoolGradArgs& g, int64_t b) {
  const PoolArgs& p = g.pool;
  auto* grad = static_cast<scalar_t*>(g.grad_hidden);
  if (p.cu_seqlens == nullptr) return grad + b * p.seq_len * static_cast<int64_t>(p.hidden_size);
  return grad + min(max(p.cu_seqlens[b], int64_t{0}), p.total_tokens) * p.hidden_size;
}

// Feature f of the pooled row (before scaling by 1 / denom); for max also the first token holding it.
template <typename scalar_t>
__device__ float pooled_feature(const scalar_t* row, int64_t token_stride, const RowMask& mask, const RowPlan& plan,
                                PoolMode mode, int f, int* arg) {
  if (mode == PoolMode::Max) {
    float best = -INFINITY;
    int at = -1;
    for (int t = plan.begin; t < plan.end; ++t) {
      if (!mask.valid(t)) continue;
      const float v = static_cast<float>(row[t * token_stride + f]);
      if (at < 0 || v > best) {
        best = v;
        at = t;
      }
    }
    *arg = at;
    return best;
  }
  float sum = 0.f;
  for (int t = plan.begin; t < plan.end; ++t) {
    if (!mask.valid(t)) continue;
    const float w = plan.weighted ? static_cast<float>(t + 1 - plan.first) : 1.f;
    sum = fmaf(w, static_cast<float>(row[t * token_stride + f]), sum);
  }
  return sum / plan.denom;
}

// dpool [batch, hidden] fp32: d(loss)/d(pooled row); arg [batch, hidden]: max's token per feature.
template <typename scalar_t>
__global__ void __launch_bounds__(kPoolBackwardThreads)
    row_grad_kernel(PoolGradArgs g, float* __restrict__ dpool, int* __restrict__ arg) {
  __shared__ float sum_slots[32];
  const int64_t b = blockIdx.x;
  const PoolArgs& p = g.pool;
  const int H = p.hidden_size;
  const scalar_t* row;
  RowMask row_mask;
  const RowPlan plan = plan_row<scalar_t>(p, b, row, row_mask);
  const auto* grad_out = static_cast<const scalar_t*>(g.grad_out) + b * H;
  float* dp = dpool + b * H;
  int* arg_row = arg != nullptr ? arg + b * H : nullptr;  // max only
  if (plan.count <= 0) return;  // token_grad_kernel writes zeros without reading dpool
  float pp = 0.f, pg = 0.f;
  for (int f = threadIdx.x; f < H; f += blockDim.x) {
    const float gf = static_cast<float>(grad_out[f]);
    dp[f] = gf;
    if (!p.normalize && p.mode != PoolMode::Max) continue;
    const float v = pooled_feature(row, p.token_stride, row_mask, plan, p.mode, f, arg_row + f);
    pp = fmaf(v, v, pp);
    pg = fmaf(v, gf, pg);
    if (p.normalize) dp[f] = v;  // the pooled value until the norm is known
  }
  if (!p.normalize) return;
  // Through y = v / max(|v|, eps), as F.normalize (no gradient through the clamped norm below eps).
  pp = block_sum(pp, sum_slots);
  pg = block_sum(pg, sum_slots);
  const float norm = sqrtf(pp);
  for (int f = threadIdx.x; f < H; f += blockDim.x) {
    const float gf = static_cast<float>(grad_out[f]);
    dp[f] = norm < kNormEps ? gf / kNormEps : (gf - dp[f] * (pg / pp)) / norm;
  }
}

// grid (batch, slices): block (b, s) writes row b's tokens s, s + slices, ... over the row's whole length.
template <typename scalar_t>
__global__ void __launch_bounds__(kPoolBackwardThreads)
    token_grad_kernel(PoolGradArgs g, const float* __restrict__ dpool, const int* __restrict__ arg) {
  const int64_t b = blockIdx.x;
  const PoolArgs& p = g.pool;
  const int H = p.hidden_size;
  const scalar_t* row;
  RowMask row_mask;
  const RowPlan plan = plan_row<scalar_t>(p, b, row, row_mask);
  int length = p.seq_len;
  if (p.cu_seqlens != nullptr) {
    const int64_t start = min(max(p.cu_seqlens[b], int64_t{0}), p.total_tokens);
    length = static_cast<int>(max(min(max(p.cu_seqlens[b + 1], int64_t{0}), p.total_tokens) - start, int64_t{0}));
  }
  scalar_t* grad = grad_row<scalar_t>(g, b);
  const float* dp = dpool + b * H;
  const int* arg_row = arg != nullptr ? arg + b * H : nullptr;  // max only
  for (int t = blockIdx.y; t < length; t += gridDim.y) {
    // Uniform over the block: whether and with which weight token t was pooled (cls / lasttoken: the one
    // token of [begin, end), weight 1).
    const bool pooled = plan.count > 0 && t >= plan.begin && t < plan.end && row_mask.valid(t);
    const float w = (plan.weighted ? static_cast<float>(t + 1 - plan.first) : 1.f) / plan.denom;
    scalar_t* out = grad + static_cast<int64_t>(t) * H;
    for (int f = threadIdx.x; f < H; f += blockDim.x) {
      float v = 0.f;
      if (pooled) v = p.mode == PoolMode::Max ? (arg_row[f] == t ? dp[f] : 0.f) : w * dp[f];
      out[f] = static_cast<scalar_t>(v);
    }
  }
}

// One warp per row, as l2_normalize_kernel: dx = (g - y (y . g)) / |x|, or g / eps below eps.
template <typename scalar_t>
__global__ void l2_normalize_backward_kernel(const scalar_t* __restrict__ x,  // [rows, >= dim], row_stride
                                             int64_t row_stride, int64_t rows, int dim,
                                             const scalar_t* __restrict__ grad_out,  // [rows, dim]
                                             scalar_t* __restrict__ grad_x,          // [rows, grad_stride]
                                             int64_t grad_stride) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kL2RowsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x % 32;
  const scalar_t* in_row = x + r * row_stride;
  const scalar_t* g_row = grad_out + r * dim;
  float pp = 0.f, pg = 0.f;
  for (int f = lane; f < dim; f += 32) {
    const float v = static_cast<float>(in_row[f]);
    pp = fmaf(v, v, pp);
    pg = fmaf(v, static_cast<float>(g_row[f]), pg);
  }
  pp = warp_sum(pp);
  pg = warp_sum(pg);
  const float norm = sqrtf(pp);
  scalar_t* out_row = grad_x + r * grad_stride;
  for (int f = lane; f < dim; f += 32) {
    const float gf = static_cast<float>(g_row[f]);
    out_row[f] = static_cast<scalar_t>(norm < kNormEps ? gf / kNormEps
                                                       : (gf - static_cast<float>(in_row[f]) * (pg / pp)) / norm);
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_pool_backward(const PoolGradArgs& args, int token_slices, float* dpool, int* arg,
                                 cudaStream_t stream) {
  const unsigned batch = static_cast<unsigned>(args.pool.batch);
  row_grad_kernel<scalar_t><<<batch, kPoolBackwardThreads, 0, stream>>>(args, dpool, arg);
  const dim3 grid(batch, static_cast<unsigned>(token_slices));
  token_grad_kernel<scalar_t><<<grid, kPoolBackwardThreads, 0, stream>>>(args, dpool, arg);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_l2_normalize_backward(const scalar_t* x, int64_t row_stride, int64_t rows, int dim,
                                         const scalar_t* grad_out, scalar_t* grad_x, int64_t grad_stride,
                                         cudaStream_t stream) {
  const int64_t blocks = (rows + kL2RowsPerBlock - 1) / kL2RowsPerBlock;
  l2_normalize_backward_kernel<scalar_t><<<blocks, kL2RowsPerBlock * 32, 0, stream>>>(x, row_stride, rows, dim,
                                                                                    grad_out, grad_x, grad_stride);
  return cudaGetLastError();
}

namespace {

template <typename scalar_t, int VEC, bool kMax>
cudaError_t launch_pool_kernels(const PoolArgs& args, const PoolLaunch& plan, float* workspace,
                                cudaStream_t stream) {
  auto kernel = pool_kernel<scalar_t, VEC, kMax>;
  if (const cudaError_t err = allow_dynamic_smem(kernel, plan.smem); err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(args.batch), static_cast<unsigned>(plan.splits));
  kernel<<<grid, plan.threads, plan.smem, stream>>>(args, plan, workspace);
  if (plan.splits > 1) {
    finish_kernel<scalar_t, kMax><<<args.batch, kFinishThreads, 0, stream>>>(args, plan.splits, workspace);
  }
  return cudaGetLastError();
}

}  // namespace

PoolLaunch plan_pool(const PoolArgs& args, int vec, const PoolDevice& device) {
  // cls and lasttoken read one token per row, so token groups and splits would idle.
  const bool one_token = args.mode == PoolMode::Cls || args.mode == PoolMode::LastToken;
  const int64_t tokens = one_token ? 1 : std::max<int64_t>(1, args.cu_seqlens ? args.total_tokens : args.seq_len);
  PoolLaunch p{};
  p.vec = vec;
  p.cols = static_cast<int>(std::min<int64_t>(args.hidden_size / vec, kPoolThreads));
  p.groups = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kPoolThreads / p.cols, tokens)));
  p.threads = (p.cols * p.groups + 31) / 32 * 32;
  // Varlen rows have unknown lengths on the host, so only padded batches are split.
  p.splits = 1;
  if (!one_token && args.cu_seqlens == nullptr && args.batch > 0) {
    const int64_t resident = static_cast<int64_t>(device.sm_count) * std::max(1, device.max_threads_per_sm / p.threads);
    const int64_t wanted = (kTargetBlocksPerSm * resident + args.batch - 1) / args.batch;
    const int64_t most = std::max<int64_t>(1, args.seq_len / std::max(kMinSplitTokens, p.groups * kTokenUnroll));
    p.splits = static_cast<int>(std::clamp<int64_t>(device.splits > 0 ? device.splits : wanted, 1,
                                                    std::min<int64_t>(most, 1024)));
  }
  const size_t fold_bytes = static_cast<size_t>(p.cols) * p.groups * vec * sizeof(float);
  const size_t row_bytes = static_cast<size_t>(args.hidden_size) * sizeof(float);
  // Leaves room for the static shared memory (reduction slots, about 1 KB).
  const size_t smem_limit = device.smem_per_block - 2048;
  // With splits, finish_kernel normalizes; a single pass needs the whole pooled row in shared memory.
  p.fused_norm = args.normalize && p.splits == 1 && fold_bytes + row_bytes <= smem_limit;
  p.smem = fold_bytes + (p.fused_norm ? row_bytes : 0);
  return p;
}

template <typename scalar_t>
int pick_pool_vec(const void* base, int64_t a, int64_t b, int64_t c) {
  return pick_vec_width<scalar_t>(base, {a, b, c});
}

template <typename scalar_t>
cudaError_t launch_l2_normalize(const scalar_t* x, int64_t row_stride, int64_t rows, int dim, int vec, scalar_t* out,
                                cudaStream_t stream) {
  const int64_t blocks = (rows + kL2RowsPerBlock - 1) / kL2RowsPerBlock;
  dispatch_vec_width<scalar_t>(vec, [&](auto vec_c) {
    constexpr int VEC = decltype(vec_c)::value;
    l2_normalize_kernel<scalar_t, VEC><<<blocks, kL2RowsPerBlock * 32, 0, stream>>>(x, row_stride, rows, dim, out);
  });
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_pool(const PoolArgs& args, const PoolLaunch& plan, float* workspace, cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  dispatch_vec_width<scalar_t>(plan.vec, [&](auto vec_c) {
    constexpr int VEC = decltype(vec_c)::value;
    err = args.mode == PoolMode::Max ? launch_pool_kernels<scalar_t, VEC, true>(args, plan, workspace, stream)
                                     : launch_pool_kernels<scalar_t, VEC, false>(args, plan, workspace, stream);
  });
  if (err != cudaSuccess || !args.normalize || plan.fused_norm || plan.splits > 1) return err;
  // The pooled row did not fit in shared memory: normalize the written output (one extra rounding first).
  auto* out = static_cast<scalar_t*>(args.out);
  const int vec = pick_vec_width<scalar_t>(out, {args.hidden_size});
  return launch_l2_normalize<scalar_t>(out, args.hidden_size, args.batch, args.hidden_size, vec, out, stream);
}

#define SENTFUSE_INSTANTIATE_POOL(T)                                                                          \
  template int pick_pool_vec<T>(const void*, int64_t, int64_t, int64_t);                                      \
  template cudaError_t launch_pool<T>(const PoolArgs&, const PoolLaunch&, float*, cudaStream_t);              \
  template cudaError_t launch_l2_normalize<T>(const T*, int64_t, int64_t, int, int, T*, cudaStream_t);        \
  template cudaError_t launch_pool_backward<T>(const PoolGradArgs&, int, float*, int*, cudaStream_t);         \
  template cudaError_t launch_l2_normalize_backward<T>(const T*, int64_t, int64_t, int, const T*, T*, int64_t, \
                                                       cudaStream_t);
SENTFUSE_INSTANTIATE_POOL(float)
SENTFUSE_INSTANTIATE_POOL(c10::Half)
SENTFUSE_INSTANTIATE_POOL(c10::BFloat16)
#undef SENTFUSE_INSTANTIATE_POOL

}  // namespace sentfuse
