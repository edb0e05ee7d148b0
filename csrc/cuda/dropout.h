// Launcher of the CUDA dropout kernel (dropout.cu), called by the host entry point (dropout.cpp).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace sentfuse {

// out[i] = keep(seed, i) ? x[i] * scale : 0 (+ residual[i] when residual is not null), numel elements,
// contiguous; residual is read in out_t.
template <typename in_t, typename out_t>
cudaError_t launch_dropout(const in_t* x, const out_t* residual, out_t* out, int64_t numel, uint64_t seed,
                           uint64_t threshold, float scale, cudaStream_t stream);

}  // namespace sentfuse
