// See widen.h.
#include "cpu/widen.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <type_traits>

#include "common/dispatch.h"
#include "cpu/load_float.h"

namespace sentfuse {

namespace {

#if defined(__x86_64__)
// fp16 through F16C, 8 values an instruction: c10::Half's portable conversion does not vectorize (fp16 widened
// at a third of bf16's rate on the Zen 4). Called only where the CPU has F16C.
__attribute__((target("avx,f16c"))) void widen_half_f16c(const c10::Half* v, int64_t n, float* y) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + i))));
  for (; i < n; ++i) y[i] = static_cast<float>(v[i]);
}

bool has_f16c() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") != 0;
  }();
  return ok;
}
#endif

template <typename scalar_t>
void widen_chunk(const scalar_t* v, int64_t n, float* y) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (has_f16c()) return widen_half_f16c(v, n, y);
  }
#endif
  for (int64_t i = 0; i < n; ++i) y[i] = load_float(v, i);
}

}  // namespace

at::Tensor widen_into(const at::Tensor& x, const at::Tensor& out) {
  const at::Tensor in = x.contiguous();
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.numel() == in.numel(),
              "widen_into: out must be contiguous float32 with x's number of values");
  float* y = out.mutable_data_ptr<float>();
  SENTFUSE_DISPATCH_FLOAT_TYPES(in.scalar_type(), "sentfuse_widen_cpu", [&] {
    const scalar_t* v = in.const_data_ptr<scalar_t>();
    at::parallel_for(0, in.numel(), int64_t{1} << 16, [&](int64_t begin, int64_t end) {
      widen_chunk(v + begin, end - begin, y + begin);
    });
  });
  return out.view(in.sizes());
}

at::Tensor widen_to_float(const at::Tensor& x) {
  if (x.scalar_type() == at::kFloat) return x.contiguous();
  if (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kHalf) return x.to(at::kFloat).contiguous();
  return widen_into(x, at::empty({x.numel()}, x.options().dtype(at::kFloat)));
}

}  // namespace sentfuse
