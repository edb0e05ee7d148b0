// CPU cosine_topk: tiled GEMM + running top-k per query, never the full [M, N] score matrix.
//
// Each tile of scores comes from one GEMM call (tiles::TileScorer) on the calling thread, so it threads well
// (BLAS calls made from inside at::parallel_for either oversubscribe or run single-threaded).
// Tiles are at most 16 MB: large enough for BLAS to run near its peak, far from M x N. Selection then
// runs in parallel over the tile's query rows: each query keeps a bounded heap, and most
// candidates are rejected by one vectorized compare against its current k-th best score.
// bf16_rescore scores bf16 tiles (matrix units where the CPU has them) and rescores a provable
// superset of the answer in fp32, so the result is the same as the fp32 path's.
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

namespace sentfuse {
namespace {

struct Candidate {
  float score;
  int64_t index;
};

// True when a ranks before b: higher score first, then lower index (stable ties).
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// A query's best-k so far: a heap whose root is the worst kept candidate.
class TopK {
 public:
  TopK(Candidate* slots, int64_t k, float floor) : slots_(slots), k_(k), floor_(floor), threshold_(floor) {}

  // Scores must exceed this to matter (the k-th best once full, else the min_score floor).
  float threshold() const { return threshold_; }
  int64_t size() const { return size_; }

  // Candidates arrive in increasing index order, so an equal score never displaces a kept one.
  void push(float score, int64_t index) {
    if (size_ < k_) {
      slots_[size_++] = {score, index};
      std::push_heap(slots_, slots_ + size_, ranks_before);
      if (size_ == k_) threshold_ = std::max(floor_, slots_[0].score);
    } else if (score > slots_[0].score) {
      std::pop_heap(slots_, slots_ + size_, ranks_before);
      slots_[size_ - 1] = {score, index};
      std::push_heap(slots_, slots_ + size_, ranks_before);
      threshold_ = std::max(floor_, slots_[0].score);
    }
  }

 private:
  Candidate* slots_;
  int64_t k_;
  int64_t size_ = 0;
  float floor_;
  float threshold_;
};

// Every score above a fixed floor, in index order: the candidates of the bf16 pass.
class Collector {
 public:
  explicit Collector(float floor) : floor_(floor) {}
  float threshold() const { return floor_; }
  void push(float, int64_t index) { indices.push_back(index); }
  std::vector<int64_t> indices;

