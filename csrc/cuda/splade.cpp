// CUDA host entry points of splade_pool and splade_pool_varlen: checks, device guard, stream, tiling,
// registration. Fold kernel: splade.cu.
//
// Padding is dropped first (only valid tokens are packed). Each vocabulary tile is one cuBLAS GEMM over every
// packed token with fp32 output (16-bit inputs accumulate and store in fp32), folded into the pooled rows
// by one kernel; max pooling applies bias and activation once after the last tile.
#include <algorithm>
#include <limits>
#include <optional>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/splade_checks.h"
#include "cuda/splade.h"

namespace sentfuse {
namespace {

// Logit elements per tile: 256 MiB of fp32, so a tile spans >= 4096 vocabulary rows for up to 16k tokens
// (GEMMs wide enough to fill the GPU) while memory stays O(tokens x tile), never tokens x vocab.
constexpr int64_t kTileElements = int64_t(1) << 26;
constexpr int64_t kMinVocabTile = 256;

at::Tensor splade_pool_packed_cuda(const char* op, const PackedTokens& packed, const at::Tensor& weight_in,
                                   const std::optional<at::Tensor>& bias_in, SpladeArgs args) {
  const at::Tensor& tokens = packed.tokens;
  const int64_t B = packed.offsets.size(0) - 1, T = tokens.size(0), V = weight_in.size(0);
  const bool max_pool = args.pooling == SpladePooling::Max;
  at::Tensor out = at::full({B, V}, max_pool ? -std::numeric_limits<float>::infinity() : 0.f,
                            tokens.options().dtype(at::kFloat));
  if (B == 0 || V == 0) return out;
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = splade_bias_fp32(bias_in, weight);
  check_splade_finite(op, tokens, weight, bias_in);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t tile = std::min(V, std::max(kMinVocabTile, kTileElements / std::max<int64_t>(T, 1)));
  for (int64_t v0 = 0; v0 < V; v0 += tile) {
    const int64_t nv = std::min(tile, V - v0);
    const at::Tensor w = weight.narrow(0, v0, nv).t();  // [H, nv]
    const at::Tensor logits =
        tokens.scalar_type() == at::kFloat ? at::mm(tokens, w) : at::mm(tokens, w, at::kFloat);  // [T, nv] fp32
    C10_CUDA_CHECK(launch_splade_fold(logits.const_data_ptr<float>(), nv, packed.offsets.const_data_ptr<int64_t>(),
                                      B, bias.const_data_ptr<float>() + v0, !max_pool, args.log1p_count(),
                                      out.mutable_data_ptr<float>() + v0, V, stream));
  }
  if (max_pool) {
    out.add_(bias).relu_();
    for (int i = 0; i < args.log1p_count(); ++i) out.log1p_();
  }
  return out;
}

at::Tensor splade_pool_cuda(const at::Tensor& hidden, const at::Tensor& attention_mask, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view activation,
                            c10::string_view pooling) {
  const SpladeArgs args = check_splade_pool_args(hidden, attention_mask, weight, bias, activation, pooling);
  const c10::cuda::CUDAGuard guard(hidden.device());
  return splade_pool_packed_cuda("splade_pool", pack_valid_tokens(hidden, attention_mask), weight, bias, args);
}

at::Tensor splade_pool_varlen_cuda(const at::Tensor& hidden, const at::Tensor& cu_seqlens, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, c10::string_view activation,
                                   c10::string_view pooling) {
  const SpladeArgs args = check_splade_pool_varlen_args(hidden, cu_seqlens, weight, bias, activation, pooling);
  const c10::cuda::CUDAGuard guard(hidden.device());
  return splade_pool_packed_cuda("splade_pool_varlen", pack_varlen_tokens(hidden, cu_seqlens), weight, bias, args);
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) {
  m.impl("splade_pool", &splade_pool_cuda);
  m.impl("splade_pool_varlen", &splade_pool_varlen_cuda);
}

}  // namespace sentfuse
