// cosine_topk's fused scan (cuda/topk_fused.cu), called from run_cosine_topk (cuda/topk.cu).
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "common/metric.h"

namespace sentfuse {

// Whether SENTFUSE_CUDA_TOPK=fused asks for the fused scan. Opt-in until a GPU run has measured it
// against the tiled scan (benchmarks/gpu_check.sh times both).
bool fused_topk_requested();

// Whether the fused scan applies to k of a corpus of n rows: its seed slice must be a small part of it.
bool fused_topk_fits(int64_t n, int64_t k);

// run_cosine_topk's contract (cuda/topk.h) on the fused scan; nullopt where it does not pay or its
// bound does not hold (the caller takes the tiled scan), and also, with nonfinite set, where a score came
// out NaN or inf.
std::optional<std::tuple<at::Tensor, at::Tensor>> fused_topk(const at::Tensor& queries, const at::Tensor& corpus,
                                                             int64_t k, Metric metric, bool exclude_self,
                                                             float min_score, int64_t query_offset,
                                                             int64_t corpus_offset, bool& nonfinite);

}  // namespace sentfuse