 private:
  float floor_;
};

// Feeds one query's tile row (n scores for corpus rows first_index...) to its sink (TopK or Collector).
// `skip` is a tile column to ignore (exclude_self) or -1. Returns false on a non-finite score.
template <typename Sink>
inline bool select_row(const float* scores, int64_t n, int64_t first_index, int64_t skip, Sink& top) {
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

// Largest float below x: a strict `s > floor` then keeps every s >= x.
inline float strict_floor(double x) {
  return std::nextafter(fp32_bound(x), -std::numeric_limits<float>::infinity());
}

// Scores every (query, corpus row) pair tile by tile and feeds query i's scores to sinks[i].
// q [M, D] is fp32, or bf16 for the approximate pass (bf16 tiles, corpus rounded to bf16 too);
// for Metric::Cosine, q rows are unit vectors and tile columns are scaled by 1 / ||corpus row||.
// Returns false on a non-finite score.
template <typename Sink>
bool scan_scores(const at::Tensor& q, const at::Tensor& corpus, Metric metric, bool exclude_self,
                 int64_t query_offset, int64_t corpus_offset, std::vector<Sink>& sinks) {
  const int64_t M = q.size(0), N = corpus.size(0);
  const int64_t query_tile = std::min(M, tiles::kRows);
  const int64_t corpus_tile = tiles::columns(query_tile, N);
  const tiles::TileScorer score_tile(query_tile, corpus_tile, q.options());
  std::atomic<bool> non_finite{false};

  // Corpus tiles outer, query tiles inner: each corpus tile is read from memory once.
  for (int64_t j0 = 0; j0 < N && !non_finite; j0 += corpus_tile) {
    const int64_t n = std::min(corpus_tile, N - j0);
    const at::Tensor rows = corpus.narrow(0, j0, n);
    const at::Tensor block = rows.to(q.scalar_type());  // no copy when the dtypes agree
    const at::Tensor column_scale = metric == Metric::Dot ? at::Tensor() : tiles::inverse_norms(rows);
    for (int64_t i0 = 0; i0 < M; i0 += query_tile) {
      const int64_t m = std::min(query_tile, M - i0);
      // The approximate pass multiplies bf16 tiles; its fp32 scores are a new tensor per tile.
      at::Tensor scores = q.scalar_type() == at::kFloat ? score_tile(q.narrow(0, i0, m), block)
                                                        : at::mm(q.narrow(0, i0, m), block.t()).to(at::kFloat);
      if (column_scale.defined()) scores.mul_(column_scale);
      const float* tile = scores.data_ptr<float>();
      const int64_t row_stride = scores.stride(0);
      at::parallel_for(0, m, std::max<int64_t>(1, 32768 / n), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t self = exclude_self ? i0 + r + query_offset - corpus_offset - j0 : -1;
          const int64_t skip = (self >= 0 && self < n) ? self : -1;
          if (!select_row(tile + r * row_stride, n, j0, skip, sinks[i0 + r])) non_finite = true;
        }
      });
    }
  }
  return !non_finite;
}

// Bound on |bf16-tile score - fp32 score| per unit of |q| * |c|: both inputs rounded to bf16
// (2u + u^2), the bf16 result rounded once more (u), fp32 accumulation over D terms, 1% slack.
inline double bf16_error_bound(int64_t D) {
  const double u = std::ldexp(1.0, -8);  // bf16 unit roundoff
  return 1.01 * (3 * u + u * u + D * std::ldexp(1.0, -23));
}

// bf16_rescore: bf16 tiles find a superset of the answer, which is then rescored in fp32 into tops, so the
// result stays exact. Returns false on a non-finite score.
bool rescored_scan(const at::Tensor& q, const at::Tensor& corpus, Metric metric, bool exclude_self,
                   int64_t query_offset, int64_t corpus_offset, std::optional<double> min_score, int64_t k_out,
                   float floor, std::vector<TopK>& tops) {
  const int64_t M = q.size(0), N = corpus.size(0);
  // bf16 tiles find a superset of the answer, which is then rescored in fp32, so the result stays exact.
  // With |approx - exact| <= delta_i for query i: pass 1 finds a_k, the k-th best approximate score;
  // any row with approx < a_k - 2 delta scores below all k of those rows in fp32, and any row with
  // approx < min_score - delta scores below min_score, so pass 2 keeps every other row as a candidate.
  const double corpus_norm_max = metric == Metric::Dot && N > 0
                                     ? at::linalg_vector_norm(corpus, 2, {1}, false, at::kFloat).max().item<double>()
                                     : 1.0;
  const at::Tensor query_norms = at::linalg_vector_norm(q, 2, {1}, false, at::kDouble).contiguous();
  std::vector<double> delta(M);
  for (int64_t i = 0; i < M; ++i)
    delta[i] = bf16_error_bound(q.size(1)) * query_norms.data_ptr<double>()[i] * corpus_norm_max + 1e-30;
  const double lowest = -std::numeric_limits<double>::infinity();
  const at::Tensor q_bf16 = q.to(at::kBFloat16);

  std::vector<Candidate> approx_slots(M * k_out);
  std::vector<TopK> approx;
  approx.reserve(M);
  for (int64_t i = 0; i < M; ++i)
    approx.emplace_back(approx_slots.data() + i * k_out, k_out,
                        min_score.has_value() ? strict_floor(*min_score - delta[i]) : floor);
  bool finite = scan_scores(q_bf16, corpus, metric, exclude_self, query_offset, corpus_offset, approx);
  std::vector<Collector> candidates;
  candidates.reserve(M);
  for (int64_t i = 0; i < M; ++i) {
    const double kth = approx[i].size() == k_out ? approx[i].threshold() - 2 * delta[i] : lowest;
    candidates.emplace_back(strict_floor(std::max(kth, min_score.has_value() ? *min_score - delta[i] : lowest)));
  }
  if (finite)
    finite = scan_scores(q_bf16, corpus, metric, exclude_self, query_offset, corpus_offset, candidates);

  at::parallel_for(0, finite ? M : 0, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto& ids = candidates[i].indices;
      if (ids.empty()) continue;
      const at::Tensor rows = corpus.index_select(0, at::from_blob(const_cast<int64_t*>(ids.data()),
                                                                   {(int64_t)ids.size()}, at::kLong));
      at::Tensor exact = at::mv(rows.to(at::kFloat), q[i]);
      if (metric == Metric::Cosine) exact.mul_(tiles::inverse_norms(rows));
      const float* s = exact.data_ptr<float>();
      for (size_t t = 0; t < ids.size(); ++t)  // ids ascend, as TopK::push expects
        if (s[t] > tops[i].threshold()) tops[i].push(s[t], ids[t]);
    }
  });
  return finite;
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
  const bool finite = bf16_rescore ? rescored_scan(q, corpus, score_metric, exclude_self, query_offset, corpus_offset,
                                                   min_score, k_out, floor, tops)
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
