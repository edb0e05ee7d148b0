// CUDA kernels for masked_pool, masked_pool_varlen and l2_normalize (semantics: python/sentfuse/reference.py).
//
// Pooling is bandwidth-bound: one block per row reads each valid token once with 16-byte loads. The block is
// a grid of `cols` x `groups` logical threads: `cols` split the feature dim into VEC-wide vectors, `groups`
// split the tokens, and shared memory folds the groups together. Padding tokens are never loaded. With
// normalize, the pooled row stays in shared memory until the block has its L2 norm.
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/bounds.h"
#include "common/checks.h"
#include "common/dispatch.h"
#include "cuda/reduce.cuh"
#include "cuda/vec.cuh"

namespace sentfuse {
namespace {

constexpr int kPoolThreads = 512;
// Tokens each thread loads before it accumulates: keeps several 16-byte loads in flight per thread,
// which matters when the batch has fewer rows than the GPU has SMs.
constexpr int kTokenUnroll = 4;
constexpr int kL2WarpsPerBlock = 8;

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

// Padded rows: scans the mask to find the first present token, then the valid tokens after skip.
__device__ RowPlan plan_masked_row(const bool* __restrict__ mask,  // [seq]
                                   int seq_len, int skip_tokens, PoolMode mode) {
  __shared__ int first_slots[32];
  __shared__ MaskStats stat_slots[32];
  int first = seq_len;
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
  const int begin = static_cast<int>(min(static_cast<long long>(first) + skip_tokens, static_cast<long long>(seq_len)));
  MaskStats local{0, seq_len, -1, 0};
  for (int t = begin + threadIdx.x; t < seq_len; t += blockDim.x) {
    if (mask[t]) local = combine(local, MaskStats{1, t, t, t});
  }
  const MaskStats s = block_all_reduce(
      local, stat_slots, [](MaskStats a, MaskStats b) { return combine(a, b); },
      [](MaskStats v, int m) { return shfl_xor(v, m); });
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

// Pools one row into out_row. `row` points at token 0; token t lives at row + t * token_stride.
// Block layout: logical thread (col, group) = (tid % cols, tid / cols) for tid < cols * groups; the rest
// only join the reductions. Dynamic shared memory: cols * groups * VEC floats for folding the groups,
// then hidden floats for the pooled row when normalizing.
template <typename scalar_t, int VEC, bool kMax>
__device__ void pool_row(const scalar_t* __restrict__ row,  // [seq, hidden], token stride token_stride
                         int64_t token_stride,
                         const bool* __restrict__ mask,  // [seq], or nullptr when every token is valid
                         const RowPlan& plan, int hidden, int cols, int groups, bool normalize,
                         scalar_t* __restrict__ out_row) {  // [hidden]
  extern __shared__ float smem[];
  __shared__ float sum_slots[32];
  float* fold = smem;                            // [groups, VEC, cols]
  float* pooled = smem + cols * groups * VEC;    // [hidden], only with normalize
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;

  if (plan.count <= 0) {
    for (int f = tid; f < hidden; f += nthreads) out_row[f] = scalar_t(0.f);
    return;
  }

  const int col_in_chunk = tid % cols;
  const int group = tid / cols;
  const int vec_cols = hidden / VEC;
  float sum_sq = 0.f;

  for (int chunk = 0; chunk < vec_cols; chunk += cols) {
    const int col = chunk + col_in_chunk;
    float acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = kMax ? -INFINITY : 0.f;

    if (group < groups && col < vec_cols) {
      const scalar_t* col_ptr = row + static_cast<int64_t>(col) * VEC;
      for (int t0 = plan.begin + group; t0 < plan.end; t0 += kTokenUnroll * groups) {
        float x[kTokenUnroll][VEC];
        bool take[kTokenUnroll];
#pragma unroll
        for (int u = 0; u < kTokenUnroll; ++u) {
          const int t = t0 + u * groups;
          take[u] = t < plan.end && (mask == nullptr || mask[t]);
          if (take[u]) load_vec<scalar_t, VEC>(col_ptr + t * token_stride, x[u]);
        }
#pragma unroll
        for (int u = 0; u < kTokenUnroll; ++u) {
          if (!take[u]) continue;
          if constexpr (kMax) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[k] = max_nan(acc[k], x[u][k]);
          } else {
            const float w = plan.weighted ? static_cast<float>(t0 + u * groups + 1 - plan.first) : 1.f;
#pragma unroll
            for (int k = 0; k < VEC; ++k) acc[k] = fmaf(w, x[u][k], acc[k]);
          }
        }
      }
    }

    __syncthreads();  // the previous chunk's readers of `fold` are done
    if (group < groups) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) fold[(group * VEC + k) * cols + col_in_chunk] = acc[k];
    }
    __syncthreads();
    // Entry e = k * cols + c of each group's slice is feature (chunk + c) * VEC + k.
    for (int e = tid; e < cols * VEC; e += nthreads) {
      const int c = e % cols;
      if (chunk + c >= vec_cols) continue;
      float v = fold[e];
      for (int g = 1; g < groups; ++g) {
        const float other = fold[g * cols * VEC + e];
        v = kMax ? max_nan(v, other) : v + other;
      }
      if constexpr (!kMax) v = v / plan.denom;
      const int f = (chunk + c) * VEC + e / cols;
      if (normalize) {
        pooled[f] = v;
        sum_sq += v * v;
      } else {
        out_row[f] = static_cast<scalar_t>(v);
      }
    }
  }

