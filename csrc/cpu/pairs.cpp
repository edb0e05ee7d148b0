// CPU threshold_pairs: tiled GEMM + compaction, so memory grows with the pairs found, never N x M. On CPUs with AMX
// or AVX512-BF16 (without max_pairs) the tiles are bf16 blocks (cpu/amx_tiles.h) whose candidates are scored in fp32.
//
// As in cpu/topk.cpp, each tile of scores comes from one GEMM call on the calling thread (which threads
// it), and the tile is then scanned in parallel over blocks of rows: one vectorized compare rejects most
// chunks of scores, and the hits are appended to their row block's buffer. Every row block has its own
// buffer for the whole call, so the hits of a row arrive in increasing column order (column tiles outer);
// a stable counting sort by row inside each block then yields (row, col) order, and the blocks are
// concatenated into the outputs. max_pairs prunes the buffers to the best max_pairs whenever they hold
// twice that, and raises the threshold to the worst kept score, so its memory is bounded too.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "cpu/score_tiles.h"
#include "cpu/topk_bf16.h"
#include "cpu/widen.h"
#ifdef SENTFUSE_WITH_AMX
#include "cpu/amx_tiles.h"
#endif

namespace sentfuse {
namespace {

constexpr int64_t kRowBlock = 16;        // rows per hit buffer; divides tiles::kRows
constexpr int64_t kMinPrune = 1 << 16;   // max_pairs prunes only buffers holding more hits than this

struct Hit {
  int64_t col;
  float score;
  int32_t row;  // offset of the row inside its row block
};

struct Ranked {
  float score;
  int64_t row;
  int64_t col;
};

// max_pairs keeps the pairs ranking first: higher score, then smaller (row, col).
inline bool ranks_before(const Ranked& x, const Ranked& y) {
  if (x.score != y.score) return x.score > y.score;
  return x.row != y.row ? x.row < y.row : x.col < y.col;
}

// Appends the hits of one tile row (n scores for columns first_col...), skipping columns before `start`.
// Returns false on a non-finite score.
inline bool scan_row(const float* scores, int64_t start, int64_t n, int64_t first_col, float threshold,
                     int32_t row_in_block, std::vector<Hit>& hits) {
  for (int64_t j = start; j < n; j += tiles::kRejectChunk) {
    const int64_t end = std::min(j + tiles::kRejectChunk, n);
    if (!tiles::chunk_needs_look<true>(scores + j, end - j, threshold)) continue;
    for (int64_t t = j; t < end; ++t) {
      const float s = scores[t];
      if (!std::isfinite(s)) return false;
      if (s >= threshold) hits.push_back({first_col + t, s, row_in_block});
    }
  }
  return true;
}

// Keeps the best max_pairs hits of all buffers, in place and in order; returns the worst kept one.
Ranked prune(std::vector<std::vector<Hit>>& buffers, int64_t total, int64_t max_pairs) {
  std::vector<Ranked> all;
  all.reserve(total);
  for (size_t b = 0; b < buffers.size(); ++b)
    for (const Hit& h : buffers[b]) all.push_back({h.score, static_cast<int64_t>(b) * kRowBlock + h.row, h.col});
  std::nth_element(all.begin(), all.begin() + (max_pairs - 1), all.end(), ranks_before);
  const Ranked cutoff = all[max_pairs - 1];
  all = {};
  at::parallel_for(0, static_cast<int64_t>(buffers.size()), 256, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      auto& hits = buffers[b];
      hits.erase(std::remove_if(hits.begin(), hits.end(),
                                [&](const Hit& h) {
                                  return ranks_before(cutoff, {h.score, b * kRowBlock + h.row, h.col});
                                }),
                 hits.end());
    }
  });
  return cutoff;
}

// Appends the hits of one score tile (rows i0..i0+m of a, columns first_col..) to the row blocks' buffers,
// in parallel over row blocks; against itself only j > i is kept. Returns false on a non-finite score.
bool scan_tile(const at::Tensor& scores, int64_t i0, int64_t m, int64_t first_col, bool self, float min_score,
               std::vector<std::vector<Hit>>& buffers, std::atomic<int64_t>& total) {
  const int64_t cols = scores.size(1);
  std::atomic<bool> non_finite{false};
  const float* rows = scores.const_data_ptr<float>();
  const int64_t row_stride = scores.stride(0);
  const int64_t first_block = i0 / kRowBlock, last_block = (i0 + m + kRowBlock - 1) / kRowBlock;
  const int64_t grain = std::max<int64_t>(1, 32768 / (cols * kRowBlock));
  at::parallel_for(first_block, last_block, grain, [&](int64_t begin, int64_t end) {
    int64_t added = 0;
    for (int64_t blk = begin; blk < end; ++blk) {
      auto& hits = buffers[blk];
      const size_t before = hits.size();
      const int64_t r_end = std::min((blk + 1) * kRowBlock, i0 + m);
      for (int64_t i = std::max(blk * kRowBlock, i0); i < r_end; ++i) {
        // Against itself keep j > i only.
        const int64_t start = self ? std::max<int64_t>(0, i + 1 - first_col) : 0;
        if (!scan_row(rows + (i - i0) * row_stride, start, cols, first_col, min_score,
                      static_cast<int32_t>(i - blk * kRowBlock), hits)) {
          non_finite = true;
          return;
        }
      }
      added += static_cast<int64_t>(hits.size() - before);
    }
    total += added;
  });
  return !non_finite;
}

