// Launch helpers shared by the .cu files.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

namespace sentfuse {

// A kernel's static plus dynamic shared memory may reach 48 KB unless it opts in to more (up to the
// card's per-block limit, e.g. 227 KB on sm_90). Call before a launch that may need more.
template <typename Kernel>
cudaError_t allow_dynamic_smem(Kernel kernel, size_t smem) {
  cudaFuncAttributes attributes{};
  if (const cudaError_t err = cudaFuncGetAttributes(&attributes, kernel); err != cudaSuccess) return err;
  if (smem + attributes.sharedSizeBytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

}  // namespace sentfuse
