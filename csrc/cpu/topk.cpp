// CPU cosine_topk: tiled GEMM + running top-k per query, never the full [M, N] score matrix.
//
// Work is split into (query part x corpus part) units, one per thread. Each unit walks its corpus
// part block by block (the block stays in cache while every query tile of the part scores against
// it), and keeps one bounded heap per query. Most candidates are rejected by a vectorized compare
// against the query's current k-th best score before any heap work. Units that share queries are
// merged at the end.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"
#include "topk_args.h"

namespace sentfuse {
namespace {

constexpr int64_t kQueryTile = 128;   // queries per GEMM tile
constexpr int64_t kCorpusTile = 1024;  // corpus rows per GEMM tile: a 128 x 1024 fp32 tile is 512 KB (L2)
constexpr int64_t kChunk = 16;        // scores tested per vectorized reject step

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

// Feeds one query's tile row (n scores for corpus rows first_index...) to its TopK.
// `skip` is a tile column to ignore (exclude_self) or -1. Returns false on a non-finite score.
inline bool select_row(const float* scores, int64_t n, int64_t first_index, int64_t skip, TopK& top) {
  int64_t j = 0;
  for (; j < n; j += kChunk) {
    const int64_t end = std::min(j + kChunk, n);
    const float threshold = top.threshold();
    // One branch-free pass per chunk: any score above threshold, or any NaN/inf (|s| <= FLT_MAX fails).
    int hit = 0;
    for (int64_t t = j; t < end; ++t) hit |= (scores[t] > threshold) | !(std::fabs(scores[t]) <= FLT_MAX);
    if (!hit) continue;
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

// 1 / ||row|| per row of x [R, D] (0 for a zero row, so its scores are 0 rather than NaN).
at::Tensor inverse_norms(const at::Tensor& x) {
  at::Tensor norms = at::linalg_vector_norm(x.to(at::kFloat), 2, {1});
  return at::where(norms > 0, norms.reciprocal(), at::zeros_like(norms));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cosine_topk_cpu(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                                   bool normalized, bool exclude_self,
                                                   std::optional<double> min_score, int64_t query_offset,
                                                   int64_t corpus_offset, bool bf16_rescore) {
  const int64_t k_out = check_cosine_topk_args(queries, corpus, k, min_score);
  const int64_t M = queries.size(0), N = corpus.size(0);
  at::Tensor out_scores = at::empty({M, k_out}, queries.options().dtype(at::kFloat));
  at::Tensor out_indices = at::empty({M, k_out}, queries.options().dtype(at::kLong));
  if (M == 0 || k_out == 0) return {out_scores, out_indices};

  // Queries become fp32 unit vectors once; corpus norms are applied per block, as tile column scales.
  at::Tensor q = queries.to(at::kFloat);
  if (!normalized) q = q * inverse_norms(q).unsqueeze(1);
  q = q.contiguous();

  // Split threads between query parts and corpus parts: queries first (no merge needed), the corpus
  // only when there are too few query tiles to keep every thread busy.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t query_parts = std::min(threads, (M + kQueryTile - 1) / kQueryTile);
  const int64_t corpus_parts = std::max<int64_t>(1, std::min(threads / query_parts, (N + kCorpusTile - 1) / kCorpusTile));
  const int64_t part_rows = (M + query_parts - 1) / query_parts;
  const int64_t part_corpus = ((N + corpus_parts - 1) / corpus_parts + kCorpusTile - 1) / kCorpusTile * kCorpusTile;

  const float floor = min_score.has_value()
                          ? std::nextafter(static_cast<float>(*min_score), -std::numeric_limits<float>::infinity())
                          : -std::numeric_limits<float>::infinity();
  // Heap slots for every (corpus part, query): corpus_parts * M * k candidates.
  std::vector<Candidate> slots(corpus_parts * M * k_out);
  std::vector<int64_t> sizes(corpus_parts * M, 0);
  std::atomic<bool> non_finite{false};

  at::parallel_for(0, query_parts * corpus_parts, 1, [&](int64_t unit_begin, int64_t unit_end) {
    at::Tensor tile = at::empty({kQueryTile, kCorpusTile}, q.options());
    for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
      const int64_t qp = unit / corpus_parts, cp = unit % corpus_parts;
      const int64_t q0 = qp * part_rows, q1 = std::min(M, q0 + part_rows);
      const int64_t c0 = cp * part_corpus, c1 = std::min(N, c0 + part_corpus);
      if (q0 >= q1 || c0 >= c1) continue;
      std::vector<TopK> tops;
      tops.reserve(q1 - q0);
      for (int64_t i = q0; i < q1; ++i)
        tops.emplace_back(slots.data() + (cp * M + i) * k_out, k_out, floor);

      for (int64_t j0 = c0; j0 < c1 && !non_finite; j0 += kCorpusTile) {
        const int64_t n = std::min(kCorpusTile, c1 - j0);
        const at::Tensor block = corpus.narrow(0, j0, n).to(at::kFloat);  // no copy for fp32 input
        const at::Tensor block_inv_norm = normalized ? at::Tensor() : inverse_norms(block);
        for (int64_t i0 = q0; i0 < q1; i0 += kQueryTile) {
          const int64_t m = std::min(kQueryTile, q1 - i0);
          at::Tensor scores = tile.narrow(0, 0, m).narrow(1, 0, n);
          at::mm_out(scores, q.narrow(0, i0, m), block.t());
          if (!normalized) scores.mul_(block_inv_norm);
          const float* rows = scores.data_ptr<float>();
          const int64_t row_stride = scores.stride(0);
          for (int64_t r = 0; r < m; ++r) {
            const int64_t self = exclude_self ? i0 + r + query_offset - corpus_offset - j0 : -1;
            const int64_t skip = (self >= 0 && self < n) ? self : -1;
            if (!select_row(rows + r * row_stride, n, j0, skip, tops[i0 + r - q0])) non_finite = true;
          }
        }
      }
      for (int64_t i = q0; i < q1; ++i) sizes[cp * M + i] = tops[i - q0].size();
    }
  });
  TORCH_CHECK_VALUE(!non_finite, "cosine_topk: queries ", queries.sizes(), " or corpus ", corpus.sizes(),
                    " contain NaN or inf");

  float* score_out = out_scores.data_ptr<float>();
  int64_t* index_out = out_indices.data_ptr<int64_t>();
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> kept;
    for (int64_t i = begin; i < end; ++i) {
      kept.clear();
      for (int64_t cp = 0; cp < corpus_parts; ++cp) {
        const Candidate* part = slots.data() + (cp * M + i) * k_out;
        kept.insert(kept.end(), part, part + sizes[cp * M + i]);
      }
      write_sorted(kept, k_out, corpus_offset, score_out + i * k_out, index_out + i * k_out);
    }
  });
  return {out_scores, out_indices};
}

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("cosine_topk", &cosine_topk_cpu); }

}  // namespace sentfuse
