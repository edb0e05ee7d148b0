// CUDA host entry points of masked_pool, masked_pool_varlen, l2_normalize and their backward ops: argument
// checks, device guard, stream, workspace, registration. Kernels and launchers: cuda/pooling.cu.
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/message.h"
#include "common/checks.h"
#include "common/dispatch.h"
#include "cuda/pooling.h"

namespace sentfuse {
namespace {

constexpr int64_t kMaxTokens = int64_t{1} << 30;  // keeps token indices (plus unrolled offsets) in int
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();  // grid.x limit: one block per row

PoolDevice current_device() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  PoolDevice device{prop->multiProcessorCount, prop->maxThreadsPerMultiProcessor, prop->sharedMemPerBlockOptin};
  // bench_pooling.py --sweep-splits times a few split counts against the plan's own choice.
  if (const char* splits = std::getenv("SENTFUSE_POOL_SPLITS")) device.splits = std::atoi(splits);
  return device;
}

// Plans, allocates the workspace and launches; args.hidden / args.out are set by the caller.
template <typename scalar_t>
void run_pool(const PoolArgs& args, int vec, const at::Tensor& like) {
  const PoolLaunch plan = plan_pool(args, vec, current_device());
  const int64_t floats = pool_workspace_floats(args, plan);
  const at::Tensor workspace = at::empty({floats}, like.options().dtype(at::kFloat));
  C10_CUDA_CHECK(launch_pool<scalar_t>(args, plan, floats > 0 ? workspace.mutable_data_ptr<float>() : nullptr,
                                       at::cuda::getCurrentCUDAStream()));
}

void check_cuda_size(const char* op, const at::Tensor& hidden, int64_t rows, int64_t tokens, int64_t features) {
  SENTFUSE_CHECK_VALUE(rows <= kMaxRows && tokens < kMaxTokens && features < kMaxTokens, op, ": hidden ",
                    hidden.sizes(), " with ", rows, " rows is too large for the CUDA kernel");
}

// The kernels' view of a masked_pool call on hidden [B, L, H] (unit feature stride). Bool and integer masks are
// read as stored (nonzero = valid): no conversion kernel per call; floating masks become bool first (-0.0 is
// zero but not all-zero bits). `mask` keeps what the kernels read alive; args.out is left to the caller.
PoolArgs masked_args(const at::Tensor& hidden, const at::Tensor& attention_mask, at::Tensor& mask, PoolMode mode,
                     bool normalize, int64_t skip_tokens) {
  mask = at::isIntegralType(attention_mask.scalar_type(), /*includeBool=*/true) ? attention_mask.contiguous()
                                                                                : attention_mask.ne(0).contiguous();
  PoolArgs args{};
  args.hidden = hidden.const_data_ptr();
  args.batch_stride = hidden.stride(0);
  args.token_stride = hidden.stride(1);
  args.mask = mask.const_data_ptr();
  args.mask_bytes = static_cast<int>(mask.element_size());
  args.batch = static_cast<int>(hidden.size(0));
  args.seq_len = static_cast<int>(hidden.size(1));
  args.hidden_size = static_cast<int>(hidden.size(2));
  args.skip_tokens = static_cast<int>(std::min<int64_t>(skip_tokens, kMaxTokens));
  args.mode = mode;
  args.normalize = normalize;
  return args;
}

// The same for packed tokens hidden [T, H] (unit feature stride) and cu_seqlens [B + 1] (int64, contiguous).
PoolArgs varlen_args(const at::Tensor& hidden, const at::Tensor& cu_seqlens, PoolMode mode, bool normalize,
                     int64_t skip_tokens) {
  PoolArgs args{};
  args.hidden = hidden.const_data_ptr();
  args.token_stride = hidden.stride(0);
  args.cu_seqlens = cu_seqlens.const_data_ptr<int64_t>();
  args.total_tokens = hidden.size(0);
  args.batch = static_cast<int>(cu_seqlens.size(0) - 1);
  args.hidden_size = static_cast<int>(hidden.size(1));
  args.skip_tokens = static_cast<int>(std::min<int64_t>(skip_tokens, kMaxTokens));
  args.mode = mode;
  args.normalize = normalize;
  return args;
}

at::Tensor masked_pool_cuda(const at::Tensor& hidden_in, const at::Tensor& attention_mask, c10::string_view mode_name,
                            bool normalize, int64_t skip_tokens) {
  const PoolMode mode = check_masked_pool_args(hidden_in, attention_mask, mode_name, skip_tokens);
  const int64_t batch = hidden_in.size(0), seq_len = hidden_in.size(1), hidden_size = hidden_in.size(2);
  check_cuda_size("masked_pool", hidden_in, batch, seq_len, hidden_size);
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  at::Tensor out = at::empty({batch, hidden_size}, hidden_in.options());
  if (batch == 0 || hidden_size == 0) return out;
  if (seq_len == 0) return out.zero_();
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  at::Tensor mask;
  PoolArgs args = masked_args(hidden, attention_mask, mask, mode, normalize, skip_tokens);
  args.out = out.mutable_data_ptr();
  SENTFUSE_DISPATCH_FLOAT_TYPES(hidden.scalar_type(), "sentfuse_masked_pool_cuda", [&] {
    run_pool<scalar_t>(args, pick_pool_vec<scalar_t>(args.hidden, hidden_size, hidden.stride(0), hidden.stride(1)),
                       hidden);
  });
  return out;
}

// cu_seqlens are not validated here (that would sync with the device): the kernel clamps them to
// [0, total_tokens], so bad offsets pool fewer tokens but never read out of range.
at::Tensor masked_pool_varlen_cuda(const at::Tensor& hidden_in, const at::Tensor& cu_seqlens_in,
                                   c10::string_view mode_name, bool normalize, int64_t skip_tokens) {
  const PoolMode mode = check_varlen_args(hidden_in, cu_seqlens_in, mode_name, skip_tokens);
  const int64_t batch = cu_seqlens_in.size(0) - 1, total_tokens = hidden_in.size(0), hidden_size = hidden_in.size(1);
  check_cuda_size("masked_pool_varlen", hidden_in, batch, total_tokens, hidden_size);
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  at::Tensor out = at::empty({batch, hidden_size}, hidden_in.options());
  if (batch == 0 || hidden_size == 0) return out;
  if (total_tokens == 0) return out.zero_();
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const at::Tensor cu_seqlens = cu_seqlens_in.to(at::kLong).contiguous();
  PoolArgs args = varlen_args(hidden, cu_seqlens, mode, normalize, skip_tokens);
  args.out = out.mutable_data_ptr();
  SENTFUSE_DISPATCH_FLOAT_TYPES(hidden.scalar_type(), "sentfuse_masked_pool_varlen_cuda", [&] {
    run_pool<scalar_t>(args, pick_pool_vec<scalar_t>(args.hidden, hidden_size, hidden.stride(0), hidden_size), hidden);
  });
  return out;
}

at::Tensor l2_normalize_cuda(const at::Tensor& x_in, std::optional<int64_t> dim) {
  const int64_t keep = check_l2_normalize_args(x_in, dim);
  SENTFUSE_CHECK_VALUE(keep < kMaxTokens && x_in.size(0) / kL2RowsPerBlock < kMaxRows, "l2_normalize: x ",
                    x_in.sizes(), " is too large for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = at::empty({x_in.size(0), keep}, x_in.options());
  if (out.numel() == 0) return out;
  const at::Tensor x = with_unit_feature_stride(x_in);
  SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "sentfuse_l2_normalize_cuda", [&] {
    const int vec = pick_pool_vec<scalar_t>(x.const_data_ptr(), keep, x.stride(0), keep);
    C10_CUDA_CHECK(launch_l2_normalize<scalar_t>(x.const_data_ptr<scalar_t>(), x.stride(0), x.size(0),
                                                 static_cast<int>(keep), vec, out.mutable_data_ptr<scalar_t>(),
                                                 at::cuda::getCurrentCUDAStream()));
  });
  return out;
}

// ---- Backward ----------------------------------------------------------------------------------------------

// Launches the two backward passes with their [batch, hidden] scratch; args.grad_* are set by the caller.
// tokens_per_row (the padded length, or the mean packed length) spreads each row over enough blocks.
template <typename scalar_t>
void run_pool_backward(const PoolGradArgs& args, int64_t tokens_per_row, const at::Tensor& like) {
  const int64_t cells = static_cast<int64_t>(args.pool.batch) * args.pool.hidden_size;
  const at::Tensor dpool = at::empty({cells}, like.options().dtype(at::kFloat));
  const at::Tensor arg = at::empty({args.pool.mode == PoolMode::Max ? cells : 0}, like.options().dtype(at::kInt));
  const int slices = static_cast<int>(std::clamp<int64_t>((tokens_per_row + 7) / 8, 1, 256));
  C10_CUDA_CHECK(launch_pool_backward<scalar_t>(args, slices, dpool.mutable_data_ptr<float>(),
                                                arg.numel() > 0 ? arg.mutable_data_ptr<int>() : nullptr,
                                                at::cuda::getCurrentCUDAStream()));
}

at::Tensor masked_pool_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& hidden_in,
                                     const at::Tensor& attention_mask, c10::string_view mode_name, bool normalize,
                                     int64_t skip_tokens) {
  const PoolMode mode = check_masked_pool_args(hidden_in, attention_mask, mode_name, skip_tokens);
  const int64_t batch = hidden_in.size(0), seq_len = hidden_in.size(1), hidden_size = hidden_in.size(2);
  check_grad_out("masked_pool_backward", grad_out_in, batch, hidden_size, hidden_in);
  check_cuda_size("masked_pool_backward", hidden_in, batch, seq_len, hidden_size);
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  at::Tensor grad = at::empty({batch, seq_len, hidden_size}, hidden_in.options());
  if (grad.numel() == 0) return grad;
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor mask;
  PoolGradArgs args{masked_args(hidden, attention_mask, mask, mode, normalize, skip_tokens), grad_out.const_data_ptr(),
                    grad.mutable_data_ptr()};
  SENTFUSE_DISPATCH_FLOAT_TYPES(hidden.scalar_type(), "sentfuse_masked_pool_backward_cuda",
                                [&] { run_pool_backward<scalar_t>(args, seq_len, hidden); });
  return grad;
}

