// CPU pair_scores: the fp32 score of each listed (row, col) pair, one dot product per pair.
//
// Used to rescore candidate pairs found on a cheaper bound (python/sentfuse/prune.py), where gathering
// the rows into tensors first would move every candidate's vectors through memory three times.
#include <algorithm>
#include <cmath>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "cpu/load_float.h"

namespace sentfuse {
namespace {

constexpr int kLanes = 8;  // independent partial sums, so the loop vectorizes without reassociating

// x . y over D features with fp32 accumulation; also |x|^2 and |y|^2 when kNorms.
template <bool kNorms, typename scalar_t>
inline float pair_score(const scalar_t* x, const scalar_t* y, int64_t D) {
  float dot[kLanes] = {}, xx[kLanes] = {}, yy[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float u = load_float(x, d + l), v = load_float(y, d + l);
      dot[l] += u * v;
      if (kNorms) xx[l] += u * u, yy[l] += v * v;
    }
  }
  for (int l = 0; d < D; ++d, ++l) {
    const float u = load_float(x, d), v = load_float(y, d);
    dot[l] += u * v;
    if (kNorms) xx[l] += u * u, yy[l] += v * v;
  }
  float s = 0.f, nx = 0.f, ny = 0.f;
  for (int l = 0; l < kLanes; ++l) s += dot[l], nx += xx[l], ny += yy[l];
  if (!kNorms) return s;
  if (nx > 0.f && ny > 0.f) return s / (std::sqrt(nx) * std::sqrt(ny));
  return std::isfinite(nx + ny) ? 0.f : NAN;  // a zero vector scores 0; NaN input stays visible
}

at::Tensor pair_scores_cpu(const at::Tensor& a_in, const std::optional<at::Tensor>& b_in, const at::Tensor& rows_in,
                           const at::Tensor& cols_in, c10::string_view metric) {
  const Metric score_metric = check_pair_scores_args(a_in, b_in, rows_in, cols_in, metric);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.has_value() ? b_in->contiguous() : a;
  const at::Tensor rows = rows_in.contiguous(), cols = cols_in.contiguous();
  const int64_t P = rows.size(0), D = a.size(1);
  at::Tensor out = at::empty({P}, a.options().dtype(at::kFloat));
  if (P == 0) return out;
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* c = cols.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  SENTFUSE_DISPATCH_FLOAT_TYPES(a.scalar_type(), "sentfuse_pair_scores_cpu", [&] {
    const scalar_t* x = a.data_ptr<scalar_t>();
    const scalar_t* y = b.data_ptr<scalar_t>();
    at::parallel_for(0, P, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p)
        o[p] = score_metric == Metric::Dot ? pair_score<false>(x + r[p] * D, y + c[p] * D, D)
                          : pair_score<true>(x + r[p] * D, y + c[p] * D, D);
    });
  });
  if (!at::isfinite(out).all().item<bool>()) fail_non_finite("pair_scores", "a or b (in a listed row)");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("pair_scores", &pair_scores_cpu); }

}  // namespace sentfuse
