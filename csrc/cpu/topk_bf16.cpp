// cosine_topk's bf16 scan (see topk_bf16.h).
//
// Queries and corpus rows become bf16 unit rows, so each score tile holds approximate cosines u whatever the
// metric. On CPUs with AMX or AVX512-BF16 sentfuse's own blocks score them (cpu/amx_tiles.h: 32 x 32 blocks that
// stay in L1, an AVX-512 filter lets only candidates out); elsewhere each thread takes whole corpus tiles and
// scores them with its own single-threaded ATen bf16 GEMMs. With |u - cosine| <= beta (bf16_error_bound) and
// s = |q||c| under metric "dot" (1 for cosine), a pair's exact fp32 score lies in [(u - beta) s, (u + beta) s].
// A pair can only be in the top-k when its upper bound reaches max(L, min_score), L a k-th best score already
// known for the query:
// - the blocks score such a pair in fp32 at once, while its corpus row is in cache, and keep the query's exact
//   top-k, whose k-th exact score is L;
// - the ATen path keeps the k best lower bounds (L their k-th) and the pairs that pass, pruned again by the final
//   L and rescored in fp32 after the scan.
// L only rises, so every pair of the exact top-k is scored, as the fp32 path scores it (up to fp32 summation order).
#include "cpu/topk_bf16.h"

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>

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
  const float* q;           // [M, D] fp32, as given to bf16_scan
  at::Tensor q_bf16;        // ATen path: [M, D] unit rows
  const float* q_norms;     // ATen path: [M]
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
  std::vector<TopK> lower;  // ATen path: the k best lower bounds; block scan: the k best exact scores
  std::vector<Survivors> survivors;  // ATen path
  at::Tensor buffer;  // ATen path: the score tile, [query_tile * corpus_tile] bf16
  std::vector<float> bar;  // block scan: per query (padded to whole blocks), the highest bar known to this thread

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
  int64_t M = 0, Dp = 0, blocks = 0;
  amx::TileVector<uint16_t> paired;
  std::vector<float> norms;
};

// Packs q [M, D] fp32 as bf16 unit rows, with their norms. False on a NaN or inf.
bool pack_queries(const at::Tensor& q, AmxQueries& out) {
  const int64_t M = q.size(0), D = q.size(1);
  out.M = M;
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
  alignas(64) float scores[2][amx::kBlock * amx::kBlock];  // the block being scored and the one being filtered
  uint32_t hits[amx::kBlock];  // per query of the block, its rows that passed
};

// The highest bar any thread has reached per query. A thread's k-th exact score bounds the final k-th from below,
// so every thread may prune against the highest one: a query's top-k then costs about k ln(N / k) candidates in
// all, not that much per thread.
class SharedBars {
 public:
  SharedBars(int64_t n, float floor) : bars_(new std::atomic<float>[n]) {
    for (int64_t i = 0; i < n; ++i) bars_[i].store(floor, std::memory_order_relaxed);
  }
  float get(int64_t i) const { return bars_[i].load(std::memory_order_relaxed); }
  void raise(int64_t i, float bar) {
    float now = get(i);
    while (bar > now && !bars_[i].compare_exchange_weak(now, bar, std::memory_order_relaxed)) {
    }
  }

 private:
  std::unique_ptr<std::atomic<float>[]> bars_;
};

// A scored block waiting for its filter: rows [j, j + rows) against queries [i0, i0 + 32).
struct ScoredBlock {
  const float* scores = nullptr;  // none yet
  int64_t i0 = 0, j = 0, rows = 0;
  uint32_t columns = 0;
};

// The pairs of one score block whose upper bound passed the block's bars, checked again against the bars of now
// (they only rise), get their exact fp32 scores at once, while the chunk's rows are still in cache (rescored
// after the scan they were gathered again from memory), and feed the query's exact top-k: its k-th exact score
// is the bar, a tighter one than the k-th lower bound.
template <typename scalar_t>
bool take_hits(const ScanInputs& in, const AmxQueries& qs, const ScoredBlock& block, uint32_t found,
               const uint32_t* hits, const float* row_norms, ThreadScan& st, SharedBars& shared) {
  const int64_t D = in.corpus.size(1);
  const scalar_t* corpus = in.corpus.const_data_ptr<scalar_t>();
  bool finite = true;
  for (uint32_t columns = found; columns != 0; columns &= columns - 1) {
    const int64_t t = __builtin_ctz(columns), i = block.i0 + t;
    for (uint32_t bits = hits[t]; bits != 0; bits &= bits - 1) {
      const int64_t r = __builtin_ctz(bits), j = block.j + r;
      if (in.exclude_self && j == i + in.self_shift) continue;
      const float v = block.scores[r * amx::kBlock + t];
      const float s = in.dot ? row_norms[r] * qs.norms[i] : 1.f;
      if ((v + in.beta) * s < st.bar[i]) continue;
      float exact = amx::dot(in.q + i * D, corpus + j * D, D);
      if (!in.dot) exact *= in.corpus_inverse[j];
      finite &= std::isfinite(exact);
      TopK& best = st.lower[i];
      if (exact > best.threshold()) {
        best.push(exact, j);
        if (best.threshold() > st.bar[i]) {
          st.bar[i] = best.threshold();
          shared.raise(i, best.threshold());
        }
      }
    }
  }
  return finite;
}

