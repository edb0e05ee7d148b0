// cosine_topk's bf16 scan (see topk_bf16.h).
//
// Queries and corpus rows become bf16 unit rows, so each score tile holds approximate cosines u whatever the
// metric. On CPUs with AMX or AVX512-BF16 sentfuse's own blocks score them (cpu/amx_tiles.h: 32 x 32 blocks that
// stay in L1, an AVX-512 filter lets only candidates out); elsewhere each thread takes whole corpus tiles and scores them with
// its own single-threaded ATen bf16 GEMMs. With |u - cosine| <= beta (bf16_error_bound) and
// s = |q||c| under metric "dot" (1 for cosine), a pair's exact fp32 score lies in [(u - beta) s, (u + beta) s].
// Each query keeps the k best lower bounds seen so far (L, its k-th) and the pairs whose upper bound reaches
// max(L, min_score): L only rises, so every pair of the exact top-k is among them. The survivors (pruned
// again by the final L) are rescored in fp32 as the fp32 path scores them (up to fp32 summation order).
#include "cpu/topk_bf16.h"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common/dispatch.h"
#ifdef SENTFUSE_WITH_AMX
#include "cpu/amx_tiles.h"
#endif
#include "cpu/load_float.h"
#include "cpu/row_dot.h"
#include "cpu/score_tiles.h"
#include "cpu/survivors.h"

namespace sentfuse {
namespace {

constexpr int64_t kTileScores = int64_t{1} << 19;  // bf16 scores per tile: 1 MB, within the core's L2
constexpr int64_t kQueryTile = 1024;
constexpr int64_t kMinCols = 128;

// One query's tile row: n approximate cosines for corpus rows first...; under metric "dot" col_norms [n]
// holds |c_j| and q_norm is |q| (cosine: nullptr). Returns false on a non-finite score.
bool scan_row(const c10::BFloat16* u, int64_t n, int64_t first, int64_t skip, const float* col_norms, float q_norm,
              float beta, float min_score, TopK& lower, Survivors& out) {
  for (int64_t j = 0; j < n; j += tiles::kRejectChunk) {
    const int64_t end = std::min(j + tiles::kRejectChunk, n);
    const float bar = std::max(lower.threshold(), min_score);
    int hit = 0;  // one branch-free pass first: most chunks hold no upper bound that reaches bar
    for (int64_t t = j; t < end; ++t) {
      const float v = load_float(u, t);
      const float upper = col_norms ? (v + beta) * (col_norms[t] * q_norm) : v + beta;
      hit |= (upper >= bar) | !(std::fabs(v) <= FLT_MAX);
    }
    if (!hit) continue;
    for (int64_t t = j; t < end; ++t) {
      const float v = load_float(u, t);
      if (!std::isfinite(v)) return false;
      const float s = col_norms ? col_norms[t] * q_norm : 1.f;
      const float upper = (v + beta) * s;
      if (t == skip || upper < std::max(lower.threshold(), min_score)) continue;
      const float low = (v - beta) * s;
      if (low > lower.threshold()) lower.push(low, first + t);
      out.push(first + t, upper);
    }
  }
  out.prune_if_due(std::max(lower.threshold(), min_score));
  return true;
}

// Rows of x [n, D] scaled to unit length (zero rows stay zero), in bf16.
at::Tensor unit_bf16(const at::Tensor& x, const at::Tensor& inverse_norms) {
  return (x.to(at::kFloat) * inverse_norms.unsqueeze(1)).to(at::kBFloat16);
}

// What every thread's share of the scan reads.
struct ScanInputs {
  at::Tensor q_bf16;        // [M, D] unit rows
  const float* q_norms;     // [M]
  at::Tensor corpus;        // [N, D] contiguous, as given
  float* corpus_inverse;    // [N] 1 / |c_j|, written tile by tile
  bool dot;
  float beta;
  float min_score;
  bool exclude_self;
  int64_t self_shift;       // query_offset - corpus_offset: pair (i, j) is itself when j == i + self_shift
  int64_t query_tile;
};

// One thread's share of the scan: per query, the k best lower bounds it has seen and its survivors.
struct ThreadScan {
  std::vector<Candidate> slots;  // [M, k]
  std::vector<TopK> lower;
  std::vector<Survivors> survivors;
  at::Tensor buffer;  // the score tile, [query_tile * corpus_tile] bf16
  std::vector<float> bar;  // block scan: per query (padded to whole blocks), max(lower threshold, min_score)

