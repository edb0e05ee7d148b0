// Argument checks shared by the CPU and CUDA cosine_topk entry points.
#pragma once

#include <optional>

#include <ATen/ATen.h>

#include "pooling_args.h"

namespace sentfuse {

// Returns the number of columns of the result, min(k, N).
inline int64_t check_cosine_topk_args(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                      std::optional<double> min_score) {
  TORCH_CHECK_VALUE(queries.dim() == 2, "cosine_topk: queries must be [num_queries, dim], got shape ",
                    queries.sizes());
  TORCH_CHECK_VALUE(corpus.dim() == 2, "cosine_topk: corpus must be [corpus_size, dim], got shape ",
                    corpus.sizes());
  TORCH_CHECK_VALUE(queries.size(1) == corpus.size(1), "cosine_topk: queries ", queries.sizes(), " and corpus ",
                    corpus.sizes(), " must have the same embedding dimension");
  check_float_input("cosine_topk", "queries", queries);
  check_float_input("cosine_topk", "corpus", corpus);
  TORCH_CHECK_TYPE(queries.scalar_type() == corpus.scalar_type(), "cosine_topk: queries are ",
                   queries.scalar_type(), " but corpus is ", corpus.scalar_type());
  TORCH_CHECK_VALUE(queries.device() == corpus.device(), "cosine_topk: queries are on ", queries.device(),
                    " but corpus is on ", corpus.device());
  TORCH_CHECK_VALUE(k >= 0, "cosine_topk: k must be >= 0, got ", k);
  TORCH_CHECK_VALUE(!min_score.has_value() || !std::isnan(*min_score), "cosine_topk: min_score is NaN");
  return std::min(k, corpus.size(0));
}

}  // namespace sentfuse
