// Shared by the CPU kernels that scan tiles of cosine scores (cpu/topk.cpp, cpu/pairs.cpp).
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace sentfuse {
namespace tiles {

// Tile shape, measured: BLAS reaches its peak near 1024 x 4096; smaller tiles lose up to 30%.
constexpr int64_t kRows = 1024;          // left-hand rows per tile at most
constexpr int64_t kFloats = 1 << 22;     // scores per tile at most: 16 MB
constexpr int64_t kMinCols = 2048;       // right-hand rows per tile at least
constexpr int64_t kRejectChunk = 16;     // scores tested per vectorized reject step

// Columns per tile for `rows` rows per tile and `cols` right-hand rows in all.
inline int64_t columns(int64_t rows, int64_t cols) { return std::min(cols, std::max(kMinCols, kFloats / rows)); }

// 1 / ||row|| per row of x [R, D] as fp32; 0 for a zero row, so that it scores 0 rather than NaN.
inline at::Tensor inverse_norms(const at::Tensor& x) {
  const at::Tensor norms = at::linalg_vector_norm(x, 2, {1}, false, at::kFloat);
  return at::where(norms > 0, norms.reciprocal(), at::zeros_like(norms));
}

// torch's oneDNN linear op, where this torch build has one. Its fp32 GEMM measured 5-10% faster than
// at::mm (MKL) on 1000 x 4096 score tiles and ~2x with 1-16 left-hand rows on AVX2 CPUs.
// SENTFUSE_CPU_GEMM=mm forces at::mm (read once per process; the tests use it to cover that path).
inline const std::optional<c10::OperatorHandle>& onednn_linear() {
  static const std::optional<c10::OperatorHandle> op = []() -> std::optional<c10::OperatorHandle> {
    const char* choice = std::getenv("SENTFUSE_CPU_GEMM");
    if (choice != nullptr && std::string(choice) == "mm") return std::nullopt;
    return c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  }();
  return op;
}

// Scores tiles a [m, D] x b [n, D]^T -> [m, n] fp32 for fp32 a, b, m <= rows and n <= cols. oneDNN returns
// a new tensor per tile (it has no out= form); at::mm writes into one buffer kept for the whole call.
class TileScorer {
 public:
  TileScorer(int64_t rows, int64_t cols, const at::TensorOptions& options)
      : buffer_(onednn_linear() ? at::Tensor() : at::empty({rows, cols}, options.dtype(at::kFloat))) {}

  at::Tensor operator()(const at::Tensor& a, const at::Tensor& b) const {
    if (const auto& op = onednn_linear()) {
      torch::jit::Stack stack{a.contiguous(), b.contiguous(), c10::IValue(), c10::IValue(std::string("none")),
                              c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
      op->callBoxed(stack);
      return stack[0].toTensor();
    }
    at::Tensor out = buffer_.narrow(0, 0, a.size(0)).narrow(1, 0, b.size(0));
    at::mm_out(out, a, b.t());
    return out;
  }

 private:
  at::Tensor buffer_;
};

// One branch-free pass over scores[0:n]: true when any score passes the threshold (>= when kInclusive,
// else >) or is NaN/inf (|s| <= FLT_MAX fails), so that most chunks are rejected without a branch each.
template <bool kInclusive>
inline bool chunk_needs_look(const float* scores, int64_t n, float threshold) {
  int hit = 0;
  for (int64_t t = 0; t < n; ++t)
    hit |= (kInclusive ? scores[t] >= threshold : scores[t] > threshold) | !(std::fabs(scores[t]) <= FLT_MAX);
  return hit != 0;
}

}  // namespace tiles
}  // namespace sentfuse
