// CPU kernels for splade_pool and splade_pool_varlen (semantics: python/sentfuse/reference.py; packing and
// the vocabulary tile loop: common/splade_plan.cpp).
//
// Each vocabulary tile is one GEMM over every packed token (at::mm on torch's threads: oneDNN/MKL, AMX for
// bf16) into a [tokens, vocab tile] block, and a parallel loop over the sequences folds the block into their
// pooled rows. Sum pooling activates the block (vectorized ATen ops) before adding it up.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/dispatch.h"
#include "common/splade_plan.h"
#include "cpu/load_float.h"

namespace sentfuse {
namespace {

// 32 MiB of fp32 logits per tile: >= 512 vocabulary rows for up to 16k tokens (a GEMM that wide runs at the
// machine's peak).
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

at::Tensor splade_pool_packed(const char* op, const PackedTokens& packed, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, SpladeArgs args) {
  const std::vector<int64_t>& offsets = packed.host_offsets;
  const int64_t B = static_cast<int64_t>(offsets.size()) - 1;
  SpladeTiles tiles{kTileElements, kMinVocabTile, nullptr};
  tiles.fold = [&](const at::Tensor& tokens, const at::Tensor& w, const at::Tensor& b, at::Tensor& out) {
    at::Tensor logits = at::mm(tokens, w.t());  // [T, nv]
    if (args.pooling == SpladePooling::Sum) {
      logits = logits.to(at::kFloat);
      splade_activate(logits, b, args.log1p_count());
    }
    SENTFUSE_DISPATCH_FLOAT_TYPES(logits.scalar_type(), "sentfuse_splade_fold_cpu", [&] {
      const scalar_t* block = logits.const_data_ptr<scalar_t>();
      float* dst = out.mutable_data_ptr<float>();
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        fold_tile(block, w.size(0), offsets, b0, b1, args.pooling, dst, out.stride(0));
      });
    });
  };
  return splade_pool_tiled(op, packed, weight, bias, args, tiles);
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