#ifdef SENTFUSE_WITH_AMX
// ---- threshold_pairs on the bf16 blocks (no max_pairs): rows of a and columns (b, or a itself) become bf16 unit
// rows; 32 x 32 blocks of approximate cosines u (|u - cosine| <= beta) come from amx::score_block, and only the
// pairs whose upper bound (u + beta) |row| |column| reaches the threshold leave the block, to be scored in fp32
// as the fp32 path scores them (row . column, times 1 / |column| for cosine against b) and kept at >= threshold.
constexpr int64_t kAmxColumns = 256;  // columns scored by all row blocks before the next ones: within L2

// The operands packed once: columns as bf16 rows [Mp, Dp], rows of a in the paired layout, norms.
struct AmxPairsInputs {
  int64_t Dp = 0, row_blocks = 0;
  amx::TileVector<uint16_t> columns, paired;
  std::vector<float> row_norms, column_norms, column_inverse;
};

// Packs rows [n, D] to bf16 unit rows [roundup(n, 32), Dp] in parallel, with norms and inverses. No ATen call
// inside the parallel region. False on a NaN or inf.
template <typename scalar_t>
bool pack_all(const scalar_t* rows, int64_t n, int64_t D, int64_t Dp, amx::TileVector<uint16_t>& out,
              std::vector<float>& norms, std::vector<float>& inverse) {
  const int64_t padded = (n + amx::kBlock - 1) / amx::kBlock * amx::kBlock;
  out.assign(padded * Dp, 0);
  norms.assign(padded, 0.f);
  inverse.assign(padded, 0.f);
  std::atomic<bool> finite{true};
  at::parallel_for(0, n, kAmxColumns, [&](int64_t begin, int64_t end) {
    if (!amx::pack_unit_rows(rows + begin * D, end - begin, D, Dp, out.data() + begin * Dp, norms.data() + begin,
                             inverse.data() + begin))
      finite = false;
  });
  return finite;
}

// One row block (rows i0..i0 + 31 of a) against column rows [j0, j1): its candidates, scored in fp32, appended
// to the block's two hit buffers in increasing column order per row. Each score block is filtered while the next
// one computes (amx::score_block_start).
template <typename col_t>
void amx_pairs_block(const AmxPairsInputs& in, const float* q, const col_t* cols, int64_t N, int64_t D, int64_t i0,
                     int64_t j0, int64_t j1, bool self, bool scale_columns, float threshold, float beta,
                     std::vector<std::vector<Hit>>& buffers) {
  const int64_t group = (in.Dp / amx::kDepth) * amx::kTileRows * amx::kDepth;
  const uint16_t* b0 = in.paired.data() + (i0 / amx::kTileRows) * group;
  const int64_t live = std::min(amx::kBlock, N - i0);
  const uint32_t rows_mask = live == 32 ? ~0u : (1u << live) - 1;
  float bar[amx::kBlock];
  alignas(64) float scores[2][amx::kBlock * amx::kBlock];
  uint32_t hits[amx::kBlock];
  std::fill_n(bar, amx::kBlock, threshold);
  // The pairs of the block of column rows jb... that pass: hits[t] holds, for row i0 + t of a, its column rows.
  auto take = [&](const float* block, int64_t jb, int64_t rows_here) {
    // Under cosine against b the fp32 score carries 1 / |column|: the column's factor is 1 there.
    const float* column_factor = scale_columns ? nullptr : in.column_norms.data() + jb;
    const uint32_t found =
        amx::filter_columns(block, rows_here, rows_mask, bar, column_factor, in.row_norms.data() + i0, beta, hits);
    for (uint32_t rows = found; rows != 0; rows &= rows - 1) {
      const int64_t t = __builtin_ctz(rows), i = i0 + t;
      std::vector<Hit>& buffer = buffers[i / kRowBlock];
      for (uint32_t bits = hits[t]; bits != 0; bits &= bits - 1) {
        const int64_t j = jb + __builtin_ctz(bits);
        if (self && j <= i) continue;
        float s = amx::dot(q + i * D, cols + j * D, D);
        if (scale_columns) s *= in.column_inverse[j];
        if (s >= threshold) buffer.push_back({j, s, static_cast<int32_t>(i % kRowBlock)});
      }
    }
  };
  // Against itself only j > i: blocks wholly at or below the diagonal are skipped.
  const int64_t first = self ? std::max(j0, (i0 + 1) / amx::kBlock * amx::kBlock) : j0;
  const float* pending = nullptr;
  int64_t pending_jb = 0, pending_rows = 0;
  int slot = 0;
  for (int64_t jb = first; jb < j1; jb += amx::kBlock) {
    amx::score_block_start(in.columns.data() + jb * in.Dp, b0, b0 + group, in.Dp, scores[slot]);
    if (pending != nullptr) take(pending, pending_jb, pending_rows);
    amx::score_block_finish(scores[slot]);
    pending = scores[slot];
    pending_jb = jb;
    pending_rows = std::min(amx::kBlock, j1 - jb);
    slot ^= 1;
  }
  if (pending != nullptr) take(pending, pending_jb, pending_rows);
}

