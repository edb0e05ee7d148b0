// cosine_topk's fused scan: the score tiles never leave the SMs.
//
// 1. Seed: the exact k-th best score of each query over the corpus's first seed_rows(k) rows (the tiled
//    path on that slice, with the call's self-exclusion and min_score) is a lower bound T_q on the query's
//    final k-th best.
// 2. Filter: one tensor-core pass over the whole corpus (cuda/pair_gemm.cuh, the kernel threshold_pairs'
//    fused scan uses) keeps (q, j) only where its 16-bit score plus the rounding bound reaches T_q. A
//    dropped j scores exactly below T_q, hence below the k-th best: it cannot be in the answer, not even
//    tied. The seed rows themselves pass, so every query keeps at least k candidates.
// 3. Rescore the candidates in fp32 and select: sort by (query, score descending, corpus row), keep the
//    first k of each query. On random data about k * N / seed_rows candidates per query survive.
// The bound is taken twice: T_q is an fp32 score summed in the tiled path's order, the candidates'
// in rescore_pairs_kernel's, and each may be off by one rescoring error.
#include "cuda/topk_fused.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>

#include "cuda/pair_gemm.cuh"
#include "cuda/pair_scan.cuh"
#include "cuda/tile_gemm.cuh"
#include "cuda/topk.h"

namespace sentfuse {
namespace {

constexpr int64_t kMinSeedRows = 16384;
constexpr int64_t kMaxFusedK = 1024;
// Queries per filter launch (one host sync each for the candidate count).
constexpr int64_t kQueriesPerLaunch = 64 * pair_gemm::kBlockRows;
// Past this many candidates per query the seed filters too little (near-duplicate corpora, a low
// min_score): the tiled scan, whose memory does not follow the candidates, takes over.
constexpr int64_t kMaxKeysPerQuery = 16384;
constexpr int64_t kFirstKeys = int64_t{1} << 20;

int64_t seed_rows(int64_t k) { return std::max(kMinSeedRows, 64 * k); }

// (scores [m, k] fp32, indices [m, k] int64) from rescored candidates grouped by query: the best k of each
// query, higher score first, then lower corpus row; -inf / -1 where a query has fewer.
std::tuple<at::Tensor, at::Tensor> select_candidates(const at::Tensor& rows, const at::Tensor& cols,
                                                     const at::Tensor& scores, int64_t m, int64_t k,
                                                     int64_t corpus_offset) {
  // rows/cols arrive in (row, col) order; two stable sorts give (row, score descending, col).
  const auto by_score = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto rows_s = rows.index_select(0, by_score);
  const auto by_row = std::get<1>(at::sort(rows_s, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  const auto order = by_score.index_select(0, by_row);
  const auto q = rows.index_select(0, order);
  const auto counts = at::bincount(q, /*weights=*/{}, /*minlength=*/m);
  const auto starts = at::cumsum(counts, 0) - counts;
  const auto rank = at::arange(q.size(0), q.options()) - starts.index_select(0, q);
  const auto keep = rank < k;
  const auto slots = (q * k + rank).masked_select(keep);
  auto out_scores = at::full({m, k}, -std::numeric_limits<float>::infinity(), scores.options());
  auto out_indices = at::full({m, k}, -1, rows.options());
  out_scores.view(-1).index_put_({slots}, scores.index_select(0, order).masked_select(keep));
  out_indices.view(-1).index_put_({slots}, cols.index_select(0, order).masked_select(keep) + corpus_offset);
  return {out_scores, out_indices};
}

}  // namespace

bool fused_topk_requested() {
  const char* value = std::getenv("SENTFUSE_CUDA_TOPK");
  return value != nullptr && std::string_view(value) == "fused";
}

bool fused_topk_fits(int64_t n, int64_t k) { return k >= 1 && k <= kMaxFusedK && n >= 4 * seed_rows(k); }

std::optional<std::tuple<at::Tensor, at::Tensor>> fused_topk(const at::Tensor& queries, const at::Tensor& corpus,
                                                             int64_t k, Metric metric, bool exclude_self,
                                                             float min_score, int64_t query_offset,
                                                             int64_t corpus_offset, bool& nonfinite) {
  const int64_t m = queries.size(0), n = corpus.size(0);
  // 1. Seed (never fused itself: the slice is below fused_topk_fits' size).
  auto seeded = run_cosine_topk(queries, corpus.narrow(0, 0, seed_rows(k)), k, metric, exclude_self, min_score,
                                query_offset, corpus_offset, /*bf16_rescore=*/false);
  if (!seeded.has_value()) {
    nonfinite = true;
    return std::nullopt;
  }
  const auto thresholds = std::get<0>(*seeded).select(1, k - 1).contiguous();  // [m]; -inf: fewer than k
  if (thresholds.min().item<float>() == -std::numeric_limits<float>::infinity()) return std::nullopt;

  // 2. Filter.
  const auto query_norms = gemm::row_norms(queries);
  const auto corpus_norms = gemm::row_norms(corpus);
  auto filter = pair_gemm::plan_filter(queries, query_norms, corpus_norms, /*self=*/false, metric);
  if (!filter.has_value()) return std::nullopt;
  auto flag = at::zeros({1}, queries.options().dtype(at::kInt));
  pair_gemm::PairFilter f = *filter;
  f.relative_bound *= 2;
  f.num_cols = n;
  f.row_thresholds = thresholds.const_data_ptr<float>();
  f.nonfinite = flag.mutable_data_ptr<int>();
  const auto [q16, c16] = pair_gemm::filter_operands(queries, corpus, /*self=*/false, query_norms, corpus_norms);
  auto keys = at::empty({kFirstKeys}, queries.options().dtype(at::kLong));
  auto count = at::zeros({1}, keys.options());
  std::vector<at::Tensor> found_keys;
  for (int64_t r0 = 0; r0 < m; r0 += kQueriesPerLaunch) {
    const int64_t r1 = std::min(r0 + kQueriesPerLaunch, m);
    const int64_t max_keys = (r1 - r0) * kMaxKeysPerQuery;
    const int64_t found = pair_gemm::run_filter(q16, c16, r0, r1, 0, f, keys, count, max_keys);
    if (found > max_keys) return std::nullopt;
    found_keys.push_back(keys.narrow(0, 0, found).clone());
  }

  // 3. Rescore and select.
  const auto sorted = std::get<0>(at::sort(at::cat(found_keys)));
  const auto scores = pair_gemm::rescore_keys(queries, corpus, sorted, query_norms, corpus_norms, metric, flag);
  if (flag.item<int>() != 0) {
    nonfinite = true;
    return std::nullopt;
  }
  const auto rows = at::div(sorted, n, "floor"), cols = at::remainder(sorted, n);
  auto valid = scores >= min_score;
  if (exclude_self) valid &= (rows + query_offset) != (cols + corpus_offset);
  return select_candidates(rows.masked_select(valid), cols.masked_select(valid), scores.masked_select(valid), m, k,
                           corpus_offset);
}

}  // namespace sentfuse
