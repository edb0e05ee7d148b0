// The interface between cuda/pair_scores.cpp (host entry point: C++ compiler) and cuda/pair_scores.cu
// (kernel and launcher: nvcc). The launcher takes already-checked raw parameters and never throws.
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>

#include "common/metric.h"

namespace sentfuse {

// x [N, D], y [M, D] contiguous, rows / cols [P] in range -> out [P] fp32: the raw dot product under Metric::Dot,
// else the cosine. Instantiated for float, c10::Half and c10::BFloat16.
template <typename scalar_t>
cudaError_t launch_pair_scores(const scalar_t* x, const scalar_t* y, const int64_t* rows, const int64_t* cols,
                               int64_t P, int64_t D, Metric metric, float* out, cudaStream_t stream);

}  // namespace sentfuse