  if (normalize) {
    const float norm = fmaxf(sqrtf(block_sum(sum_sq, sum_slots)), kNormEps);
    for (int f = tid; f < hidden; f += nthreads) out_row[f] = static_cast<scalar_t>(pooled[f] / norm);
  }
}

template <typename scalar_t, int VEC, bool kMax>
__global__ void masked_pool_kernel(const scalar_t* __restrict__ hidden,  // [batch, seq, hidden]
                                   int64_t batch_stride, int64_t token_stride,
                                   const bool* __restrict__ mask,  // [batch, seq], contiguous
                                   int seq_len, int hidden_size, PoolMode mode, int skip_tokens, int cols,
                                   int groups, bool normalize,
                                   scalar_t* __restrict__ out) {  // [batch, hidden]
  const int64_t b = blockIdx.x;
  const bool* row_mask = mask + b * seq_len;
  const RowPlan plan = plan_masked_row(row_mask, seq_len, skip_tokens, mode);
  pool_row<scalar_t, VEC, kMax>(hidden + b * batch_stride, token_stride, row_mask, plan, hidden_size, cols, groups,
                                normalize, out + b * hidden_size);
}

template <typename scalar_t, int VEC, bool kMax>
__global__ void varlen_pool_kernel(const scalar_t* __restrict__ hidden,  // [total_tokens, hidden]
                                   int64_t token_stride, int64_t total_tokens,
                                   const int64_t* __restrict__ cu_seqlens,  // [batch + 1]
                                   int hidden_size, PoolMode mode, int skip_tokens, int cols, int groups,
                                   bool normalize,
                                   scalar_t* __restrict__ out) {  // [batch, hidden]
  const int64_t b = blockIdx.x;
  // Offsets are not validated on the host (that would sync): clamp so bad ones read nothing out of range.
  const int64_t start = min(max(cu_seqlens[b], int64_t{0}), total_tokens);
  const int64_t stop = min(max(cu_seqlens[b + 1], int64_t{0}), total_tokens);
  const int len = static_cast<int>(max(stop - start, int64_t{0}));
  const RowPlan plan = plan_dense_row(len, skip_tokens, mode);
  pool_row<scalar_t, VEC, kMax>(hidden + start * token_stride, token_stride, nullptr, plan, hidden_size, cols, groups,
                                normalize, out + b * hidden_size);
}