at::Tensor masked_pool_varlen_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& hidden_in,
                                            const at::Tensor& cu_seqlens_in, c10::string_view mode_name,
                                            bool normalize, int64_t skip_tokens) {
  const PoolMode mode = check_varlen_args(hidden_in, cu_seqlens_in, mode_name, skip_tokens);
  const int64_t batch = cu_seqlens_in.size(0) - 1, total_tokens = hidden_in.size(0), hidden_size = hidden_in.size(1);
  check_grad_out("masked_pool_varlen_backward", grad_out_in, batch, hidden_size, hidden_in);
  check_cuda_size("masked_pool_varlen_backward", hidden_in, batch, total_tokens, hidden_size);
  const c10::cuda::CUDAGuard guard(hidden_in.device());
  // Zeroed: tokens outside every sequence get no gradient, and the kernels write only the sequences' tokens.
  at::Tensor grad = at::zeros({total_tokens, hidden_size}, hidden_in.options());
  if (grad.numel() == 0 || batch == 0) return grad;
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor cu_seqlens = cu_seqlens_in.to(at::kLong).contiguous();
  PoolGradArgs args{varlen_args(hidden, cu_seqlens, mode, normalize, skip_tokens), grad_out.const_data_ptr(),
                    grad.mutable_data_ptr()};
  SENTFUSE_DISPATCH_FLOAT_TYPES(hidden.scalar_type(), "sentfuse_masked_pool_varlen_backward_cuda",
                                [&] { run_pool_backward<scalar_t>(args, total_tokens / batch, hidden); });
  return grad;
}

