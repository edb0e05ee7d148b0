// contrastive_loss's forward and backward, written once with ATen ops: the CPU and CUDA registrations
// (cpu/contrastive_loss.cpp, cuda/contrastive_loss.cpp) run them with their own GEMM (oneDNN / MKL, cuBLAS)
// and differ only in how many logits one tile may hold.
//
// Scores are scale * cos(anchor i, candidate j). Anchors are taken tile_elems / C rows at a time, so at most
// one [rows, C] tile of logits exists at once; the backward pass recomputes each tile from the normalized
// rows and the saved per-row (and, when symmetric, per-column) logsumexp instead of keeping the logits.
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace sentfuse {

// anchors [B, D], candidates [B * (1 + n), D] -> (loss [] fp32, row_lse [B] fp32, col_lse [B] fp32 when
// symmetric, else [0]): row_lse[i] = logsumexp_j s[i, j], col_lse[j] = logsumexp_i s[i, j] for j < B.
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_loss_tiled(const at::Tensor& anchors,
                                                                      const at::Tensor& candidates, double scale,
                                                                      bool symmetric, int64_t tile_elems);

// grad_loss [] and the forward's row_lse / col_lse -> (grad_anchors [B, D], grad_candidates [C, D]) in the
// inputs' dtype.
std::tuple<at::Tensor, at::Tensor> contrastive_loss_backward_tiled(const at::Tensor& grad_loss,
                                                                   const at::Tensor& anchors,
                                                                   const at::Tensor& candidates,
                                                                   const at::Tensor& row_lse,
                                                                   const at::Tensor& col_lse, double scale,
                                                                   bool symmetric, int64_t tile_elems);

// The tile budget (logits per tile) a backend uses, unless SENTFUSE_CONTRASTIVE_TILE_ELEMS overrides it (tests
// use a small one to run many tiles on small inputs).
int64_t contrastive_tile_elems(int64_t backend_default);

}  // namespace sentfuse
