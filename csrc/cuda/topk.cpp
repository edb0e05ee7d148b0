// CUDA host entry point of cosine_topk: checks, device guard, registration. Kernels: cuda/topk.cu.
#include <limits>
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/message.h"
#include "common/bounds.h"
#include "common/checks.h"
#include "cuda/topk.h"

namespace sentfuse {
namespace {

std::tuple<at::Tensor, at::Tensor> cosine_topk_cuda(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                                    c10::string_view metric, bool exclude_self,
                                                    std::optional<double> min_score, int64_t query_offset,
                                                    int64_t corpus_offset, bool bf16_rescore) {
  const auto [k_out, score_metric] = check_cosine_topk_args(queries, corpus, k, metric, min_score);
  SENTFUSE_CHECK_VALUE(queries.is_cuda(), "cosine_topk: queries must be on a CUDA device, got ", queries.device());
  SENTFUSE_CHECK_VALUE(corpus.size(0) < kMaxCudaTopkCorpus, "cosine_topk: corpus has ", corpus.size(0),
                    " rows; at most ", kMaxCudaTopkCorpus - 1, " are supported on CUDA");
  const c10::cuda::CUDAGuard device_guard(queries.device());
  const float floor = min_score.has_value() ? fp32_bound(*min_score) : -std::numeric_limits<float>::infinity();
  auto result = run_cosine_topk(queries, corpus, k_out, score_metric, exclude_self, floor,
                                query_offset, corpus_offset, bf16_rescore);
  if (!result.has_value()) fail_non_finite("cosine_topk", "queries or corpus");
  return *result;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) { m.impl("cosine_topk", &cosine_topk_cuda); }

}  // namespace sentfuse
