// CPU kernels for splade_pool and splade_pool_varlen (semantics: python/sentfuse/reference.py).
//
// The [tokens, vocab] logits never exist whole. Padding is dropped first (only valid tokens are packed);
// then the vocabulary is walked a tile at a time: one GEMM over every packed token (at::mm on torch's
// threads: oneDNN/MKL, AMX for bf16) fills a [tokens, vocab tile] block, and a parallel loop over the
// sequences folds the block into their pooled rows. Max pooling keeps the raw maximum: bias and
// activation are monotonic, so they apply once at the end (and -inf, a row without tokens, becomes 0).
// Sum pooling activates the block (vectorized ATen ops) before adding it up.
#include <algorithm>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/splade_checks.h"
#include "cpu/load_float.h"
#include "common/dispatch.h"

namespace sentfuse {
namespace {

// Logit elements per tile: 32 MiB of fp32, so that a tile spans >= 512 vocabulary rows for up to 16k tokens
// (a GEMM that wide runs at the machine's peak) while memory stays O(tokens x tile), never tokens x vocab.
constexpr int64_t kTileElements = int64_t(1) << 23;
constexpr int64_t kMinVocabTile = 128;

// Folds logits [T, nv] (rows: packed tokens) into out[b, 0:nv] for sequences b in [b0, b1); out rows are
// out_stride apart. Max keeps the maximum, sum adds.
template <typename scalar_t>
void fold_tile(const scalar_t* logits, int64_t nv, const std::vector<int64_t>& offsets, int64_t b0, int64_t b1,
               SpladePooling pooling, float* out, int64_t out_stride) {
  for (int64_t b = b0; b < b1; ++b) {
    float* __restrict acc = out + b * out_stride;
    for (int64_t t = offsets[b]; t < offsets[b + 1]; ++t) {
      const scalar_t* __restrict x = logits + t * nv;
      if (pooling == SpladePooling::Max) {
        for (int64_t v = 0; v < nv; ++v) acc[v] = std::max(acc[v], load_float(x, v));
      } else {
        for (int64_t v = 0; v < nv; ++v) acc[v] += load_float(x, v);
      }
    }
  }
}

// logits + bias, then the activation: log1p(relu(x)), applied log1p_count times log1p (in place).
void activate(at::Tensor& x, const at::Tensor& bias, int log1p_count) {
  x.add_(bias).relu_();
  for (int i = 0; i < log1p_count; ++i) x.log1p_();
}

// tokens [T, H] packed, weight [V, H] -> out [B, V] fp32 pooled over each sequence's tokens.
at::Tensor splade_pool_packed(const char* op, const PackedTokens& packed, const at::Tensor& weight_in,
                              const std::optional<at::Tensor>& bias_in, SpladeArgs args) {
  const at::Tensor& tokens = packed.tokens;
  const std::vector<int64_t>& offsets = packed.host_offsets;
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1, T = tokens.size(0), V = weight_in.size(0);
  const bool max_pool = args.pooling == SpladePooling::Max;
  at::Tensor out = at::full({B, V}, max_pool ? -std::numeric_limits<float>::infinity() : 0.f,
                            tokens.options().dtype(at::kFloat));
  if (B == 0 || V == 0) return out;
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = splade_bias_fp32(bias_in, weight);
  check_splade_finite(op, tokens, weight, bias_in);

  const int64_t tile = std::min(V, std::max(kMinVocabTile, kTileElements / std::max<int64_t>(T, 1)));
  for (int64_t v0 = 0; v0 < V; v0 += tile) {
    const int64_t nv = std::min(tile, V - v0);
    at::Tensor logits = at::mm(tokens, weight.narrow(0, v0, nv).t());  // [T, nv]
    if (!max_pool) {
      logits = logits.to(at::kFloat);
      activate(logits, bias.narrow(0, v0, nv), args.log1p_count());
    }
    SENTFUSE_DISPATCH_FLOAT_TYPES(logits.scalar_type(), "sentfuse_splade_fold_cpu", [&] {
      const scalar_t* block = logits.const_data_ptr<scalar_t>();
      float* dst = out.mutable_data_ptr<float>() + v0;
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        fold_tile(block, nv, offsets, b0, b1, args.pooling, dst, V);
      });
    });
  }
  if (max_pool) activate(out, bias, args.log1p_count());
  return out;
}

at::Tensor splade_pool_cpu(const at::Tensor& hidden, const at::Tensor& attention_mask, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, c10::string_view activation,
                           c10::string_view pooling) {
  const SpladeArgs args = check_splade_pool_args(hidden, attention_mask, weight, bias, activation, pooling);
  return splade_pool_packed("splade_pool", pack_valid_tokens(hidden, attention_mask), weight, bias, args);
}

at::Tensor splade_pool_varlen_cpu(const at::Tensor& hidden, const at::Tensor& cu_seqlens, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                                  c10::string_view pooling) {
  const SpladeArgs args = check_splade_pool_varlen_args(hidden, cu_seqlens, weight, bias, activation, pooling);
  return splade_pool_packed("splade_pool_varlen", pack_varlen_tokens(hidden, cu_seqlens), weight, bias, args);
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) {
  m.impl("splade_pool", &splade_pool_cpu);
  m.impl("splade_pool_varlen", &splade_pool_varlen_cpu);
}

}  // namespace sentfuse