at::Tensor l2_normalize_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                      std::optional<int64_t> dim) {
  const int64_t keep = check_l2_normalize_args(x_in, dim);
  const int64_t rows = x_in.size(0), full = x_in.size(1);
  check_grad_out("l2_normalize_backward", grad_out_in, rows, keep, x_in);
  SENTFUSE_CHECK_VALUE(full < kMaxTokens && rows / kL2RowsPerBlock < kMaxRows, "l2_normalize_backward: x ",
                       x_in.sizes(), " is too large for the CUDA kernel");
  const c10::cuda::CUDAGuard guard(x_in.device());
  // Features beyond `dim` were dropped, so their gradient is zero.
  at::Tensor grad = keep == full ? at::empty({rows, full}, x_in.options()) : at::zeros({rows, full}, x_in.options());
  if (rows == 0 || keep == 0) return grad;
  const at::Tensor x = with_unit_feature_stride(x_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "sentfuse_l2_normalize_backward_cuda", [&] {
    C10_CUDA_CHECK(launch_l2_normalize_backward<scalar_t>(
        x.const_data_ptr<scalar_t>(), x.stride(0), rows, static_cast<int>(keep), grad_out.const_data_ptr<scalar_t>(),
        grad.mutable_data_ptr<scalar_t>(), full, at::cuda::getCurrentCUDAStream()));
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) {
  m.impl("masked_pool", &masked_pool_cuda);
  m.impl("masked_pool_varlen", &masked_pool_varlen_cuda);
  m.impl("l2_normalize", &l2_normalize_cuda);
  m.impl("masked_pool_backward", &masked_pool_backward_cuda);
  m.impl("masked_pool_varlen_backward", &masked_pool_varlen_backward_cuda);
  m.impl("l2_normalize_backward", &l2_normalize_backward_cuda);
}

}  // namespace sentfuse