  ThreadScan(int64_t M, int64_t k) : slots(M * k), survivors(M) {
    lower.reserve(M);
    for (int64_t i = 0; i < M; ++i)
      lower.emplace_back(slots.data() + i * k, k, -std::numeric_limits<float>::infinity());
  }
};

// Scores corpus rows [j0, j0 + n) against every query on the calling thread (inside at::parallel_for the
// GEMM runs on this thread alone). Returns false on a non-finite score.
bool scan_tile(const ScanInputs& in, int64_t j0, int64_t n, ThreadScan& st) {
  const int64_t M = in.q_bf16.size(0);
  const at::Tensor rows = in.corpus.narrow(0, j0, n);
  const at::Tensor inverse = tiles::inverse_norms(rows);
  std::copy_n(inverse.const_data_ptr<float>(), n, in.corpus_inverse + j0);
  const at::Tensor block = unit_bf16(rows, inverse);
  const at::Tensor col_norms = in.dot ? at::linalg_vector_norm(rows, 2, {1}, false, at::kFloat) : at::Tensor();
  const float* c_norms = in.dot ? col_norms.const_data_ptr<float>() : nullptr;
  for (int64_t i0 = 0; i0 < M; i0 += in.query_tile) {
    const int64_t m = std::min(in.query_tile, M - i0);
    at::Tensor tile = st.buffer.narrow(0, 0, m * n).view({m, n});
    at::mm_out(tile, in.q_bf16.narrow(0, i0, m), block.t());
    const c10::BFloat16* u = tile.const_data_ptr<c10::BFloat16>();
    for (int64_t r = 0; r < m; ++r) {
      const int64_t i = i0 + r;
      const int64_t self = in.exclude_self ? i + in.self_shift - j0 : -1;
      const int64_t skip = (self >= 0 && self < n) ? self : -1;
      if (!scan_row(u + r * n, n, j0, skip, c_norms, in.q_norms[i], in.beta, in.min_score, st.lower[i],
                    st.survivors[i]))
        return false;
    }
  }
  return true;
}

// Query i's bar over all threads' shares: max(L, min_score), L the k-th best lower bound seen by any.
float merged_bar(const std::vector<ThreadScan>& scans, int64_t i, int64_t k, float min_score) {
  std::vector<float> lows;
  for (const ThreadScan& st : scans)
    for (int64_t t = 0; t < st.lower[i].size(); ++t) lows.push_back(st.slots[i * k + t].score);
  if (static_cast<int64_t>(lows.size()) < k) return min_score;
  std::nth_element(lows.begin(), lows.begin() + (k - 1), lows.end(), std::greater<float>());
  return std::max(lows[k - 1], min_score);
}

// The survivors' exact fp32 scores, as the fp32 path computes them, into tops. False on a non-finite score.
template <typename scalar_t>
bool rescore(const at::Tensor& q, const scalar_t* corpus, Metric metric, const float* corpus_inverse,
             std::vector<ThreadScan>& scans, int64_t k, float min_score, std::vector<TopK>& tops) {
  std::atomic<bool> finite{true};
  const int64_t D = q.size(1);
  const float* qs = q.const_data_ptr<float>();
  at::parallel_for(0, q.size(0), 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> ids;
    for (int64_t i = begin; i < end; ++i) {
      const float bar = merged_bar(scans, i, k, min_score);
      ids.clear();
      for (const ThreadScan& st : scans) {
        const Survivors& cand = st.survivors[i];
        for (size_t t = 0; t < cand.ids.size(); ++t)
          if (cand.upper[t] >= bar) ids.push_back(cand.ids[t]);
      }
      std::sort(ids.begin(), ids.end());  // increasing j, as TopK::push expects
      for (const int64_t j : ids) {
        float s = row_dot<false>(qs + i * D, corpus + j * D, D);
        if (metric == Metric::Cosine) s *= corpus_inverse[j];
        if (!std::isfinite(s)) finite = false;
        if (s > tops[i].threshold()) tops[i].push(s, j);
      }
    }
  });
  return finite;
}

#ifdef SENTFUSE_WITH_AMX
// ---- The block scan: each thread packs its corpus chunks to bf16 unit rows and scores 32 x 32 blocks (AMX tiles
// or AVX512-BF16 vectors) against the queries packed once; only the pairs whose upper bound reaches the query's bar leave.
constexpr int64_t kAmxChunk = 256;  // corpus rows packed at a time: 192 KB of bf16 at D = 384, within L2

// The queries in the right-hand tile layout and (metric "dot") their norms, padded to whole blocks.
struct AmxQueries {
  int64_t Dp = 0, blocks = 0;
  amx::TileVector<uint16_t> paired;
  std::vector<float> norms;
};

// Packs q [M, D] fp32 as bf16 unit rows, with their norms. False on a NaN or inf.
bool pack_queries(const at::Tensor& q, AmxQueries& out) {
  const int64_t M = q.size(0), D = q.size(1);
  out.Dp = amx::padded_depth(D);
  out.blocks = (M + amx::kBlock - 1) / amx::kBlock;
  const int64_t Mp = out.blocks * amx::kBlock;
  amx::TileVector<uint16_t> rows(Mp * out.Dp, 0);
  std::vector<float> inverse(M);
  out.norms.assign(Mp, 0.f);
  if (!amx::pack_unit_rows(q.const_data_ptr<float>(), M, D, out.Dp, rows.data(), out.norms.data(), inverse.data()))
    return false;
  out.paired.resize(amx::paired_size(Mp, out.Dp));
  amx::pack_pairs(rows.data(), Mp, out.Dp, out.paired.data());
  return true;
}

// One thread's working memory for the block scan.
struct AmxBuffers {
  amx::TileVector<uint16_t> rows;  // [kAmxChunk, Dp] packed corpus rows
  alignas(64) float scores[amx::kBlock * amx::kBlock];
  uint32_t hits[amx::kBlock];
};

// The pairs of one score block whose upper bound passed the block's bars: checked again against the bars
// of now (they only rise), fed to the query's lower bounds and survivors. Block rows j0..., queries i0...
void take_hits(const ScanInputs& in, const AmxQueries& qs, const AmxBuffers& buf, int64_t rows, int64_t j0,
               int64_t i0, const float* row_norms, ThreadScan& st) {
  for (int64_t r = 0; r < rows; ++r) {
    for (uint32_t bits = buf.hits[r]; bits != 0; bits &= bits - 1) {
      const int64_t t = __builtin_ctz(bits), i = i0 + t, j = j0 + r;
      if (in.exclude_self && j == i + in.self_shift) continue;
      const float v = buf.scores[r * amx::kBlock + t];
      const float s = in.dot ? row_norms[r] * qs.norms[i] : 1.f;
      const float upper = (v + in.beta) * s;
      TopK& lower = st.lower[i];
      if (upper < std::max(lower.threshold(), in.min_score)) continue;
      const float low = (v - in.beta) * s;
      if (low > lower.threshold()) {
        lower.push(low, j);
        st.bar[i] = std::max(lower.threshold(), in.min_score);
      }
      Survivors& out = st.survivors[i];
      out.push(j, upper);
      out.prune_if_due(st.bar[i]);
    }
  }
}

// Scores corpus rows [j0, j0 + n), n <= kAmxChunk, against every query; writes their norms into
// corpus_norms [N] and their inverses into in.corpus_inverse. No ATen call in here: from inside a parallel
// region they open nested OpenMP teams. False on a NaN or inf.
template <typename scalar_t>
bool amx_scan_chunk(const ScanInputs& in, const AmxQueries& qs, float* corpus_norms, int64_t j0, int64_t n,
                    ThreadScan& st, AmxBuffers& buf) {
  const int64_t M = in.q_bf16.size(0), D = in.corpus.size(1), Dp = qs.Dp;
  const int64_t padded = (n + amx::kBlock - 1) / amx::kBlock * amx::kBlock;
  std::fill(buf.rows.begin() + n * Dp, buf.rows.begin() + padded * Dp, 0);
  if (!amx::pack_unit_rows(in.corpus.const_data_ptr<scalar_t>() + j0 * D, n, D, Dp, buf.rows.data(),
                           corpus_norms + j0, in.corpus_inverse + j0))
    return false;
  const int64_t group = (Dp / amx::kDepth) * amx::kTileRows * amx::kDepth;  // one 16-query group's values
  // Query blocks outer: the block's 24 KB of queries stay in L1 while the chunk's rows stream from L2.
  for (int64_t qb = 0; qb < qs.blocks; ++qb) {
    const int64_t i0 = qb * amx::kBlock;
    const uint16_t* b0 = qs.paired.data() + 2 * qb * group;
    const int64_t live = std::min(amx::kBlock, M - i0);
    const uint32_t columns = live == 32 ? ~0u : (1u << live) - 1;
    for (int64_t b = 0; b < n; b += amx::kBlock) {
      const int64_t rows_here = std::min(amx::kBlock, n - b);
      const float* row_norms = in.dot ? corpus_norms + j0 + b : nullptr;
      amx::score_block(buf.rows.data() + b * Dp, b0, b0 + group, Dp, buf.scores);
      if (amx::filter_block(buf.scores, rows_here, columns, st.bar.data() + i0, row_norms,
                            in.dot ? qs.norms.data() + i0 : nullptr, in.beta, buf.hits) != 0)
        take_hits(in, qs, buf, rows_here, j0 + b, i0, row_norms, st);
    }
  }
  return true;
}

// The whole scan on the bf16 blocks. Threads take corpus chunks in increasing order from a shared counter, so a
// thread the OS holds back delays only its own chunk, and each thread still sees its pairs in index order.
// False on a NaN or inf.
bool amx_scan(const at::Tensor& q, const ScanInputs& in, std::vector<ThreadScan>& scans) {
  AmxQueries qs;
  if (!pack_queries(q, qs)) return false;
  for (ThreadScan& st : scans) st.bar.assign(qs.blocks * amx::kBlock, in.min_score);
  std::vector<float> corpus_norms(in.corpus.size(0));
  const int64_t N = in.corpus.size(0), chunks = (N + kAmxChunk - 1) / kAmxChunk;
  std::atomic<int64_t> next{0};
  std::atomic<bool> non_finite{false};
  SENTFUSE_DISPATCH_FLOAT_TYPES(in.corpus.scalar_type(), "sentfuse_topk_amx_cpu", [&] {
    at::parallel_for(0, static_cast<int64_t>(scans.size()), 1, [&](int64_t, int64_t) {
      ThreadScan& st = scans[at::get_thread_num()];
      AmxBuffers buf;
      buf.rows.resize(kAmxChunk * qs.Dp);
      const amx::TileScope tile_config;
      for (int64_t c = next++; c < chunks && !non_finite; c = next++) {
        const int64_t j0 = c * kAmxChunk;
        if (!amx_scan_chunk<scalar_t>(in, qs, corpus_norms.data(), j0, std::min(kAmxChunk, N - j0), st, buf))
          non_finite = true;
      }
    });
  });
  return !non_finite;
}
#endif  // SENTFUSE_WITH_AMX

}  // namespace

