// CPU registration of contrastive_loss (the tile loops: common/contrastive_loss.cpp). The GEMMs are torch's
// (oneDNN / MKL), parallel on torch's thread pool.
#include <torch/library.h>

#include "common/contrastive_loss.h"

namespace sentfuse {
namespace {

// 4M fp32 logits (16 MB) per tile: L2/L3-sized, and large enough that each GEMM keeps every core busy.
constexpr int64_t kCpuTileElems = int64_t{1} << 22;

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_loss_cpu(const at::Tensor& anchors,
                                                                    const at::Tensor& candidates, double scale,
                                                                    bool symmetric) {
  return contrastive_loss_tiled(anchors, candidates, scale, symmetric, contrastive_tile_elems(kCpuTileElems));
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_backward_cpu(const at::Tensor& grad_loss,
                                                                 const at::Tensor& anchors,
                                                                 const at::Tensor& candidates,
                                                                 const at::Tensor& row_lse, const at::Tensor& col_lse,
                                                                 double scale, bool symmetric) {
  return contrastive_loss_backward_tiled(grad_loss, anchors, candidates, row_lse, col_lse, scale, symmetric,
                                         contrastive_tile_elems(kCpuTileElems));
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) {
  m.impl("contrastive_loss", &contrastive_loss_cpu);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward_cpu);
}

}  // namespace sentfuse
