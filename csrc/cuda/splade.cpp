// CUDA host entry points of splade_pool and splade_pool_varlen: checks, device guard, stream, registration.
// Packing and the vocabulary tile loop: common/splade_plan.cpp; fold kernel: splade.cu.
//
// Each vocabulary tile is one cuBLAS GEMM over every packed token with fp32 output, folded into the pooled
// rows by one kernel.
#include <optional>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/splade_plan.h"
#include "cuda/splade.h"

namespace sentfuse {
namespace {

// 256 MiB of fp32 logits per tile: >= 4096 vocabulary rows for up to 16k tokens (GEMMs wide enough to fill
// the GPU).
constexpr int64_t kTileElements = int64_t(1) << 26;
constexpr int64_t kMinVocabTile = 256;

at::Tensor splade_pool_packed_cuda(const char* op, const PackedTokens& packed, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, SpladeArgs args) {
  const int64_t B = packed.offsets.size(0) - 1;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SpladeTiles tiles{kTileElements, kMinVocabTile, nullptr};
  tiles.fold = [&](const at::Tensor& tokens, const at::Tensor& w, const at::Tensor& b, at::Tensor& out) {
    const at::Tensor wt = w.t();  // [H, nv]
    // 16-bit inputs accumulate and store in fp32.
    const at::Tensor logits =
        tokens.scalar_type() == at::kFloat ? at::mm(tokens, wt) : at::mm(tokens, wt, at::kFloat);  // [T, nv]
    C10_CUDA_CHECK(launch_splade_fold(logits.const_data_ptr<float>(), w.size(0),
                                      packed.offsets.const_data_ptr<int64_t>(), B, b.const_data_ptr<float>(),
                                      args.pooling == SpladePooling::Sum, args.log1p_count(),
                                      out.mutable_data_ptr<float>(), out.stride(0), stream));
  };
  return splade_pool_tiled(op, packed, weight, bias, args, tiles);
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
