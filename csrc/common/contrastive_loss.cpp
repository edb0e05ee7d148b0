// See contrastive_loss.h. Arithmetic is fp32 whatever the inputs' dtype.
#include "common/contrastive_loss.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <utility>

#include <ATen/ATen.h>

#include "common/bounds.h"
#include "common/checks.h"

namespace sentfuse {
namespace {

// x [N, D] -> (x / max(|x|, eps) in fp32, |x| [N, 1]): F.normalize, keeping the unclamped norm for backward.
std::pair<at::Tensor, at::Tensor> unit_rows(const at::Tensor& x) {
  const at::Tensor xf = x.to(at::kFloat);
  at::Tensor norm = at::linalg_vector_norm(xf, 2, {1}, /*keepdim=*/true);
  return {xf / norm.clamp_min(kNormEps), std::move(norm)};
}

// d(loss)/dx from d(loss)/d(unit) through unit = x / max(|x|, eps); below eps F.normalize's clamp passes no
// gradient to the norm, so only the division remains.
at::Tensor unit_rows_backward(const at::Tensor& unit, const at::Tensor& norm, const at::Tensor& d_unit) {
  const at::Tensor along = (unit * d_unit).sum(1, /*keepdim=*/true);
  const at::Tensor above = (d_unit - unit * along) / norm.clamp_min(kNormEps);
  return at::where(norm >= kNormEps, above, d_unit / kNormEps);
}

// Anchor rows per tile: as many as keep rows x cols logits within the budget, at least one.
int64_t tile_rows(int64_t rows, int64_t cols, int64_t tile_elems) {
  return std::clamp<int64_t>(tile_elems / std::max<int64_t>(cols, 1), 1, std::max<int64_t>(rows, 1));
}

// scale * cos of anchor rows [r0, r0 + n) against every candidate: [n, C] fp32.
at::Tensor score_tile(const at::Tensor& anchors_unit, const at::Tensor& candidates_unit, int64_t r0, int64_t n,
                      double scale) {
  return at::mm(anchors_unit.narrow(0, r0, n), candidates_unit.t()).mul_(scale);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_loss_tiled(const at::Tensor& anchors,
                                                                      const at::Tensor& candidates, double scale,
                                                                      bool symmetric, int64_t tile_elems) {
  const int64_t B = check_contrastive_loss_args(anchors, candidates, scale);
  const int64_t C = candidates.size(0);
  const auto [a, a_norm] = unit_rows(anchors);
  const auto [c, c_norm] = unit_rows(candidates);
  const auto opts = a.options();
  at::Tensor row_lse = at::empty({B}, opts), positive = at::empty({B}, opts);
  at::Tensor col_lse = symmetric ? at::full({B}, -std::numeric_limits<float>::infinity(), opts) : at::empty({0}, opts);
  const int64_t rows = tile_rows(B, C, tile_elems);
  for (int64_t r0 = 0; r0 < B; r0 += rows) {
    const int64_t n = std::min(rows, B - r0);
    const at::Tensor s = score_tile(a, c, r0, n, scale);  // [n, C]
    row_lse.narrow(0, r0, n).copy_(at::logsumexp(s, {1}));
    positive.narrow(0, r0, n).copy_(s.narrow(1, r0, n).diagonal());
    // Candidate j < B against every anchor (the symmetric direction), folded tile by tile.
    if (symmetric) col_lse.copy_(at::logaddexp(col_lse, at::logsumexp(s.narrow(1, 0, B), {0})));
  }
  at::Tensor loss = (row_lse - positive).mean();
  if (symmetric) loss = (loss + (col_lse - positive).mean()) * 0.5;
  return {loss, row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor> contrastive_loss_backward_tiled(const at::Tensor& grad_loss,
                                                                   const at::Tensor& anchors,
                                                                   const at::Tensor& candidates,
                                                                   const at::Tensor& row_lse,
                                                                   const at::Tensor& col_lse, double scale,
                                                                   bool symmetric, int64_t tile_elems) {
  const int64_t B = check_contrastive_loss_args(anchors, candidates, scale);
  check_contrastive_loss_saved(grad_loss, row_lse, col_lse, B, symmetric, anchors);
  const int64_t C = candidates.size(0);
  const auto [a, a_norm] = unit_rows(anchors);
  const auto [c, c_norm] = unit_rows(candidates);
  // d(loss)/d(s[i, j]) = w * (softmax_j(s[i]) - [i == j]) + (symmetric) w * (softmax_i(s[:, j]) - [i == j]),
  // w = grad / B (halved when symmetric); the chain rule through s = scale * a . c adds the factor scale.
  const at::Tensor w = grad_loss.to(at::kFloat).reshape({}) * (scale / (symmetric ? 2.0 * B : double(B)));
  at::Tensor d_a = at::empty_like(a), d_c = at::zeros_like(c);
  const int64_t rows = tile_rows(B, C, tile_elems);
  for (int64_t r0 = 0; r0 < B; r0 += rows) {
    const int64_t n = std::min(rows, B - r0);
    at::Tensor p = score_tile(a, c, r0, n, scale);  // [n, C] scores, turned into d(loss)/ds * scale in place
    at::Tensor column_softmax;                        // [n, B]
    if (symmetric) column_softmax = (p.narrow(1, 0, B) - col_lse.unsqueeze(0)).exp_();
    p.sub_(row_lse.narrow(0, r0, n).unsqueeze(1)).exp_();
    if (symmetric) p.narrow(1, 0, B).add_(column_softmax);
    p.narrow(1, r0, n).diagonal().sub_(symmetric ? 2.0 : 1.0);
    p.mul_(w);
    at::Tensor d_a_tile = d_a.narrow(0, r0, n);  // contiguous rows
    at::mm_out(d_a_tile, p, c);
    d_c.addmm_(p.t(), a.narrow(0, r0, n));
  }
  return {unit_rows_backward(a, a_norm, d_a).to(anchors.scalar_type()),
          unit_rows_backward(c, c_norm, d_c).to(candidates.scalar_type())};
}

int64_t contrastive_tile_elems(int64_t backend_default) {
  if (const char* env = std::getenv("SENTFUSE_CONTRASTIVE_TILE_ELEMS")) {
    const long long v = std::atoll(env);
    if (v > 0) return v;
  }
  return backend_default;
}

}  // namespace sentfuse