// Filters a scored block against its queries' bars and takes its candidates. False on a non-finite exact score.
template <typename scalar_t>
bool filter_scored(const ScanInputs& in, const AmxQueries& qs, const float* corpus_norms, const ScoredBlock& block,
                   AmxBuffers& buf, ThreadScan& st, SharedBars& shared) {
  const float* row_norms = in.dot ? corpus_norms + block.j : nullptr;
  const uint32_t found = amx::filter_columns(block.scores, block.rows, block.columns, st.bar.data() + block.i0,
                                             row_norms, in.dot ? qs.norms.data() + block.i0 : nullptr, in.beta,
                                             buf.hits);
  return found == 0 || take_hits<scalar_t>(in, qs, block, found, buf.hits, row_norms, st, shared);
}

// Source rows of the thread's next chunk, fetched into L2 a slice per scored block: the pack then reads them from
// cache, and the memory traffic runs while the blocks compute.
struct ChunkPrefetch {
  const char* next = nullptr;  // none
  int64_t lines = 0, per_block = 0;

  void step() {
    for (int64_t t = 0; t < per_block && lines > 0; ++t, --lines, next += 64) __builtin_prefetch(next, 0, 2);
  }
};

// Scores corpus rows [j0, j0 + n), n <= kAmxChunk, against every query; writes their norms into
// corpus_norms [N] and their inverses into in.corpus_inverse; fetches the rows of the chunk at next_j0 (-1: none)
// meanwhile. No ATen call in here: from inside a parallel region they open nested OpenMP teams. False on a NaN
// or inf.

template <typename scalar_t>
bool amx_scan_chunk(const ScanInputs& in, const AmxQueries& qs, float* corpus_norms, int64_t j0, int64_t n,
                    int64_t next_j0, ThreadScan& st, SharedBars& shared, AmxBuffers& buf) {
  const int64_t M = qs.M, D = in.corpus.size(1), Dp = qs.Dp;
  const int64_t padded = (n + amx::kBlock - 1) / amx::kBlock * amx::kBlock;
  std::fill(buf.rows.begin() + n * Dp, buf.rows.begin() + padded * Dp, 0);
  if (!amx::pack_unit_rows(in.corpus.const_data_ptr<scalar_t>() + j0 * D, n, D, Dp, buf.rows.data(),
                           corpus_norms + j0, in.corpus_inverse + j0))
    return false;
  const int64_t group = (Dp / amx::kDepth) * amx::kTileRows * amx::kDepth;  // one 16-query group's values
  // Query blocks outer: the block's 24 KB of queries stay in L1 while the chunk's rows stream from L2. Each block
  // is filtered while the next one is being scored.
  ScoredBlock pending;
  int slot = 0;
  ChunkPrefetch fetch;
  if (next_j0 >= 0) {
    fetch.next = reinterpret_cast<const char*>(in.corpus.const_data_ptr<scalar_t>() + next_j0 * D);
    fetch.lines = (std::min(kAmxChunk, in.corpus.size(0) - next_j0) * D * sizeof(scalar_t) + 63) / 64;
    const int64_t blocks = qs.blocks * (padded / amx::kBlock);
    fetch.per_block = (fetch.lines + blocks - 1) / blocks;
  }
  for (int64_t qb = 0; qb < qs.blocks; ++qb) {
    const int64_t i0 = qb * amx::kBlock;
    const uint16_t* b0 = qs.paired.data() + 2 * qb * group;
    const int64_t live = std::min(amx::kBlock, M - i0);
    const uint32_t columns = live == 32 ? ~0u : (1u << live) - 1;
    for (int64_t t = i0; t < i0 + live; ++t) st.bar[t] = std::max(st.bar[t], shared.get(t));
    for (int64_t b = 0; b < n; b += amx::kBlock) {
      float* scores = buf.scores[slot];
      amx::score_block_start(buf.rows.data() + b * Dp, b0, b0 + group, Dp, scores);
      fetch.step();
      if (pending.scores != nullptr && !filter_scored<scalar_t>(in, qs, corpus_norms, pending, buf, st, shared)) {
        amx::score_block_finish(scores);
        return false;
      }
      amx::score_block_finish(scores);
      pending = ScoredBlock{scores, i0, j0 + b, std::min(amx::kBlock, n - b), columns};
      slot ^= 1;
    }
  }
  return pending.scores == nullptr || filter_scored<scalar_t>(in, qs, corpus_norms, pending, buf, st, shared);
}

