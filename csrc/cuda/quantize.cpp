// CUDA smooth_quantize: the same codes as the CPU op (common/quantize_range.h) from ATen's elementwise kernels and
// one min / max reduction; the int8 compute mode runs on CPU, so this is the op's device twin, not a fast path.
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/quantize_range.h"

namespace sentfuse {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_quantize_cuda(const at::Tensor& x,
                                                                    const std::optional<at::Tensor>& inverse_smooth) {
  check_smooth_quantize_args(x, inverse_smooth);
  const c10::cuda::CUDAGuard guard(x.device());
  Quint8Range q = quint8_range(0.0f, 0.0f);
  if (x.numel() == 0) {
    return {at::empty(x.sizes(), x.options().dtype(at::kByte)), at::scalar_tensor(q.scale, x.options()),
            at::scalar_tensor(q.zero_point, x.options().dtype(at::kInt))};
  }
  const at::Tensor v = inverse_smooth.has_value() ? x * *inverse_smooth : x;
  const auto [lo, hi] = at::aminmax(v);
  const float l = lo.item<float>(), h = hi.item<float>();  // the range sets the scale: one sync
  check_smooth_quantize_range(l, h);
  q = quint8_range(l, h);
  const at::Tensor codes = (v * q.inverse_scale).clamp_(-512.0, 512.0).round_().add_(q.zero_point).clamp_(0, 255);
  return {codes.to(at::kByte), at::scalar_tensor(q.scale, x.options()),
          at::scalar_tensor(q.zero_point, x.options().dtype(at::kInt))};
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) { m.impl("smooth_quantize", &smooth_quantize_cuda); }

}  // namespace sentfuse
