// CPU cosine_topk: tiled GEMM + running top-k per query, never the full [M, N] score matrix.
//
// Each tile of scores comes from one GEMM call (tiles::TileScorer) on the calling thread, so it threads well
// (BLAS calls made from inside at::parallel_for either oversubscribe or run single-threaded).
// Tiles are at most 16 MB: large enough for BLAS to run near its peak, far from M x N. Selection then
// runs in parallel over the tile's query rows: each query keeps a bounded heap, and most
// candidates are rejected by one vectorized compare against its current k-th best score.
// bf16_rescore takes the bf16 scan instead (cpu/topk_bf16.cpp): bf16 tiles on the matrix units, a provable
// superset of the answer rescored in fp32, so the result is the same as the fp32 path's.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/bounds.h"
#include "common/checks.h"
#include "cpu/score_tiles.h"
#include "cpu/topk_bf16.h"
#include "cpu/topk_select.h"
#include "cpu/widen.h"

namespace sentfuse {
namespace {

// Feeds one query's tile row (n scores for corpus rows first_index...) to its top-k.
// `skip` is a tile column to ignore (exclude_self) or -1. Returns false on a non-finite score.
inline bool select_row(const float* scores, int64_t n, int64_t first_index, int64_t skip, TopK& top) {
  int64_t j = 0;
  for (; j < n; j += tiles::kRejectChunk) {
    const int64_t end = std::min(j + tiles::kRejectChunk, n);
    if (!tiles::chunk_needs_look<false>(scores + j, end - j, top.threshold())) continue;
    for (int64_t t = j; t < end; ++t) {
      const float s = scores[t];
      if (!std::isfinite(s)) return false;
      if (t != skip && s > top.threshold()) top.push(s, first_index + t);
    }
  }
  return true;
}

// Writes a query's kept candidates best first into out rows, padding with (-inf, -1).
void write_sorted(std::vector<Candidate>& kept, int64_t k_out, int64_t corpus_offset, float* scores,
                  int64_t* indices) {
  std::sort(kept.begin(), kept.end(), ranks_before);
  const int64_t n = std::min<int64_t>(k_out, kept.size());
  for (int64_t t = 0; t < n; ++t) {
    scores[t] = kept[t].score;
    indices[t] = kept[t].index + corpus_offset;
  }
  for (int64_t t = n; t < k_out; ++t) {
    scores[t] = -std::numeric_limits<float>::infinity();
    indices[t] = -1;
  }
}

constexpr int64_t kWidenRows = 4096;  // 6 MB of fp32 at D = 384

// Scores every (query, corpus row) pair tile by tile and feeds query i's scores to tops[i]. q [M, D] is fp32;
// for Metric::Cosine, q rows are unit vectors and tile columns are scaled by 1 / ||corpus row||.
// Returns false on a non-finite score.
bool scan_scores(const at::Tensor& q, const at::Tensor& corpus, Metric metric, bool exclude_self,
                 int64_t query_offset, int64_t corpus_offset, std::vector<TopK>& tops) {
  const int64_t M = q.size(0), N = corpus.size(0);
  const int64_t query_tile = std::min(M, tiles::kRows);
  // A 16-bit corpus is widened tile by tile into one buffer of at most kWidenRows rows (see widen.h).
  const bool widen = corpus.scalar_type() != at::kFloat;
  const int64_t corpus_tile = std::min(tiles::columns(query_tile, N), widen ? kWidenRows : N);
  const at::Tensor widened = widen ? at::empty({corpus_tile * corpus.size(1)}, q.options()) : at::Tensor();
  const tiles::TileScorer score_tile(query_tile, corpus_tile, q.options());
  std::atomic<bool> non_finite{false};

  // Corpus tiles outer, query tiles inner: each corpus tile is read from memory once.
  for (int64_t j0 = 0; j0 < N && !non_finite; j0 += corpus_tile) {
    const int64_t n = std::min(corpus_tile, N - j0);
    const at::Tensor rows = corpus.narrow(0, j0, n);
    const at::Tensor block = widen ? widen_into(rows, widened.narrow(0, 0, rows.numel())) : rows;
    const at::Tensor column_scale = metric == Metric::Dot ? at::Tensor() : tiles::inverse_norms(block);
    for (int64_t i0 = 0; i0 < M; i0 += query_tile) {
      const int64_t m = std::min(query_tile, M - i0);
      at::Tensor scores = score_tile(q.narrow(0, i0, m), block);
      if (column_scale.defined()) scores.mul_(column_scale);
      const float* tile = scores.data_ptr<float>();
      const int64_t row_stride = scores.stride(0);
      at::parallel_for(0, m, std::max<int64_t>(1, 32768 / n), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t self = exclude_self ? i0 + r + query_offset - corpus_offset - j0 : -1;
          const int64_t skip = (self >= 0 && self < n) ? self : -1;
          if (!select_row(tile + r * row_stride, n, j0, skip, tops[i0 + r])) non_finite = true;
        }
      });
    }
  }
  return !non_finite;
}

std::tuple<at::Tensor, at::Tensor> cosine_topk_cpu(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                                   c10::string_view metric, bool exclude_self,
                                                   std::optional<double> min_score, int64_t query_offset,
                                                   int64_t corpus_offset, bool bf16_rescore) {
  const auto [k_out, score_metric] = check_cosine_topk_args(queries, corpus, k, metric, min_score);
  const int64_t M = queries.size(0);
  at::Tensor out_scores = at::empty({M, k_out}, queries.options().dtype(at::kFloat));
  at::Tensor out_indices = at::empty({M, k_out}, queries.options().dtype(at::kLong));
  if (M == 0 || k_out == 0) return {out_scores, out_indices};

  // Queries become fp32 unit vectors once; corpus norms are applied per tile, to its columns.
  at::Tensor q = queries.to(at::kFloat);
  if (score_metric == Metric::Cosine) q = q * tiles::inverse_norms(q).unsqueeze(1);
  q = q.contiguous();

  const float floor = min_score.has_value() ? strict_floor(*min_score) : -std::numeric_limits<float>::infinity();
  std::vector<Candidate> slots(M * k_out);  // each query's heap; the result's own size
  std::vector<TopK> tops;
  tops.reserve(M);
  for (int64_t i = 0; i < M; ++i) tops.emplace_back(slots.data() + i * k_out, k_out, floor);
  const float lowest = min_score.has_value() ? fp32_bound(*min_score) : -std::numeric_limits<float>::infinity();
  const bool finite = bf16_rescore ? bf16_scan(q, corpus, k_out, score_metric, exclude_self, query_offset,
                                               corpus_offset, lowest, tops)
                                   : scan_scores(q, corpus, score_metric, exclude_self, query_offset, corpus_offset,
                                                 tops);
  if (!finite) fail_non_finite("cosine_topk", "queries or corpus");

  float* score_out = out_scores.data_ptr<float>();
  int64_t* index_out = out_indices.data_ptr<int64_t>();
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> kept;
    for (int64_t i = begin; i < end; ++i) {
      kept.assign(slots.data() + i * k_out, slots.data() + i * k_out + tops[i].size());
      write_sorted(kept, k_out, corpus_offset, score_out + i * k_out, index_out + i * k_out);
    }
  });
  return {out_scores, out_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("cosine_topk", &cosine_topk_cpu); }

}  // namespace sentfuse