// The block scan of threshold_pairs: q [N, D] fp32 as the fp32 path scores it, cols [M, D] contiguous (q itself when
// self), hits into buffers. Column chunks outer (each in L2 while every row block scores it), row blocks
// pulled by the threads from a counter. False on a NaN or inf.
template <typename col_t>
bool amx_threshold_pairs(const at::Tensor& q, const col_t* cols, int64_t M, bool self, bool scale_columns,
                         float threshold, std::vector<std::vector<Hit>>& buffers) {
  const int64_t N = q.size(0), D = q.size(1);
  AmxPairsInputs in;
  in.Dp = amx::padded_depth(D);
  in.row_blocks = (N + amx::kBlock - 1) / amx::kBlock;
  amx::TileVector<uint16_t> rows;
  std::vector<float> row_inverse;
  if (!pack_all(q.const_data_ptr<float>(), N, D, in.Dp, rows, in.row_norms, row_inverse)) return false;
  in.paired.resize(amx::paired_size(in.row_blocks * amx::kBlock, in.Dp));
  amx::pack_pairs(rows.data(), in.row_blocks * amx::kBlock, in.Dp, in.paired.data());
  if (self) {
    in.columns = std::move(rows);
    in.column_norms = in.row_norms;
    in.column_inverse = std::move(row_inverse);
  } else if (!pack_all(cols, M, D, in.Dp, in.columns, in.column_norms, in.column_inverse)) {
    return false;
  }
  const float beta = bf16_error_bound(D, false);
  const float* qs = q.const_data_ptr<float>();
  for (int64_t j0 = 0; j0 < M; j0 += kAmxColumns) {
    const int64_t j1 = std::min(M, j0 + kAmxColumns);
    const int64_t blocks = self ? std::min(in.row_blocks, (j1 + amx::kBlock - 1) / amx::kBlock) : in.row_blocks;
    std::atomic<int64_t> next{0};
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
      const amx::TileScope tile_config;
      for (int64_t blk = next++; blk < blocks; blk = next++)
        amx_pairs_block(in, qs, cols, N, D, blk * amx::kBlock, j0, j1, self, scale_columns, threshold, beta, buffers);
    });
  }
  return true;
}
#endif  // SENTFUSE_WITH_AMX

