// maxsim_topk's bf16 scan (see maxsim_bf16.h): query tokens packed once, document tiles rounded to bf16 by the
// thread that scores them, 32 x 32 fp32 score blocks from the AMX tiles (cpu/amx_tiles.h) folded at once into
// per-(query token, document) maxima, summed per query in token order.
#include "cpu/maxsim_bf16.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#ifdef SENTFUSE_WITH_AMX
#include "cpu/amx_tiles.h"
#endif

namespace sentfuse {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace

bool maxsim_bf16_available() {
#ifdef SENTFUSE_WITH_AMX
  return amx::blocks_available();
#else
  return false;
#endif
}

#ifdef SENTFUSE_WITH_AMX
namespace {

constexpr int64_t kQueryBlocks = 4;  // 32-token query blocks scored per pass over a tile: 32 KB, within L1

// The scan runs only on CPUs with AMX or AVX512-BF16, which all have AVX-512: its loops may use it (the file's
// other code stays generic, and nothing AVX-512 runs before maxsim_bf16_available()).
#define SENTFUSE_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

struct RowNorms {
  float exact, rounding, rounded;  // |x|, |x - x~|, |x~|
};

constexpr int kLanes = 16;  // independent partial sums, so the loop vectorizes without reassociating

// Rounds row x [D] into out [Dp] (zeros past D) as the tiles read it: bf16 nearest even (the inputs are finite),
// a subnormal result flushed to zero. x - x~ is exact in fp32 (x~ is a neighbour of x, or 0).
SENTFUSE_AVX512 inline void round_one(float v, uint16_t& out, float& xx, float& ee, float& rr) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  uint32_t b = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  b = (b & 0x7f80u) == 0 ? (b & 0x8000u) : b;
  out = static_cast<uint16_t>(b);
  const uint32_t rb = b << 16;
  float r;
  std::memcpy(&r, &rb, sizeof(r));
  const float e = v - r;
  xx += v * v, ee += e * e, rr += r * r;
}

SENTFUSE_AVX512 RowNorms round_row(const float* __restrict x, int64_t D, int64_t Dp, uint16_t* __restrict out) {
  float xx[kLanes] = {}, ee[kLanes] = {}, rr[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int l = 0; l < kLanes; ++l) round_one(x[d + l], out[d + l], xx[l], ee[l], rr[l]);
  for (int l = 0; d < D; ++d, ++l) round_one(x[d], out[d], xx[l], ee[l], rr[l]);
  std::fill(out + D, out + Dp, uint16_t{0});
  float sx = 0.f, se = 0.f, sr = 0.f;
  for (int l = 0; l < kLanes; ++l) sx += xx[l], se += ee[l], sr += rr[l];
  return {std::sqrt(sx), std::sqrt(se), std::sqrt(sr)};
}

// m[t] = max(m[t], max_r c[r][t]) over rows c [rows, 32]: a local copy of m the compiler keeps in two vector
// registers (stores to m itself could alias c, which keeps the loop scalar).
SENTFUSE_AVX512 inline void fold_rows(const float* c, int64_t rows, float* m) {
  constexpr int64_t B = 32;
  float acc[B];
  std::copy_n(m, B, acc);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < B; ++t) acc[t] = c[r * B + t] > acc[t] ? c[r * B + t] : acc[t];
  std::copy_n(acc, B, m);
}

}  // namespace

