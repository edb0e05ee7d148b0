// The interface between cuda/pairs.cpp (host entry point, argument checks: C++ compiler) and cuda/pairs.cu
// (kernels and their launches: nvcc). Arguments reaching run_threshold_pairs are already checked.
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "common/metric.h"

namespace sentfuse {

// a [N, D], b [M, D] or none on the current CUDA device -> (rows, cols, scores) [P] of the pairs scoring
// >= min_score under metric (common/metric.h). nullopt when a score came out NaN or inf.
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> run_threshold_pairs(
    const at::Tensor& a, const std::optional<at::Tensor>& b, float min_score, Metric metric,
    std::optional<int64_t> max_pairs);

}  // namespace sentfuse
