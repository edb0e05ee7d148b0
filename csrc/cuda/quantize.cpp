// CUDA smooth_quantize: the same codes as the CPU op (common/quantize_range.h) from ATen's elementwise kernels and
// one min / max reduction; the int8 compute mode runs on CPU, so this is the op's device twin, not a fast path.
#include <limits>
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/quantize_range.h"

namespace sentfuse {
namespace {

// per_row: quint8_range's formula on each row's range, as tensors (same float32 operations, so the same codes).
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows_cuda(const at::Tensor& v, int64_t max_code) {
  const auto [row_lo, row_hi] = at::aminmax(v, -1);
  // Every row's range finite (one sync); a sum of the ranges would overflow to inf on large finite values.
  const bool finite = at::isfinite(row_lo).logical_and_(at::isfinite(row_hi)).all().item<bool>();
  const float poison = finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
  check_smooth_quantize_range(poison, poison);
  const at::Tensor lo = row_lo.clamp_max(0.0), hi = row_hi.clamp_min(0.0);
  // Divided by a device tensor, not a host scalar: with a host scalar ATen's CUDA division multiplies by its
  // reciprocal, one bit off the true quotient the CPU op and the reference take (the 2026-12-04 H200 run's
  // failing per-row tests).
  at::Tensor scale = (hi - lo).div_(at::scalar_tensor(static_cast<float>(max_code), hi.options()));
  const at::Tensor usable = scale.gt(0.0).logical_and_(scale.reciprocal().isfinite());
  scale = at::where(usable, scale, at::ones_like(scale));
  const at::Tensor zero = lo.neg().div_(scale).round_().clamp_(0, max_code);
  const at::Tensor codes = (v * scale.reciprocal().unsqueeze(-1))
                               .clamp_(-512.0, 512.0)
                               .round_()
                               .add_(zero.unsqueeze(-1))
                               .clamp_(0, max_code);
  return {codes.to(at::kByte), scale, zero.to(at::kInt)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_quantize_cuda(const at::Tensor& x,
                                                                    const std::optional<at::Tensor>& inverse_smooth,
                                                                    bool per_row, int64_t max_code) {
  check_smooth_quantize_args(x, inverse_smooth, max_code);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor v = inverse_smooth.has_value() ? x * *inverse_smooth : x;
  if (per_row) {
    if (x.numel() == 0) {
      const at::IntArrayRef lead = x.sizes().slice(0, x.dim() - 1);
      return {at::empty(x.sizes(), x.options().dtype(at::kByte)), at::empty(lead, x.options()),
              at::empty(lead, x.options().dtype(at::kInt))};
    }
    return quantize_rows_cuda(v, max_code);
  }
  Quint8Range q = quint8_range(0.0f, 0.0f, static_cast<int32_t>(max_code));
  if (x.numel() == 0) {
    return {at::empty(x.sizes(), x.options().dtype(at::kByte)), at::scalar_tensor(q.scale, x.options()),
            at::scalar_tensor(q.zero_point, x.options().dtype(at::kInt))};
  }
  const auto [lo, hi] = at::aminmax(v);
  const float l = lo.item<float>(), h = hi.item<float>();  // the range sets the scale: one sync
  check_smooth_quantize_range(l, h);
  q = quint8_range(l, h, q.max_code);
  const at::Tensor codes =
      (v * q.inverse_scale).clamp_(-512.0, 512.0).round_().add_(q.zero_point).clamp_(0, q.max_code);
  return {codes.to(at::kByte), at::scalar_tensor(q.scale, x.options()),
          at::scalar_tensor(q.zero_point, x.options().dtype(at::kInt))};
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) { m.impl("smooth_quantize", &smooth_quantize_cuda); }

}  // namespace sentfuse
