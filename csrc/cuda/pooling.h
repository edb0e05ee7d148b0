// The interface between cuda/pooling.cpp (host entry points, argument checks: C++ compiler) and
// cuda/pooling.cu (kernels and launchers: nvcc). Launchers take already-checked raw parameters and report
// failure as a cudaError_t, never by throwing.
#pragma once

#include <cstddef>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>

#include "common/checks.h"

namespace sentfuse {

// l2_normalize_kernel's rows (one warp each) per block.
constexpr int kL2RowsPerBlock = 8;

// One masked_pool / masked_pool_varlen call. Token t of row b is at
// hidden + b * batch_stride + t * token_stride (masked) or hidden + (cu_seqlens[b] + t) * token_stride (varlen).
struct PoolArgs {
  const void* hidden;          // [batch, seq, hidden] or [total_tokens, hidden], unit feature stride
  int64_t batch_stride;        // masked only
  int64_t token_stride;
  const void* mask;            // [batch, seq] contiguous (masked), or nullptr (varlen: every token valid)
  int mask_bytes;              // bytes per mask element: bool or an integer type (nonzero = valid)
  const int64_t* cu_seqlens;   // [batch + 1] (varlen), or nullptr
  int64_t total_tokens;        // varlen: offsets are clamped to [0, total_tokens]
  int batch;
  int seq_len;                 // masked: L; varlen: unused
  int hidden_size;
  int skip_tokens;
  PoolMode mode;
  bool normalize;
  void* out;                   // [batch, hidden], hidden's dtype
};

// How a call is laid out on the GPU. A row is cut into `splits` token ranges, one block each, when the batch
// alone would leave SMs idle; the blocks then write fp32 partials to a workspace that a second kernel folds.
struct PoolLaunch {
  int vec;          // elements per 16-byte (or narrower) load
  int cols;         // threads along the features (VEC-wide vectors)
  int groups;       // threads along the tokens
  int threads;      // cols * groups, padded to whole warps
  int splits;       // blocks per row
  size_t smem;      // dynamic shared memory per block
  bool fused_norm;  // the single-pass kernel normalizes; otherwise an l2_normalize pass follows
};

// What the plan needs to know about the device.
struct PoolDevice {
  int sm_count;
  int max_threads_per_sm;
  size_t smem_per_block;  // opt-in maximum
  int splits = 0;         // > 0: blocks per padded row as given (SENTFUSE_POOL_SPLITS, for tuning runs)
};

// The launch plan for `args` on `device`: pure host arithmetic, never fails. vec comes from the caller,
// which knows the pointer alignment and strides.
PoolLaunch plan_pool(const PoolArgs& args, int vec, const PoolDevice& device);

// fp32 workspace floats the plan needs (0 when splits == 1).
inline int64_t pool_workspace_floats(const PoolArgs& args, const PoolLaunch& plan) {
  return plan.splits > 1 ? static_cast<int64_t>(args.batch) * plan.splits * args.hidden_size : 0;
}

// Runs the pooling described by args and plan; workspace holds pool_workspace_floats floats.
template <typename scalar_t>
cudaError_t launch_pool(const PoolArgs& args, const PoolLaunch& plan, float* workspace, cudaStream_t stream);

// x [rows, >= dim] with row stride row_stride -> out [rows, dim], rows scaled to unit L2 norm (x == out allowed).
template <typename scalar_t>
cudaError_t launch_l2_normalize(const scalar_t* x, int64_t row_stride, int64_t rows, int dim, int vec,
                                scalar_t* out, cudaStream_t stream);

// Threads per block of the backward kernels (along the features).
constexpr int kPoolBackwardThreads = 256;

// One masked_pool_backward / masked_pool_varlen_backward call: the forward's arguments (pool.out unused) and
// the gradients, both contiguous in hidden's dtype.
struct PoolGradArgs {
  PoolArgs pool;
  const void* grad_out;  // [batch, hidden]
  void* grad_hidden;     // [batch, seq, hidden] or [total_tokens, hidden]; varlen: zeroed by the caller
};

// Writes grad_hidden. dpool and arg are [batch, hidden] fp32 / int32 scratch; each row's tokens are spread over
// token_slices blocks.
template <typename scalar_t>
cudaError_t launch_pool_backward(const PoolGradArgs& args, int token_slices, float* dpool, int* arg,
                                 cudaStream_t stream);

// x [rows, >= dim] (row stride row_stride), grad_out [rows, dim] -> grad_x [rows, dim] with row stride
// grad_stride (columns beyond dim left to the caller).
template <typename scalar_t>
cudaError_t launch_l2_normalize_backward(const scalar_t* x, int64_t row_stride, int64_t rows, int dim,
                                         const scalar_t* grad_out, scalar_t* grad_x, int64_t grad_stride,
                                         cudaStream_t stream);

// Elements per access for pointer `base` and the element counts that must stay aligned (vec.cuh's rule).
template <typename scalar_t>
int pick_pool_vec(const void* base, int64_t a, int64_t b, int64_t c);

}  // namespace sentfuse