MaxSimBf16Scan::MaxSimBf16Scan(const at::Tensor& tokens, const std::vector<int64_t>& offsets,
                               const std::vector<float>& scale)
    : scale_(scale) {
  TORCH_CHECK(maxsim_bf16_available(), "maxsim_topk: the bf16 scan needs AMX or AVX512-BF16");
  const int64_t Q = static_cast<int64_t>(scale.size());
  tokens_ = tokens.size(0);
  depth_ = tokens.size(1);
  padded_depth_ = amx::padded_depth(depth_);
  const int64_t padded = (tokens_ + amx::kBlock - 1) / amx::kBlock * amx::kBlock;
  std::vector<uint16_t> rows(padded * padded_depth_, 0);
  token_query_.resize(tokens_);
  terms_.resize(Q);
  const float* x = tokens.const_data_ptr<float>();
  for (int64_t q = 0; q < Q; ++q) {
    double a = 0, b = 0, c = 0;
    for (int64_t t = offsets[q]; t < offsets[q + 1]; ++t) {
      const RowNorms n = round_row(x + t * depth_, depth_, padded_depth_, rows.data() + t * padded_depth_);
      a += n.rounding, b += n.rounded, c += n.exact;
      token_query_[t] = q;
    }
    const double n_q = static_cast<double>(offsets[q + 1] - offsets[q]);
    terms_[q] = {static_cast<float>(a), static_cast<float>(b), static_cast<float>(c),
                 static_cast<float>(std::ldexp(depth_ + n_q + 4, -23)), static_cast<float>(std::ldexp(n_q * depth_, -125))};
  }
  paired_.resize(amx::paired_size(padded, padded_depth_));
  amx::pack_pairs(rows.data(), padded, padded_depth_, paired_.data());
}

void MaxSimBf16Scan::score(const at::Tensor& docs, const std::vector<int64_t>& doc_offsets,
                           const std::vector<int64_t>& tiles, float* approx, int64_t ldo, MaxSimDocTerms* terms) const {
  const int64_t num_tiles = static_cast<int64_t>(tiles.size()) - 1;
  const float* d = docs.const_data_ptr<float>();
  // No ATen call inside: from a parallel region it would open a nested OpenMP team.
  at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
    const amx::TileScope tile_config;
    amx::TileVector<uint16_t> rows;  // 64-byte aligned: a tile row never straddles two lines
    std::vector<float> maxima;
    for (int64_t i = begin; i < end; ++i)
      score_tile(d, doc_offsets, tiles[i], tiles[i + 1], tiles[0], approx, ldo, terms, rows, maxima);
  });
}

// Documents [ta, tb): rounds their tokens into rows [padded tokens, Dp], then for each block of 32 query tokens
// keeps maxima [documents, 32] over the score blocks and adds them to the scores in token order.
SENTFUSE_AVX512 void MaxSimBf16Scan::score_tile(const float* docs, const std::vector<int64_t>& doc_offsets, int64_t ta, int64_t tb,
                                int64_t d0, float* approx, int64_t ldo, MaxSimDocTerms* terms,
                                amx::TileVector<uint16_t>& rows, std::vector<float>& maxima) const {
  constexpr int64_t B = amx::kBlock;
  const int64_t Q = static_cast<int64_t>(scale_.size()), Dp = padded_depth_, n_docs = tb - ta;
  const int64_t r0 = doc_offsets[ta], n = doc_offsets[tb] - r0, padded = (n + B - 1) / B * B;
  rows.resize(padded * Dp);
  std::fill(rows.begin() + n * Dp, rows.end(), uint16_t{0});
  for (int64_t doc = ta; doc < tb; ++doc) {
    MaxSimDocTerms t;
    for (int64_t s = doc_offsets[doc]; s < doc_offsets[doc + 1]; ++s) {
      const RowNorms r = round_row(docs + s * depth_, depth_, Dp, rows.data() + (s - r0) * Dp);
      t.norm = std::max(t.norm, r.exact), t.rounding = std::max(t.rounding, r.rounding);
      t.rounded = std::max(t.rounded, r.rounded);
    }
    terms[doc - d0] = t;
  }
  for (int64_t q = 0; q < Q; ++q) std::fill_n(approx + q * ldo + ta - d0, n_docs, 0.f);
  maxima.resize(kQueryBlocks * n_docs * B);
  const int64_t group = Dp * amx::kTileRows;  // one 16-token group of paired_
  const int64_t blocks = (tokens_ + B - 1) / B;
  alignas(64) float c[B * B];
  // kQueryBlocks blocks of 32 query tokens at a time: each 32-row block of the tile, loaded from L2 once, meets
  // all of them while they stay in L1.
  for (int64_t first = 0; first < blocks; first += kQueryBlocks) {
    const int64_t count = std::min(kQueryBlocks, blocks - first);
    std::fill(maxima.begin(), maxima.end(), -kInf);
    int64_t doc = ta;  // the first document overlapping rows [b, b + B)
    for (int64_t b = 0; b < n; b += B) {
      const int64_t end = std::min(b + B, n);
      while (doc_offsets[doc + 1] - r0 <= b) ++doc;
      for (int64_t k = 0; k < count; ++k) {
        const uint16_t* b0 = paired_.data() + 2 * (first + k) * group;
        amx::score_block(rows.data() + b * Dp, b0, b0 + group, Dp, c);
        for (int64_t e = doc; e < tb && doc_offsets[e] - r0 < end; ++e) {
          const int64_t lo = std::max(doc_offsets[e] - r0, b), hi = std::min(doc_offsets[e + 1] - r0, end);
          fold_rows(c + (lo - b) * B, hi - lo, maxima.data() + (k * n_docs + e - ta) * B);
        }
      }
    }
    for (int64_t t = first * B; t < std::min((first + count) * B, tokens_); ++t) {  // token order
      const float* m = maxima.data() + ((t / B - first) * n_docs) * B + t % B;
      float* out = approx + token_query_[t] * ldo + ta - d0;
      for (int64_t j = 0; j < n_docs; ++j) out[j] += m[j * B];
    }
  }
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t j = 0; j < n_docs; ++j) approx[q * ldo + ta - d0 + j] *= scale_[q];
}

