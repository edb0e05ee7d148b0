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
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/dot_tile.h"
#include "cpu/load_float.h"
#include "dispatch.h"
#include "ops.h"
#include "topk_args.h"

namespace sentfuse {
namespace {

constexpr int64_t kQueryTile = 128;   // queries per GEMM tile
constexpr int64_t kCorpusTile = 512;   // corpus rows per tile: a 128 x 512 fp32 tile is 256 KB (L2)
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

// 1 / ||row|| for rows of x [n, D] with row stride ldx; 0 for a zero row, so it scores 0, not NaN.
void inverse_norms(const float* x, int64_t ldx, int64_t n, int64_t D, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    float sumsq = 0.f;
    for (int64_t d = 0; d < D; ++d) sumsq += x[r * ldx + d] * x[r * ldx + d];
    out[r] = sumsq > 0.f ? 1.f / std::sqrt(sumsq) : 0.f;
  }
}

// The corpus block [n, D] as fp32: the rows themselves for fp32 input, else widened into `buffer`.
template <typename scalar_t>
const float* load_block(const scalar_t* rows, int64_t stride, int64_t n, int64_t D, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return rows;
  } else {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t d = 0; d < D; ++d) buffer[r * D + d] = load_float(rows + r * stride, d);
    return buffer;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cosine_topk_cpu(const at::Tensor& queries, const at::Tensor& corpus_in, int64_t k,
                                                   bool normalized, bool exclude_self,
                                                   std::optional<double> min_score, int64_t query_offset,
                                                   int64_t corpus_offset, bool bf16_rescore) {
  const int64_t k_out = check_cosine_topk_args(queries, corpus_in, k, min_score);
  // Without bf16 matrix units a bf16 tile is no cheaper than an fp32 one here, so there is no CPU path.
  TORCH_CHECK_NOT_IMPLEMENTED(!bf16_rescore, "cosine_topk: bf16_rescore is implemented for CUDA only; "
                                             "on CPU call it with bf16_rescore=False (the fp32 path is exact)");
  const int64_t M = queries.size(0), N = corpus_in.size(0);
  at::Tensor out_scores = at::empty({M, k_out}, queries.options().dtype(at::kFloat));
  at::Tensor out_indices = at::empty({M, k_out}, queries.options().dtype(at::kLong));
  if (M == 0 || k_out == 0) return {out_scores, out_indices};

  // Queries become contiguous fp32 unit vectors once; corpus norms are applied per block, to tile columns.
  const int64_t D = queries.size(1);
  at::Tensor q = queries.to(at::kFloat).contiguous();
  if (!normalized) {
    q = q.clone();
    std::vector<float> inv(M);
    inverse_norms(q.data_ptr<float>(), D, M, D, inv.data());
    q.mul_(at::from_blob(inv.data(), {M, 1}, q.options()));
  }
  // dot_tile needs unit feature stride.
  const at::Tensor corpus = corpus_in.stride(1) == 1 ? corpus_in : corpus_in.contiguous();

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

  const float* q_ptr = q.data_ptr<float>();
  SENTFUSE_DISPATCH_FLOAT_TYPES(corpus.scalar_type(), "sentfuse_cosine_topk_cpu", [&] {
    const auto* corpus_ptr = corpus.data_ptr<scalar_t>();
    const int64_t corpus_stride = corpus.stride(0);
    at::parallel_for(0, query_parts * corpus_parts, 1, [&](int64_t unit_begin, int64_t unit_end) {
      // Per-thread scratch: the score tile, and the corpus block as fp32 with its inverse norms.
      std::vector<float> tile(kQueryTile * kCorpusTile), block(kCorpusTile * D), inv_norm(kCorpusTile);
      for (int64_t unit = unit_begin; unit < unit_end; ++unit) {
        const int64_t qp = unit / corpus_parts, cp = unit % corpus_parts;
        const int64_t q0 = qp * part_rows, q1 = std::min(M, q0 + part_rows);
        const int64_t c0 = cp * part_corpus, c1 = std::min(N, c0 + part_corpus);
        if (q0 >= q1 || c0 >= c1) continue;
        std::vector<TopK> tops;
        tops.reserve(q1 - q0);
        for (int64_t i = q0; i < q1; ++i) tops.emplace_back(slots.data() + (cp * M + i) * k_out, k_out, floor);

        for (int64_t j0 = c0; j0 < c1 && !non_finite; j0 += kCorpusTile) {
          const int64_t n = std::min(kCorpusTile, c1 - j0);
          const float* x = load_block(corpus_ptr + j0 * corpus_stride, corpus_stride, n, D, block.data());
          const int64_t ldx = std::is_same_v<scalar_t, float> ? corpus_stride : D;
          if (!normalized) inverse_norms(x, ldx, n, D, inv_norm.data());
          for (int64_t i0 = q0; i0 < q1; i0 += kQueryTile) {
            const int64_t m = std::min(kQueryTile, q1 - i0);
            dot_tile(q_ptr + i0 * D, D, m, x, ldx, n, D, tile.data(), n);
            for (int64_t r = 0; r < m; ++r) {
              float* row = tile.data() + r * n;
              if (!normalized)
                for (int64_t t = 0; t < n; ++t) row[t] *= inv_norm[t];
              const int64_t self = exclude_self ? i0 + r + query_offset - corpus_offset - j0 : -1;
              const int64_t skip = (self >= 0 && self < n) ? self : -1;
              if (!select_row(row, n, j0, skip, tops[i0 + r - q0])) non_finite = true;
            }
          }
        }
        for (int64_t i = q0; i < q1; ++i) sizes[cp * M + i] = tops[i - q0].size();
      }
    });
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
