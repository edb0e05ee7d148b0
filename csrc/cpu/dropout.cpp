// CPU kernel of dropout: out = x * keep / (1 - p) (+ residual), keep drawn from (seed, index) by
// common/dropout_hash.h, in one pass over x (and residual) with nothing stored for the backward pass.
#include <algorithm>
#include <cstdint>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/dropout_hash.h"

namespace sentfuse {
namespace {

constexpr int64_t kBlock = 256;  // elements whose mask bits are hashed together (one stack buffer)

// The hash of a block of indices: integer-only, so the compiler vectorizes it; an AVX-512 build of the same
// loop (16 lanes of 32-bit multiplies) where the CPU has it, chosen once at run time.
#define SENTFUSE_HASH_BLOCK_BODY                                 \
  for (int64_t i = 0; i < n; ++i) out[i] = dropout_bits(seed, static_cast<uint64_t>(start + i));

void hash_block_default(uint64_t seed, int64_t start, int64_t n, uint32_t* out) { SENTFUSE_HASH_BLOCK_BODY }

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
__attribute__((target("avx512f,avx512vl"))) void hash_block_avx512(uint64_t seed, int64_t start, int64_t n,
                                                                    uint32_t* out) {
  SENTFUSE_HASH_BLOCK_BODY
}
using HashBlock = void (*)(uint64_t, int64_t, int64_t, uint32_t*);
HashBlock pick_hash_block() { return __builtin_cpu_supports("avx512f") ? hash_block_avx512 : hash_block_default; }
#else
using HashBlock = void (*)(uint64_t, int64_t, int64_t, uint32_t*);
HashBlock pick_hash_block() { return hash_block_default; }
#endif
#undef SENTFUSE_HASH_BLOCK_BODY

template <typename in_t, typename res_t, typename out_t>
void dropout_rows(const in_t* x, const res_t* residual, out_t* out, int64_t numel, uint64_t seed, uint64_t threshold,
                  float scale) {
  static const HashBlock hash_block = pick_hash_block();
  at::parallel_for(0, (numel + kBlock - 1) / kBlock, 64, [&](int64_t first, int64_t last) {
    uint32_t bits[kBlock];
    for (int64_t block = first; block < last; ++block) {
      const int64_t start = block * kBlock;
      const int64_t n = std::min(kBlock, numel - start);
      hash_block(seed, start, n, bits);
      for (int64_t i = 0; i < n; ++i) {
        const float kept = bits[i] >= threshold ? static_cast<float>(x[start + i]) * scale : 0.0f;
        out[start + i] = static_cast<out_t>(residual ? kept + static_cast<float>(residual[start + i]) : kept);
      }
    }
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
  const float scale = dropout_scale(p);
  SENTFUSE_DISPATCH_FLOAT_TYPES(out_type, "sentfuse_dropout_cpu_out", [&] {
    using out_t = scalar_t;
    const out_t* res = residual.defined() ? residual.const_data_ptr<out_t>() : nullptr;
    SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "sentfuse_dropout_cpu", [&] {
      dropout_rows<scalar_t, out_t, out_t>(x.const_data_ptr<scalar_t>(), res, out.mutable_data_ptr<out_t>(),
                                           out.numel(), static_cast<uint64_t>(seed), threshold, scale);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("dropout", &dropout_cpu); }

}  // namespace sentfuse
