// How far a 16-bit tile score may be from the fp32 score that rescoring computes, for the candidate-margin
// proof of cuda/topk.cu (and cuda/pairs.cu's threshold band). Plain C++: no device code.
//
// The tile holds fl16(sum_d a_d b_d) from a GEMM with fp32 accumulation (tile_gemm.cuh forbids reduced-
// precision reductions), where a, b are either the inputs themselves (16-bit inputs under metric "dot":
// exact) or fp16 copies of the unit rows a/|a|, b/|b| (every other case; a 16-bit value converts to fp32
// exactly, so the copies round as fp32 inputs' do). With u the copies' unit roundoff (0 for the inputs),
// v the tile's, and all sums of |a_d b_d| at most |a||b| (Cauchy-Schwarz):
//   copies: each product moves by (2u + u^2)|a_d b_d|, plus the fp16 subnormal spacing 2^-24 / 2 per
//           component (at most 2^-24 sqrt(D) over a unit row), plus the unit rows' own scale error, two
//           fp32 norms and a product: (D + 8) 2^-24 for each row;
//   GEMM:   D 2^-24 |a||b| for the fp32 sums, taken twice (tensor cores may truncate), then the tile's
//           rounding v |dot| and, below the smallest normal, half its subnormal spacing;
//   rescore: the fp32 score itself is off by (2D + 8) 2^-24 (the sum, two norms and the quotient);
//   range:  with every nonzero norm in [kMinNorm, kMaxNorm], products that underflow fp32 (< 2^-126 each)
//           cost at most D 2^-126 / kMinNorm^2 = D 2^-66 relative, and nothing overflows.
// 5% and 2^-20 absorb the rounding of this arithmetic. The result is split into a part relative to
// |a||b| and an absolute part in dot-product units (raw tiles only; for unit copies it is folded in).
#pragma once

#include <cmath>
#include <cstdint>

namespace sentfuse::select {

// Rows whose norms lie outside this range void the bound: callers take their exact path for them.
constexpr float kMinNorm = 0x1p-30f;
constexpr float kMaxNorm = 0x1p30f;

struct RescoreBound {
  double relative;  // times |a||b|
  double absolute;  // in dot-product units
};

// copies_roundoff: 0 when the GEMM reads the inputs, else the unit roundoff of the fp16 unit-row copies;
// tile_roundoff / tile_subnormal_step: the tile dtype's unit roundoff and smallest subnormal.
inline RescoreBound rescore_bound(int64_t dim, double copies_roundoff, double tile_roundoff,
                                  double tile_subnormal_step) {
  const double d = static_cast<double>(dim), e24 = std::ldexp(1.0, -24);
  const double u = copies_roundoff, v = tile_roundoff;
  double copies = 0.0;
  if (u > 0.0) copies = 2 * u + u * u + 2 * (d + 8) * e24 + 1.01 * std::sqrt(d) * e24 + d * e24 * e24;
  const double stretch = (1 + u) * (1 + u) * (1 + copies);  // bound on the copies' |a||b|, relative
  const double gemm = stretch * (2 * d * e24 * (1 + v) + v);
  const double rescore = (2 * d + 8) * e24 + d * std::ldexp(1.0, -66);
  const double subnormal = tile_subnormal_step / 2;
  RescoreBound b{};
  b.relative = 1.05 * (copies + gemm + rescore) + std::ldexp(1.0, -20);
  // A unit-copy dot is in units of |a||b| <= 1, so its subnormal rounding is relative too.
  if (u > 0.0) {
    b.relative += subnormal;
  } else {
    b.absolute = subnormal;
  }
  return b;
}

}  // namespace sentfuse::select
