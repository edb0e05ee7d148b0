// CUDA registration of contrastive_loss (the tile loops: common/contrastive_loss.cpp): cuBLAS GEMMs and ATen's
// element-wise kernels on the current stream, under the inputs' device guard.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/contrastive_loss.h"

namespace sentfuse {
namespace {

// 16M fp32 logits (64 MB) per tile: enough rows per GEMM to fill the GPU at any candidate count.
constexpr int64_t kCudaTileElems = int64_t{1} << 24;

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_loss_cuda(const at::Tensor& anchors,
                                                                     const at::Tensor& candidates, double scale,
                                                                     bool symmetric) {
  const c10::cuda::CUDAGuard guard(anchors.device());
  return contrastive_loss_tiled(anchors, candidates, scale, symmetric, contrastive_tile_elems(kCudaTileElems));
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_backward_cuda(const at::Tensor& grad_loss,
                                                                  const at::Tensor& anchors,
                                                                  const at::Tensor& candidates,
                                                                  const at::Tensor& row_lse,
                                                                  const at::Tensor& col_lse, double scale,
                                                                  bool symmetric) {
  const c10::cuda::CUDAGuard guard(anchors.device());
  return contrastive_loss_backward_tiled(grad_loss, anchors, candidates, row_lse, col_lse, scale, symmetric,
                                         contrastive_tile_elems(kCudaTileElems));
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) {
  m.impl("contrastive_loss", &contrastive_loss_cuda);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward_cuda);
}

}  // namespace sentfuse
