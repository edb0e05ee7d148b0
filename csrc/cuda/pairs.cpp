// CUDA host entry point of threshold_pairs: checks, device guard, registration. Kernels: cuda/pairs.cu.
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/message.h"
#include "common/checks.h"
#include "cuda/pairs.h"

namespace sentfuse {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> threshold_pairs_cuda(const at::Tensor& a,
                                                                    const std::optional<at::Tensor>& b,
                                                                    double threshold, c10::string_view metric,
                                                                    std::optional<int64_t> max_pairs) {
  const PairsArgs args = check_threshold_pairs_args(a, b, threshold, metric, max_pairs);
  SENTFUSE_CHECK_VALUE(a.is_cuda(), "threshold_pairs: a must be on a CUDA device, got ", a.device());
  check_pair_keys_fit(a.size(0), b.has_value() ? b->size(0) : a.size(0));
  const c10::cuda::CUDAGuard device_guard(a.device());
  auto result = run_threshold_pairs(a, b, args.threshold, args.metric, max_pairs);
  if (!result.has_value()) fail_non_finite("threshold_pairs", b.has_value() ? "a or b" : "a");
  return *result;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) { m.impl("threshold_pairs", &threshold_pairs_cuda); }

}  // namespace sentfuse
