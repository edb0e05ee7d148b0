// The host side of the fused tensor-core filter (cuda/pair_gemm.cuh), shared by threshold_pairs' fused
// scan (cuda/pairs.cu) and cosine_topk's fused scan (cuda/topk_fused.cu): which operands and rounding
// bound the filter uses, its launch (grown and relaunched until its candidates fit), and the fp32
// rescoring of the candidate keys. Host functions in a header included by two .cu files: inline.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include "common/dispatch.h"
#include "cuda/pair_gemm.cuh"
#include "cuda/select/rescore_bound.h"
#include "cuda/tile_gemm.cuh"

namespace sentfuse::pair_gemm {

// The filter's score kind and rounding bound for a [N, D] against b (norms a_norms, b_norms; self: b is a),
// or nullopt where its bound does not hold (a nonzero norm outside [kMinNorm, kMaxNorm]).
inline std::optional<PairFilter> plan_filter(const at::Tensor& a, const at::Tensor& a_norms,
                                             const at::Tensor& b_norms, bool self, Metric metric) {
  const auto norms = self ? a_norms : at::cat({a_norms, b_norms});
  const auto nonzero = norms.masked_fill(norms == 0, 1.f);
  const auto range = at::stack({nonzero.max(), nonzero.min()}).cpu();
  if (!(range[0].item<float>() <= select::kMaxNorm) || !(range[1].item<float>() >= select::kMinNorm)) {
    return std::nullopt;
  }
  PairFilter f{};
  double copies_roundoff = 0.0;
  if (a.scalar_type() == at::kFloat) {
    copies_roundoff = std::ldexp(1.0, -11);
    f.kind = metric == Metric::Dot ? PairScore::kUnitDot : PairScore::kDot;
  } else {
    f.kind = metric == Metric::Dot ? PairScore::kDot : PairScore::kCosine;
  }
  // The fused scan never rounds its fp32 accumulators to a 16-bit tile.
  f.relative_bound = static_cast<float>(select::rescore_bound(a.size(1), copies_roundoff, 0.0, 0.0).relative);
  f.metric = metric;
  f.upper_only = self;
  f.a_norms = a_norms.const_data_ptr<float>();
  f.b_norms = b_norms.const_data_ptr<float>();
  return f;
}

// The filter's 16-bit operands: fp16 unit-row copies of fp32 inputs (the tile then holds the cosine, and
// nothing overflows), 16-bit inputs as they are.
inline std::pair<at::Tensor, at::Tensor> filter_operands(const at::Tensor& a, const at::Tensor& b, bool self,
                                                         const at::Tensor& a_norms, const at::Tensor& b_norms) {
  if (a.scalar_type() != at::kFloat) return {a, b};
  auto a16 = gemm::unit_rows(a, a_norms);
  auto b16 = self ? a16 : gemm::unit_rows(b, b_norms);
  return {a16, b16};
}

// Launches the filter over a16's rows [r0, r1) against b16 (from column col_begin, a multiple of the block
// rows) until its candidate keys fit `keys` (grown as needed, up to max_keys); returns how many it found.
// A result above max_keys means the scan stopped there and keys holds no complete answer.
template <typename T>
int64_t launch_filter(const at::Tensor& a16, const at::Tensor& b16, int64_t r0, int64_t r1, int64_t col_begin,
                      const PairFilter& f, at::Tensor& keys, at::Tensor& count, int64_t max_keys) {
  using Op = typename Operand<T>::type;
  const int64_t dim = a16.size(1), M = b16.size(0);
  const dim3 grid(static_cast<unsigned>((M - col_begin + kBlockCols - 1) / kBlockCols),
                  static_cast<unsigned>((r1 - r0 + kBlockRows - 1) / kBlockRows));
  const auto* a_ptr = reinterpret_cast<const Op*>(a16.const_data_ptr<T>());
  const auto* b_ptr = reinterpret_cast<const Op*>(b16.const_data_ptr<T>());
  const bool vector = dim % 8 == 0 && reinterpret_cast<uintptr_t>(a_ptr) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(b_ptr) % 16 == 0;
  const auto stream = at::cuda::getCurrentCUDAStream();
  while (true) {
    count.zero_();
    auto* counter = reinterpret_cast<unsigned long long*>(count.mutable_data_ptr<int64_t>());
    if (vector) {
      pair_filter_kernel<true, Op><<<grid, kThreads, 0, stream>>>(
          a_ptr, b_ptr, a16.size(0), dim, r0, r1, col_begin, f, keys.mutable_data_ptr<int64_t>(), keys.size(0), counter);
    } else {
      pair_filter_kernel<false, Op><<<grid, kThreads, 0, stream>>>(
          a_ptr, b_ptr, a16.size(0), dim, r0, r1, col_begin, f, keys.mutable_data_ptr<int64_t>(), keys.size(0), counter);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t found = count.item<int64_t>();
    if (found <= keys.size(0) || found > max_keys) return found;
    keys = at::empty({found + found / 4}, keys.options());
  }
}

// Dispatches launch_filter on the operands' 16-bit type.
inline int64_t run_filter(const at::Tensor& a16, const at::Tensor& b16, int64_t r0, int64_t r1, int64_t col_begin,
                          const PairFilter& f, at::Tensor& keys, at::Tensor& count, int64_t max_keys) {
  if (a16.scalar_type() == at::kHalf) return launch_filter<at::Half>(a16, b16, r0, r1, col_begin, f, keys, count, max_keys);
  return launch_filter<at::BFloat16>(a16, b16, r0, r1, col_begin, f, keys, count, max_keys);
}

// fp32 scores [P] of candidate keys (row * M + col) [P], as the tiled path scores them; NaN or inf sets
// *nonfinite.
inline at::Tensor rescore_keys(const at::Tensor& a, const at::Tensor& b, const at::Tensor& keys,
                               const at::Tensor& a_norms, const at::Tensor& b_norms, Metric metric,
                               at::Tensor& nonfinite) {
  const int64_t found = keys.size(0);
  auto scores = at::empty({found}, a.options().dtype(at::kFloat));
  if (found == 0) return scores;
  const auto stream = at::cuda::getCurrentCUDAStream();
  SENTFUSE_DISPATCH_FLOAT_TYPES(a.scalar_type(), "rescore_keys", [&] {
    rescore_pairs_kernel<scalar_t><<<static_cast<unsigned>((found + 7) / 8), 256, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), a.size(1), keys.const_data_ptr<int64_t>(), found,
        b.size(0), a_norms.const_data_ptr<float>(), b_norms.const_data_ptr<float>(), metric,
        nonfinite.mutable_data_ptr<int>(), scores.mutable_data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return scores;
}

}  // namespace sentfuse::pair_gemm
