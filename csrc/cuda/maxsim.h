// The interface between cuda/maxsim.cpp (host entry points: C++ compiler) and cuda/maxsim.cu (kernels and
// launchers: nvcc). Launchers take already-checked raw parameters and never throw.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace sentfuse {

// Token storage of the score tile / inputs: fp32, fp16 or bf16.
enum class MaxSimDtype : int { Float = 0, Half, BFloat16 };

// sim [Tq, cols] (rows: packed query tokens, query q is rows q_offsets[q]:q_offsets[q + 1]; columns: the
// tokens of documents d0.., document d at columns doc_offsets[d] - doc_offsets[d0] ...) ->
// out[q * ldo + d - d0] = scale[q] * sum over q's rows of the max over d's columns, for d in [d0, d1).
cudaError_t launch_maxsim_fold(const void* sim, MaxSimDtype dtype, int64_t cols, const int64_t* q_offsets,
                               const float* scale, int64_t Q, const int64_t* doc_offsets, int64_t d0, int64_t d1,
                               float* out, int64_t ldo, cudaStream_t stream);

// queries [Tq, D] packed query tokens, docs [T, D], candidates [Q, C] document ids ->
// out[q, c] = scale[q] * sum over q's rows of the max dot product with document candidates[q, c]'s tokens.
cudaError_t launch_maxsim_candidates(const void* queries, const void* docs, MaxSimDtype dtype, int64_t D,
                                     const int64_t* q_offsets, const float* scale, int64_t Q,
                                     const int64_t* doc_offsets, const int64_t* candidates, int64_t C, float* out,
                                     cudaStream_t stream);

}  // namespace sentfuse