// One warp per row: embedding rows are a few KB, so a warp keeps enough loads in flight and needs no
// block-wide synchronization. In-place (x == out) is allowed: each lane rewrites only what it read.
template <typename scalar_t, int VEC>
__global__ void l2_normalize_kernel(const scalar_t* x,  // [rows, >= dim], row stride row_stride
                                    int64_t row_stride, int64_t rows, int dim,
                                    scalar_t* out) {  // [rows, dim]
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kL2WarpsPerBlock + threadIdx.x / 32;
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

template <typename scalar_t>
void launch_l2_normalize(const at::Tensor& x, int64_t dim, at::Tensor& out) {
  const int64_t rows = x.size(0);
  const int vec = pick_vec_width<scalar_t>(x.const_data_ptr(), {dim, x.stride(0)});
  const int64_t blocks = (rows + kL2WarpsPerBlock - 1) / kL2WarpsPerBlock;
  dispatch_vec_width<scalar_t>(vec, [&](auto vec_c) {
    constexpr int VEC = decltype(vec_c)::value;
    l2_normalize_kernel<scalar_t, VEC><<<blocks, kL2WarpsPerBlock * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), x.stride(0), rows, static_cast<int>(dim), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Block shape and shared memory for pooling rows of `vec_cols` vectors over up to `max_tokens` tokens:
// as many columns as fit, the remaining threads on token groups, padded to whole warps. When the pooled
// row does not fit in shared memory beside the fold buffer, the kernel skips normalization and
// l2_normalize runs on its output afterwards (one extra rounding to the output dtype first).
struct PoolLaunch {
  int cols;
  int groups;
  int threads;
  size_t smem;
  bool fused_norm;
};

PoolLaunch plan_pool_launch(int64_t hidden_size, int vec, int64_t max_tokens, bool normalize) {
  PoolLaunch p;
  p.cols = static_cast<int>(std::min<int64_t>(hidden_size / vec, kPoolThreads));
  p.groups = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kPoolThreads / p.cols, max_tokens)));
  p.threads = (p.cols * p.groups + 31) / 32 * 32;
  const size_t fold_bytes = static_cast<size_t>(p.cols) * p.groups * vec * sizeof(float);
  const size_t row_bytes = static_cast<size_t>(hidden_size) * sizeof(float);
  // Leaves room for the static shared memory (reduction slots, about 1 KB).
  const size_t smem_limit = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin - 2048;
  p.fused_norm = normalize && fold_bytes + row_bytes <= smem_limit;
  p.smem = fold_bytes + (p.fused_norm ? row_bytes : 0);
  return p;
}

template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, size_t smem) {
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
}

// cls and lasttoken read one token per row, so token groups would idle.
int64_t pool_token_bound(PoolMode mode, int64_t tokens) {
  return (mode == PoolMode::Cls || mode == PoolMode::LastToken) ? 1 : tokens;
}

constexpr int64_t kMaxTokens = int64_t{1} << 30;  // keeps token indices (plus unrolled offsets) in int
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();  // grid.x limit: one block per row

}  // namespace