// Compaction: each block's hits, counting-sorted by row, land at the block's offset in the outputs
// (rows, cols int64, scores fp32) [P]. Frees the buffers as it goes.
std::tuple<at::Tensor, at::Tensor, at::Tensor> compact(std::vector<std::vector<Hit>>& buffers,
                                                       const at::TensorOptions& options) {
  const auto index_options = options.dtype(at::kLong);
  const int64_t num_blocks = static_cast<int64_t>(buffers.size());
  std::vector<int64_t> offsets(num_blocks + 1, 0);
  for (int64_t blk = 0; blk < num_blocks; ++blk) offsets[blk + 1] = offsets[blk] + buffers[blk].size();
  const int64_t P = offsets[num_blocks];
  at::Tensor out_rows = at::empty({P}, index_options);
  at::Tensor out_cols = at::empty({P}, index_options);
  at::Tensor out_scores = at::empty({P}, options.dtype(at::kFloat));
  int64_t* row_out = out_rows.mutable_data_ptr<int64_t>();
  int64_t* col_out = out_cols.mutable_data_ptr<int64_t>();
  float* score_out = out_scores.mutable_data_ptr<float>();
  at::parallel_for(0, num_blocks, 64, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      std::vector<Hit>& hits = buffers[blk];
      int64_t next[kRowBlock + 1] = {};
      for (const Hit& h : hits) ++next[h.row + 1];
      for (int64_t r = 0; r < kRowBlock; ++r) next[r + 1] += next[r];
      for (const Hit& h : hits) {
        const int64_t at = offsets[blk] + next[h.row]++;
        row_out[at] = blk * kRowBlock + h.row;
        col_out[at] = h.col;
        score_out[at] = h.score;
      }
      hits = {};
    }
  });
  return {out_rows, out_cols, out_scores};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> threshold_pairs_cpu(const at::Tensor& a,
                                                                   const std::optional<at::Tensor>& b,
                                                                   double threshold, c10::string_view metric,
                                                                   std::optional<int64_t> max_pairs) {
  const PairsArgs args = check_threshold_pairs_args(a, b, threshold, metric, max_pairs);
  float min_score = args.threshold;
  const bool self = !b.has_value();
  const int64_t N = a.size(0), M = self ? N : b->size(0);
  const auto index_options = a.options().dtype(at::kLong);
  if (N == 0 || M == 0 || (self && N < 2) || max_pairs == 0) {
    return {at::empty({0}, index_options), at::empty({0}, index_options), at::empty({0}, a.options().dtype(at::kFloat))};
  }

  // Rows of a become fp32 unit vectors once; b's norms are applied per tile, to its columns. Against
  // itself, a's normalized copy serves as both sides.
  at::Tensor q = widen_to_float(a);
  if (args.metric == Metric::Cosine) q = q * tiles::inverse_norms(q).unsqueeze(1);
  q = q.contiguous();

  const int64_t row_tile = std::min(N, tiles::kRows);
  const int64_t col_tile = tiles::columns(row_tile, M);
  const tiles::TileScorer score_tile(row_tile, col_tile, q.options());

  std::vector<std::vector<Hit>> buffers((N + kRowBlock - 1) / kRowBlock);
  std::atomic<int64_t> total{0};
  bool non_finite = false;
#ifdef SENTFUSE_WITH_AMX
  if (amx::blocks_available() && !max_pairs.has_value()) {
    bool finite = true;
    if (self) {
      finite = amx_threshold_pairs(q, q.const_data_ptr<float>(), N, true, false, min_score, buffers);
    } else {
      const at::Tensor cols = b->contiguous();
      SENTFUSE_DISPATCH_FLOAT_TYPES(cols.scalar_type(), "sentfuse_threshold_pairs_amx_cpu", [&] {
        finite = amx_threshold_pairs(q, cols.const_data_ptr<scalar_t>(), M, false, args.metric == Metric::Cosine,
                                     min_score, buffers);
      });
    }
    if (!finite) fail_non_finite("threshold_pairs", self ? "a" : "a or b");
    return compact(buffers, a.options());
  }
#endif

  // Column tiles outer, row tiles inner: each tile of b is read (and converted) once.
  for (int64_t j0 = 0; j0 < M && !non_finite; j0 += col_tile) {
    const int64_t n = std::min(col_tile, M - j0);
    at::Tensor block, column_scale;
    if (self) {
      block = q.narrow(0, j0, n);
    } else {
      block = widen_to_float(b->narrow(0, j0, n));  // no copy for fp32 input
      if (args.metric == Metric::Cosine) column_scale = tiles::inverse_norms(block);
    }
    // Against itself only rows i < j0 + n - 1 have a partner j > i in this column tile.
    const int64_t row_end = self ? std::min(N, j0 + n - 1) : N;
    for (int64_t i0 = 0; i0 < row_end && !non_finite; i0 += row_tile) {
      const int64_t m = std::min(row_tile, row_end - i0);
      // Columns j <= i0 pair with no row of this tile; skipping them trims the GEMM on the diagonal.
      const int64_t skip = self ? std::clamp<int64_t>(i0 + 1 - j0, 0, n) : 0;
      const int64_t cols = n - skip, first_col = j0 + skip;
      at::Tensor scores = score_tile(q.narrow(0, i0, m), block.narrow(0, skip, cols));
      if (column_scale.defined()) scores.mul_(column_scale.narrow(0, skip, cols));
      if (!scan_tile(scores, i0, m, first_col, self, min_score, buffers, total)) non_finite = true;
      if (max_pairs.has_value() && total > std::max(2 * *max_pairs, kMinPrune)) {
        // Later pairs must beat the worst kept one; an equal score may still win on (row, col).
        min_score = std::max(min_score, prune(buffers, total, *max_pairs).score);
        total = *max_pairs;
      }
    }
  }
  if (non_finite) fail_non_finite("threshold_pairs", self ? "a" : "a or b");
  if (max_pairs.has_value() && total > *max_pairs) {
    prune(buffers, total, *max_pairs);
    total = *max_pairs;
  }

  return compact(buffers, a.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("threshold_pairs", &threshold_pairs_cpu); }

}  // namespace sentfuse