// The whole scan on the bf16 blocks. Threads take corpus chunks in increasing order from a shared counter, so a
// thread the OS holds back delays only its own chunk, and each thread still sees its pairs in index order.
// False on a NaN or inf.
bool amx_scan(const at::Tensor& q, const ScanInputs& in, std::vector<ThreadScan>& scans) {
  AmxQueries qs;
  if (!pack_queries(q, qs)) return false;
  for (ThreadScan& st : scans) st.bar.assign(qs.blocks * amx::kBlock, in.min_score);
  SharedBars shared(q.size(0), in.min_score);
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
      // The next chunk is claimed before this one is scored, so that its rows can be fetched meanwhile.
      for (int64_t c = next++; c < chunks && !non_finite;) {
        const int64_t following = next++, j0 = c * kAmxChunk;
        if (!amx_scan_chunk<scalar_t>(in, qs, corpus_norms.data(), j0, std::min(kAmxChunk, N - j0),
                                      following < chunks ? following * kAmxChunk : -1, st, shared, buf))
          non_finite = true;
        c = following;
      }
    });
  });
  return !non_finite;
}

// Each thread's exact top-k of its share into tops, in increasing index order per query.
void merge_exact(const std::vector<ThreadScan>& scans, int64_t k, std::vector<TopK>& tops) {
  at::parallel_for(0, static_cast<int64_t>(tops.size()), 64, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> found;
    for (int64_t i = begin; i < end; ++i) {
      found.clear();
      for (const ThreadScan& st : scans)
        found.insert(found.end(), st.slots.begin() + i * k, st.slots.begin() + i * k + st.lower[i].size());
      std::sort(found.begin(), found.end(), [](const Candidate& a, const Candidate& b) { return a.index < b.index; });
      for (const Candidate& c : found)
        if (c.score > tops[i].threshold()) tops[i].push(c.score, c.index);
    }
  });
}
#endif  // SENTFUSE_WITH_AMX

}  // namespace

bool bf16_scan(const at::Tensor& q, const at::Tensor& corpus_in, int64_t k, Metric metric, bool exclude_self,
               int64_t query_offset, int64_t corpus_offset, float min_score, std::vector<TopK>& tops) {
  const int64_t M = q.size(0), N = corpus_in.size(0);
  const bool dot = metric == Metric::Dot;
  at::Tensor corpus_inverse = at::empty({N}, q.options());
  ScanInputs in{q.const_data_ptr<float>(),
                at::Tensor(),  // the block scan packs the queries itself; the ATen path fills these below
                nullptr,
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
#ifdef SENTFUSE_WITH_AMX
  if (amx::blocks_available()) {
    in.beta = bf16_error_bound(q.size(1), false);  // the blocks' scores stay fp32
    if (!amx_scan(q, in, scans)) return false;
    merge_exact(scans, k, tops);
    return true;
  }
#endif
  const at::Tensor q_norms = at::linalg_vector_norm(q, 2, {1}, false, at::kFloat).contiguous();
  in.q_bf16 = dot ? unit_bf16(q, tiles::inverse_norms(q)) : q.to(at::kBFloat16);
  in.q_norms = q_norms.const_data_ptr<float>();
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
  bool finite = true;
  SENTFUSE_DISPATCH_FLOAT_TYPES(in.corpus.scalar_type(), "sentfuse_topk_rescore_cpu", [&] {
    finite = rescore(q, in.corpus.const_data_ptr<scalar_t>(), metric, corpus_inverse.const_data_ptr<float>(),
                     scans, k, min_score, tops);
  });
  return finite;
}

}  // namespace sentfuse
