// The interface between cuda/topk.cpp (host entry point, argument checks: C++ compiler) and cuda/topk.cu
// (kernels and their launches: nvcc). Arguments reaching run_cosine_topk are already checked.
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "common/metric.h"

namespace sentfuse {

// Corpus rows the CUDA selection can index (its int32 "no candidate" sentinel is this value).
constexpr int64_t kMaxCudaTopkCorpus = 0x7fffffff;

// queries [M, D], corpus [N, D] on the current CUDA device -> (scores fp32, indices int64) [M, k_out];
// metric: how a pair is scored (common/metric.h). nullopt when a score came out NaN or inf.
std::optional<std::tuple<at::Tensor, at::Tensor>> run_cosine_topk(const at::Tensor& queries,
                                                                  const at::Tensor& corpus, int64_t k_out,
                                                                  Metric metric, bool exclude_self, float min_score,
                                                                  int64_t query_offset, int64_t corpus_offset,
                                                                  bool bf16_rescore);

}  // namespace sentfuse
