// CPU kernel of dropout: out = x * keep / (1 - p) (+ residual), keep drawn from (seed, index) by
// common/dropout_hash.h, in one pass over x (and residual) with nothing stored for the backward pass.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/dropout_hash.h"

namespace sentfuse {
namespace {

// Elements hashed and written per inner loop. A power of two, so no block straddles a multiple of 2^32 and
// the index's high half is one per block.
constexpr int64_t kBlock = 1024;
static_assert((kBlock & (kBlock - 1)) == 0, "kBlock must be a power of two");

struct Mask {
  uint64_t seed;
  uint32_t threshold;  // kept when bits >= threshold (a threshold of 2^32, p near 1, never reaches the kernel)
  float scale;
};

// v where keep, else +0.0f: a bit mask, not a select, which GCC if-converts for AVX-512 only (its masks), so the
// AVX2 build of the loop would stay scalar.
__attribute__((always_inline)) inline float keep_or_zero(float v, bool keep) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= 0u - static_cast<uint32_t>(keep);
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// One block: hash (32-bit lanes only) and write. Inlined into a default, an AVX2 (8 lanes of 32-bit multiplies)
// and an AVX-512 (16 lanes) build of the loop, one chosen once at run time by the CPU's features; without a
// vector 32-bit multiply (the default build's SSE2) the hash runs one element at a time, ~8 ns each.
template <typename in_t, typename out_t, bool kResidual>
__attribute__((always_inline)) inline void dropout_block(const in_t* __restrict__ x, const out_t* __restrict__ residual,
                                                         out_t* __restrict__ out, int64_t start, int64_t n,
                                                         const Mask& mask) {
  const uint32_t seed_low = static_cast<uint32_t>(mask.seed);
  const uint32_t key = dropout_key(mask.seed, static_cast<uint32_t>(static_cast<uint64_t>(start) >> 32));
  const uint32_t low = static_cast<uint32_t>(start);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = dropout_bits_of(seed_low, key, low + static_cast<uint32_t>(i));
    const float scaled = static_cast<float>(x[i]) * mask.scale;  // read unconditionally: a masked load blocks vectorization
    float value = keep_or_zero(scaled, bits >= mask.threshold);
    if constexpr (kResidual) value += static_cast<float>(residual[i]);
    out[i] = static_cast<out_t>(value);
  }
}

// Blocks [first, last) of x, one dropout_block each.
template <typename in_t, typename out_t, bool kResidual>
__attribute__((always_inline)) inline void dropout_blocks(const in_t* x, const out_t* residual, out_t* out,
                                                          int64_t numel, int64_t first, int64_t last, const Mask& mask) {
  for (int64_t start = first * kBlock; start < std::min(last * kBlock, numel); start += kBlock) {
    dropout_block<in_t, out_t, kResidual>(x + start, residual + (kResidual ? start : 0), out + start, start,
                                          std::min(kBlock, numel - start), mask);
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
// Builds of dropout_blocks for wider vectors, picked once at run time (the same arithmetic: no contraction in
// this file, so every build writes the same bits as the baseline build inlined in dropout_all).
enum class Isa { kDefault, kAvx2, kAvx512 };

template <typename in_t, typename out_t, bool kResidual>
__attribute__((target("avx2"))) void dropout_blocks_avx2(const in_t* x, const out_t* residual, out_t* out,
                                                         int64_t numel, int64_t first, int64_t last, const Mask& mask) {
  dropout_blocks<in_t, out_t, kResidual>(x, residual, out, numel, first, last, mask);
}

template <typename in_t, typename out_t, bool kResidual>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void dropout_blocks_avx512(
    const in_t* x, const out_t* residual, out_t* out, int64_t numel, int64_t first, int64_t last, const Mask& mask) {
  dropout_blocks<in_t, out_t, kResidual>(x, residual, out, numel, first, last, mask);
}

Isa cpu_isa() {
  static const Isa isa = (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl"))
                             ? Isa::kAvx512
                             : __builtin_cpu_supports("avx2") ? Isa::kAvx2 : Isa::kDefault;
  return isa;
}
#endif

template <typename in_t, typename out_t, bool kResidual>
void dropout_all(const in_t* x, const out_t* residual, out_t* out, int64_t numel, const Mask& mask) {
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, 16, [&](int64_t first, int64_t last) {
#if defined(__GNUC__) && defined(__x86_64__)
    switch (cpu_isa()) {
      case Isa::kAvx512: return dropout_blocks_avx512<in_t, out_t, kResidual>(x, residual, out, numel, first, last, mask);
      case Isa::kAvx2: return dropout_blocks_avx2<in_t, out_t, kResidual>(x, residual, out, numel, first, last, mask);
      case Isa::kDefault: break;
    }
#endif
    dropout_blocks<in_t, out_t, kResidual>(x, residual, out, numel, first, last, mask);
  });
}

// Dispatches the output type, then x's; residual (when given) is read in the output type.
at::Tensor dropout_cpu(const at::Tensor& x_in, double p, int64_t seed, const std::optional<at::Tensor>& residual_in,
                       std::optional<at::ScalarType> dtype) {
  const at::ScalarType out_type = check_dropout_args(x_in, p, residual_in, dtype);
  at::Tensor out = at::empty(x_in.sizes(), x_in.options().dtype(out_type));
  if (out.numel() == 0) return out;
  const at::Tensor x = x_in.contiguous();
  const at::Tensor residual = residual_in.has_value() ? residual_in->to(out_type).contiguous() : at::Tensor();
  const uint64_t threshold = dropout_threshold(p);
  if (threshold > 0xffffffffULL) return residual.defined() ? out.copy_(residual) : out.zero_();  // nothing kept
  const Mask mask{static_cast<uint64_t>(seed), static_cast<uint32_t>(threshold), dropout_scale(p)};
  SENTFUSE_DISPATCH_FLOAT_TYPES(out_type, "sentfuse_dropout_cpu_out", [&] {
    using out_t = scalar_t;
    out_t* dst = out.mutable_data_ptr<out_t>();
    SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "sentfuse_dropout_cpu", [&] {
      const scalar_t* src = x.const_data_ptr<scalar_t>();
      if (residual.defined()) {
        dropout_all<scalar_t, out_t, true>(src, residual.const_data_ptr<out_t>(), dst, out.numel(), mask);
      } else {
        dropout_all<scalar_t, out_t, false>(src, nullptr, dst, out.numel(), mask);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("dropout", &dropout_cpu); }

}  // namespace sentfuse
