// CUDA host entry point of pair_scores: checks, device guard, stream, registration. Kernel: pair_scores.cu.
#include <optional>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "cuda/pair_scores.h"

namespace sentfuse {
namespace {

at::Tensor pair_scores_cuda(const at::Tensor& a_in, const std::optional<at::Tensor>& b_in, const at::Tensor& rows_in,
                            const at::Tensor& cols_in, c10::string_view metric) {
  const Metric score_metric = check_pair_scores_args(a_in, b_in, rows_in, cols_in, metric);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.has_value() ? b_in->contiguous() : a;
  const at::Tensor rows = rows_in.contiguous(), cols = cols_in.contiguous();
  const int64_t P = rows.size(0), D = a.size(1);
  at::Tensor out = at::empty({P}, a.options().dtype(at::kFloat));
  if (P == 0) return out;
  SENTFUSE_DISPATCH_FLOAT_TYPES(a.scalar_type(), "sentfuse_pair_scores_cuda", [&] {
    C10_CUDA_CHECK(launch_pair_scores<scalar_t>(a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
                                                rows.const_data_ptr<int64_t>(), cols.const_data_ptr<int64_t>(), P, D,
                                                score_metric, out.mutable_data_ptr<float>(),
                                                c10::cuda::getCurrentCUDAStream()));
  });
  if (!at::isfinite(out).all().item<bool>()) fail_non_finite("pair_scores", "a or b (in a listed row)");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) { m.impl("pair_scores", &pair_scores_cuda); }

}  // namespace sentfuse
