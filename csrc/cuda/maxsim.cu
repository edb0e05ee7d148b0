// CUDA kernels of the maxsim ops: the fold of a GEMM score tile into MaxSim scores, and a direct kernel for
// the candidates form (each query against its own few documents, where a GEMM tile would waste work).
#include <cfloat>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/maxsim.h"

namespace sentfuse {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

__device__ inline float to_float(float x) { return x; }
__device__ inline float to_float(__half x) { return __half2float(x); }
__device__ inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sums each warp's partial (lane 0 holds it) over the block; thread 0 gets the total.
__device__ inline float block_sum(float partial, float* smem) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) smem[warp] = partial;
  __syncthreads();
  float total = 0.f;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) total += smem[w];
  return total;
}

// One block per (document d0 + blockIdx.x, query blockIdx.y); warps take the query's rows in turn, lanes the
// document's columns. sim: [Tq, cols].
template <typename T>
__global__ void maxsim_fold_kernel(const T* __restrict sim, int64_t cols, const int64_t* __restrict q_offsets,
                                   const float* __restrict scale, const int64_t* __restrict doc_offsets, int64_t d0,
                                   float* __restrict out, int64_t ldo) {
  __shared__ float partials[kWarps];
  const int64_t d = d0 + blockIdx.x, q = blockIdx.y;
  const int64_t c0 = doc_offsets[d] - doc_offsets[d0], c1 = doc_offsets[d + 1] - doc_offsets[d0];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float acc = 0.f;
  for (int64_t r = q_offsets[q] + warp; r < q_offsets[q + 1]; r += kWarps) {
    float m = -FLT_MAX;
    for (int64_t c = c0 + lane; c < c1; c += 32) m = fmaxf(m, to_float(sim[r * cols + c]));
    m = warp_max(m);
    acc += m;  // every lane holds the same maximum; lane 0's copy is summed below
  }
  const float total = block_sum(acc, partials);
  if (threadIdx.x == 0) out[q * ldo + blockIdx.x] = total * scale[q];
}

// One block per (candidate blockIdx.x, query blockIdx.y); warps take the query's rows, and for each document
// token the warp's lanes split the dot product over D. Products round to T as a GEMM's output does.
template <typename T>
__global__ void maxsim_candidates_kernel(const T* __restrict queries, const T* __restrict docs, int64_t D,
                                         const int64_t* __restrict q_offsets, const float* __restrict scale,
                                         const int64_t* __restrict doc_offsets, const int64_t* __restrict candidates,
                                         int64_t C, float* __restrict out) {
  __shared__ float partials[kWarps];
  const int64_t q = blockIdx.y, c = blockIdx.x, d = candidates[q * C + c];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float acc = 0.f;
  for (int64_t r = q_offsets[q] + warp; r < q_offsets[q + 1]; r += kWarps) {
    float m = -FLT_MAX;
    for (int64_t t = doc_offsets[d]; t < doc_offsets[d + 1]; ++t) {
      float dot = 0.f;
      for (int64_t k = lane; k < D; k += 32) dot += to_float(queries[r * D + k]) * to_float(docs[t * D + k]);
      m = fmaxf(m, to_float(static_cast<T>(warp_sum(dot))));
    }
    acc += m;
  }
  const float total = block_sum(acc, partials);
  if (threadIdx.x == 0) out[q * C + c] = total * scale[q];
}

}  // namespace

cudaError_t launch_maxsim_fold(const void* sim, MaxSimDtype dtype, int64_t cols, const int64_t* q_offsets,
                               const float* scale, int64_t Q, const int64_t* doc_offsets, int64_t d0, int64_t d1,
                               float* out, int64_t ldo, cudaStream_t stream) {
  if (Q == 0 || d1 <= d0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(d1 - d0), static_cast<unsigned>(Q));
  switch (dtype) {
    case MaxSimDtype::Float:
      maxsim_fold_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const float*>(sim), cols, q_offsets, scale,
                                                         doc_offsets, d0, out, ldo);
      break;
    case MaxSimDtype::Half:
      maxsim_fold_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const __half*>(sim), cols, q_offsets, scale,
                                                         doc_offsets, d0, out, ldo);
      break;
    case MaxSimDtype::BFloat16:
      maxsim_fold_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(sim), cols, q_offsets,
                                                         scale, doc_offsets, d0, out, ldo);
      break;
  }
  return cudaGetLastError();
}

cudaError_t launch_maxsim_candidates(const void* queries, const void* docs, MaxSimDtype dtype, int64_t D,
                                     const int64_t* q_offsets, const float* scale, int64_t Q,
                                     const int64_t* doc_offsets, const int64_t* candidates, int64_t C, float* out,
                                     cudaStream_t stream) {
  if (Q == 0 || C == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(Q));
  switch (dtype) {
    case MaxSimDtype::Float:
      maxsim_candidates_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const float*>(queries),
                                                               static_cast<const float*>(docs), D, q_offsets, scale,
                                                               doc_offsets, candidates, C, out);
      break;
    case MaxSimDtype::Half:
      maxsim_candidates_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const __half*>(queries),
                                                               static_cast<const __half*>(docs), D, q_offsets, scale,
                                                               doc_offsets, candidates, C, out);
      break;
    case MaxSimDtype::BFloat16:
      maxsim_candidates_kernel<<<grid, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(queries),
                                                               static_cast<const __nv_bfloat16*>(docs), D, q_offsets,
                                                               scale, doc_offsets, candidates, C, out);
      break;
  }
  return cudaGetLastError();
}

}  // namespace sentfuse