bool bf16_scan(const at::Tensor& q, const at::Tensor& corpus_in, int64_t k, Metric metric, bool exclude_self,
               int64_t query_offset, int64_t corpus_offset, float min_score, std::vector<TopK>& tops) {
  const int64_t M = q.size(0), N = corpus_in.size(0);
  const bool dot = metric == Metric::Dot;
  const at::Tensor q_norms = at::linalg_vector_norm(q, 2, {1}, false, at::kFloat).contiguous();
  at::Tensor corpus_inverse = at::empty({N}, q.options());
  ScanInputs in{dot ? unit_bf16(q, tiles::inverse_norms(q)) : q.to(at::kBFloat16),
                q_norms.const_data_ptr<float>(),
                corpus_in.contiguous(),
                corpus_inverse.mutable_data_ptr<float>(),
                dot,
                bf16_error_bound(q.size(1), true),
                min_score,
                exclude_self,
                query_offset - corpus_offset,
                std::min(M, kQueryTile)};
  const int64_t corpus_tile = std::min(N, std::max(kMinCols, kTileScores / in.query_tile));
  const int64_t num_tiles = (N + corpus_tile - 1) / corpus_tile;

  // Each thread scores whole corpus tiles with its own single-threaded GEMMs: one parallel region for the
  // whole scan, no synchronization per tile.
  std::vector<ThreadScan> scans;
  scans.reserve(at::get_num_threads());
  for (int t = 0; t < at::get_num_threads(); ++t) scans.emplace_back(M, k);
  bool scanned = false;
#ifdef SENTFUSE_WITH_AMX
  if (amx::blocks_available()) {
    in.beta = bf16_error_bound(q.size(1), false);  // the blocks' scores stay fp32
    if (!amx_scan(q, in, scans)) return false;
    scanned = true;
  }
#endif
  if (!scanned) {
    for (ThreadScan& st : scans)
      st.buffer = at::empty({in.query_tile * corpus_tile}, q.options().dtype(at::kBFloat16));
    std::atomic<bool> non_finite{false};
    at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
      ThreadScan& st = scans[at::get_thread_num()];
      for (int64_t tile = begin; tile < end && !non_finite; ++tile) {
        const int64_t j0 = tile * corpus_tile;
        if (!scan_tile(in, j0, std::min(corpus_tile, N - j0), st)) non_finite = true;
      }
    });
    if (non_finite) return false;
  }
  bool finite = true;
  SENTFUSE_DISPATCH_FLOAT_TYPES(in.corpus.scalar_type(), "sentfuse_topk_rescore_cpu", [&] {
    finite = rescore(q, in.corpus.const_data_ptr<scalar_t>(), metric, corpus_inverse.const_data_ptr<float>(),
                     scans, k, min_score, tops);
  });
  return finite;
}

}  // namespace sentfuse