#else  // built without the AMX kernels: maxsim_bf16_available() is false and nothing here is reached

MaxSimBf16Scan::MaxSimBf16Scan(const at::Tensor&, const std::vector<int64_t>&, const std::vector<float>&) {
  TORCH_CHECK(false, "maxsim_topk: the bf16 scan needs AMX tiles (not built)");
}

void MaxSimBf16Scan::score(const at::Tensor&, const std::vector<int64_t>&, const std::vector<int64_t>&, float*,
                           int64_t, MaxSimDocTerms*) const {}

void MaxSimBf16Scan::score_tile(const float*, const std::vector<int64_t>&, int64_t, int64_t, int64_t, float*, int64_t,
                                MaxSimDocTerms*, amx::TileVector<uint16_t>&, std::vector<float>&) const {}

#endif  // SENTFUSE_WITH_AMX

float MaxSimCandidates::bar() const {
  return static_cast<int64_t>(lows_.size()) == k_ ? lows_.front() : -kInf;
}

void MaxSimCandidates::offer(int64_t doc, float approx, float bound) {
  const bool known = std::isfinite(approx) && std::isfinite(bound);
  const float lower = known ? approx - bound : -kInf, upper = known ? approx + bound : kInf;
  if (upper < bar()) return;
  if (static_cast<int64_t>(lows_.size()) < k_) {
    lows_.push_back(lower);
    std::push_heap(lows_.begin(), lows_.end(), std::greater<float>());
  } else if (lower > lows_.front()) {
    std::pop_heap(lows_.begin(), lows_.end(), std::greater<float>());
    lows_.back() = lower;
    std::push_heap(lows_.begin(), lows_.end(), std::greater<float>());
  }
  docs_.push(doc, upper);
  docs_.prune_if_due(bar());
}

std::vector<int64_t> MaxSimCandidates::survivors() const {
  const float b = bar();
  std::vector<int64_t> out;
  for (size_t i = 0; i < docs_.ids.size(); ++i)
    if (docs_.upper[i] >= b) out.push_back(docs_.ids[i]);
  return out;
}

}  // namespace sentfuse
