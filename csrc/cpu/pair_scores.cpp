// CPU pair_scores: the fp32 score of each listed (row, col) pair, one dot product per pair.
//
// Used to rescore candidate pairs found on a cheaper bound (python/sentfuse/prune.py), where gathering
// the rows into tensors first would move every candidate's vectors through memory three times.
#include <algorithm>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "cpu/row_dot.h"

namespace sentfuse {
namespace {

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
        o[p] = score_metric == Metric::Dot ? row_dot<false>(x + r[p] * D, y + c[p] * D, D)
                                           : row_dot<true>(x + r[p] * D, y + c[p] * D, D);
    });
  });
  if (!at::isfinite(out).all().item<bool>()) fail_non_finite("pair_scores", "a or b (in a listed row)");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("pair_scores", &pair_scores_cpu); }

}  // namespace sentfuse