at::Tensor masked_pool_cuda(const at::Tensor& hidden_in, const at::Tensor& attention_mask, c10::string_view mode_name,
                            bool normalize, int64_t skip_tokens) {
  const PoolMode mode = check_masked_pool_args(hidden_in, attention_mask, mode_name, skip_tokens);
  const int64_t batch = hidden_in.size(0), seq_len = hidden_in.size(1), hidden_size = hidden_in.size(2);
  TORCH_CHECK_VALUE(batch <= kMaxRows && seq_len < kMaxTokens && hidden_size < kMaxTokens, "masked_pool: hidden ",
                    hidden_in.sizes(), " is too large for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  at::Tensor out = at::empty({batch, hidden_size}, hidden_in.options());
  if (batch == 0 || hidden_size == 0) return out;
  if (seq_len == 0) return out.zero_();
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const at::Tensor mask = attention_mask.ne(0).contiguous();
  const int skip = static_cast<int>(std::min<int64_t>(skip_tokens, kMaxTokens));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SENTFUSE_DISPATCH_FLOAT_TYPES(hidden.scalar_type(), "masked_pool_cuda", [&] {
    const int vec = pick_vec_width<scalar_t>(hidden.const_data_ptr(), {hidden_size, hidden.stride(0), hidden.stride(1)});
    const PoolLaunch p = plan_pool_launch(hidden_size, vec, pool_token_bound(mode, seq_len), normalize);
    dispatch_vec_width<scalar_t>(vec, [&](auto vec_c) {
      constexpr int VEC = decltype(vec_c)::value;
      auto kernel = mode == PoolMode::Max ? masked_pool_kernel<scalar_t, VEC, true>
                                          : masked_pool_kernel<scalar_t, VEC, false>;
      allow_dynamic_smem(kernel, p.smem);
      kernel<<<batch, p.threads, p.smem, stream>>>(
          hidden.const_data_ptr<scalar_t>(), hidden.stride(0), hidden.stride(1), mask.const_data_ptr<bool>(),
          static_cast<int>(seq_len), static_cast<int>(hidden_size), mode, skip, p.cols, p.groups, p.fused_norm,
          out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (normalize && !p.fused_norm) launch_l2_normalize<scalar_t>(out, hidden_size, out);
  });
  return out;
}

at::Tensor masked_pool_varlen_cuda(const at::Tensor& hidden_in, const at::Tensor& cu_seqlens_in,
                                   c10::string_view mode_name, bool normalize, int64_t skip_tokens) {
  const PoolMode mode = check_varlen_args(hidden_in, cu_seqlens_in, mode_name, skip_tokens);
  const int64_t batch = cu_seqlens_in.size(0) - 1, total_tokens = hidden_in.size(0), hidden_size = hidden_in.size(1);
  TORCH_CHECK_VALUE(batch <= kMaxRows && total_tokens < kMaxTokens && hidden_size < kMaxTokens,
                    "masked_pool_varlen: hidden ", hidden_in.sizes(), " with ", batch,
                    " sequences is too large for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  at::Tensor out = at::empty({batch, hidden_size}, hidden_in.options());
  if (batch == 0 || hidden_size == 0) return out;
  if (total_tokens == 0) return out.zero_();
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const at::Tensor cu_seqlens = cu_seqlens_in.to(at::kLong).contiguous();
  const int skip = static_cast<int>(std::min<int64_t>(skip_tokens, kMaxTokens));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  SENTFUSE_DISPATCH_FLOAT_TYPES(hidden.scalar_type(), "masked_pool_varlen_cuda", [&] {
    const int vec = pick_vec_width<scalar_t>(hidden.const_data_ptr(), {hidden_size, hidden.stride(0)});
    const PoolLaunch p = plan_pool_launch(hidden_size, vec, pool_token_bound(mode, total_tokens), normalize);
    dispatch_vec_width<scalar_t>(vec, [&](auto vec_c) {
      constexpr int VEC = decltype(vec_c)::value;
      auto kernel = mode == PoolMode::Max ? varlen_pool_kernel<scalar_t, VEC, true>
                                          : varlen_pool_kernel<scalar_t, VEC, false>;
      allow_dynamic_smem(kernel, p.smem);
      kernel<<<batch, p.threads, p.smem, stream>>>(
          hidden.const_data_ptr<scalar_t>(), hidden.stride(0), total_tokens, cu_seqlens.const_data_ptr<int64_t>(),
          static_cast<int>(hidden_size), mode, skip, p.cols, p.groups, p.fused_norm, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (normalize && !p.fused_norm) launch_l2_normalize<scalar_t>(out, hidden_size, out);
  });
  return out;
}

at::Tensor l2_normalize_cuda(const at::Tensor& x_in, std::optional<int64_t> dim) {
  const int64_t keep = check_l2_normalize_args(x_in, dim);
  TORCH_CHECK_VALUE(keep < kMaxTokens && x_in.size(0) / kL2WarpsPerBlock < kMaxRows, "l2_normalize: x ", x_in.sizes(),
                    " is too large for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = at::empty({x_in.size(0), keep}, x_in.options());
  if (out.numel() == 0) return out;
  const at::Tensor x = with_unit_feature_stride(x_in);
  SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "l2_normalize_cuda",
                                  [&] { launch_l2_normalize<scalar_t>(x, keep, out); });
  return out;
}

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) {
  m.impl("masked_pool", &masked_pool_cuda);
  m.impl("masked_pool_varlen", &masked_pool_varlen_cuda);
  m.impl("l2_normalize", &l2_normalize_cuda);
}

}  // namespace sentfuse
