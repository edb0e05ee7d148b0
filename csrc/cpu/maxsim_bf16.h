// maxsim_topk's bf16 scan on the CPU (bf16_rescore, fp32 inputs): bf16 score blocks on the AMX units give
// every (query, document) an approximate MaxSim with a provable error bound; the documents whose bound
// interval can still reach a query's top-k are rescored exactly in fp32 (cpu/maxsim.cpp), so the answer is
// the fp32 path's.
//
// The bound. Write q~ = bf16(q) and d~ = bf16(d) (round to nearest even, subnormals flushed to zero as the
// tiles read them). For one valid query token t and one document,
//   |max_s q_t.d_s - max_s q~_t.d~_s| <= max_s |(q_t - q~_t).d_s + q~_t.(d_s - d~_s)|
//                                     <= |q_t - q~_t| M + |q~_t| E,                        (Cauchy-Schwarz)
// with M = max_s |d_s|, E = max_s |d_s - d~_s|, M~ = max_s |d~_s| over the document's tokens. Both sides are
// computed in fp32: a D-term dot product in any order is within gamma_D |x||y| of the real one (gamma_n =
// n 2^-24 / (1 - n 2^-24) < n 2^-23), the sum of the n_q per-token maxima within gamma_{n_q} of its terms'
// magnitudes, and the tiles flush subnormal products and partial sums (at most 2D 2^-126 per dot product).
// Summed over the tokens, with A = sum_t |q_t - q~_t|, B = sum_t |q~_t|, C = sum_t |q_t|:
//   |fp32 MaxSim - bf16-tile MaxSim| <= A M + B E + g (B M~ + C M) + n_q D 2^-125,   g = (D + n_q + 4) 2^-23,
// times the query's scale for MeanMaxSim. The "+ 4" keeps the bound >= 4 ulps of the score, so the fp32
// sums s +- bound and the comparisons below lose nothing; a factor 1.01 covers the fp32 rounding of the norms
// and of the bound itself (the norms' relative error D 2^-24 stays far below 1% for D < 2^16).
//
// Top-k: each query keeps the k largest lower bounds s - e seen (L, the k-th) and every document whose upper
// bound s + e reached L when it was seen. L only rises and the k-th best exact score is >= L, so every
// document of the exact top-k (ties included) is kept; those still >= the final L are rescored.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "cpu/amx_tiles.h"
#include "cpu/survivors.h"

namespace sentfuse {

// A document's terms of the bound: M, E and M~ above.
struct MaxSimDocTerms {
  float norm = 0.f;      // M: the largest token norm
  float rounding = 0.f;  // E: the largest |d_s - bf16(d_s)|
  float rounded = 0.f;   // M~: the largest |bf16(d_s)|
};

// Whether the scan can run here: built with the block kernels and the CPU has a unit for them
// (amx::blocks_available()).
bool maxsim_bf16_available();

// The valid query tokens in the tiles' layout with each query's terms of the bound.
class MaxSimBf16Scan {
 public:
  // tokens [Tq, D] fp32 contiguous: query q owns rows offsets[q]:offsets[q + 1]; its score is multiplied by
  // scale[q] (MeanMaxSim). Needs maxsim_bf16_available().
  MaxSimBf16Scan(const at::Tensor& tokens, const std::vector<int64_t>& offsets, const std::vector<float>& scale);

  // Approximate scores of the documents of docs [T, D] fp32 contiguous (document n: rows
  // doc_offsets[n]:doc_offsets[n + 1]) cut into tiles of whole documents tiles[i]:tiles[i + 1], d0 = tiles[0],
  // into approx [Q, ldo] (column j: document d0 + j) and their terms into terms[j]. Threads take whole tiles.
  void score(const at::Tensor& docs, const std::vector<int64_t>& doc_offsets, const std::vector<int64_t>& tiles,
             float* approx, int64_t ldo, MaxSimDocTerms* terms) const;

  // The bound on |approximate - fp32 score| of query q against a document (see the top of this file).
  float error_bound(int64_t q, const MaxSimDocTerms& doc) const {
    const QueryTerms& t = terms_[q];
    return scale_[q] * 1.01f *
           (t.rounding * doc.norm + t.rounded * doc.rounding + t.gamma * (t.rounded * doc.rounded + t.exact * doc.norm) +
            t.flushed);
  }

 private:
  struct QueryTerms {
    float rounding = 0.f, rounded = 0.f, exact = 0.f;  // A, B, C
    float gamma = 0.f;                                  // g
    float flushed = 0.f;                                // n_q D 2^-125
  };
  void score_tile(const float* docs, const std::vector<int64_t>& doc_offsets, int64_t ta, int64_t tb, int64_t d0,
                  float* approx, int64_t ldo, MaxSimDocTerms* terms, amx::TileVector<uint16_t>& rows,
                  std::vector<float>& maxima) const;

  int64_t depth_ = 0, padded_depth_ = 0, tokens_ = 0;
  std::vector<int64_t> token_query_;  // [Tq] the query each packed token belongs to
  amx::TileVector<uint16_t> paired_;     // the tokens in the tiles' right-hand layout, padded to blocks of 32
  std::vector<QueryTerms> terms_;
  std::vector<float> scale_;
};

// One query's candidates for the rescoring (see the top of this file), offered in increasing document order.
class MaxSimCandidates {
 public:
  explicit MaxSimCandidates(int64_t k) : k_(k) {}

  // A document's approximate score and its error bound (a non-finite one counts as unbounded).
  void offer(int64_t doc, float approx, float bound);
  // The kept documents whose upper bound reaches the final bar, in increasing order.
  std::vector<int64_t> survivors() const;

 private:
  float bar() const;

  int64_t k_;
  std::vector<float> lows_;  // min-heap of the k largest lower bounds
  Survivors docs_;
};

}  // namespace sentfuse
