// CUDA host entry point of dropout: the shared argument checks, dtype dispatch, device guard, current stream.
#include <cstdint>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/dropout_hash.h"
#include "cuda/dropout.h"

namespace sentfuse {
namespace {

at::Tensor dropout_cuda(const at::Tensor& x_in, double p, int64_t seed, const std::optional<at::Tensor>& residual_in,
                        std::optional<at::ScalarType> dtype) {
  const at::ScalarType out_type = check_dropout_args(x_in, p, residual_in, dtype);
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor out = at::empty(x_in.sizes(), x_in.options().dtype(out_type));
  if (out.numel() == 0) return out;
  const at::Tensor x = x_in.contiguous();
  const at::Tensor residual = residual_in.has_value() ? residual_in->to(out_type).contiguous() : at::Tensor();
  const uint64_t threshold = dropout_threshold(p);
  const float scale = dropout_scale(p);
  SENTFUSE_DISPATCH_FLOAT_TYPES(out_type, "sentfuse_dropout_cuda_out", [&] {
    using out_t = scalar_t;
    const out_t* res = residual.defined() ? residual.const_data_ptr<out_t>() : nullptr;
    SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "sentfuse_dropout_cuda", [&] {
      const cudaError_t err = launch_dropout<scalar_t, out_t>(x.const_data_ptr<scalar_t>(), res,
                                                              out.mutable_data_ptr<out_t>(), out.numel(),
                                                              static_cast<uint64_t>(seed), threshold, scale,
                                                              at::cuda::getCurrentCUDAStream());
      C10_CUDA_CHECK(err);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) { m.impl("dropout", &dropout_cuda); }

}  // namespace sentfuse
