// Argument checks and token packing shared by the CPU and CUDA host entry points of splade_pool and
// splade_pool_varlen, so both backends accept and reject the same inputs with the same messages.
// Declared here, defined once in common/splade_checks.cpp (C++ compiler only; nvcc never sees them).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace sentfuse {

// Activation applied to each logit before pooling, in reference.py's SPLADE_ACTIVATIONS order:
// relu -> log1p(relu(x)); log1p_relu -> log1p(log1p(relu(x))) (sentence-transformers' SpladePooling).
enum class SpladeActivation : int { Relu = 0, Log1pRelu };
// How token activations are reduced over a sequence, in reference.py's SPLADE_POOLINGS order.
enum class SpladePooling : int { Max = 0, Sum };

struct SpladeArgs {
  SpladeActivation activation;
  SpladePooling pooling;
  int log1p_count() const { return activation == SpladeActivation::Relu ? 1 : 2; }
};

// A batch reduced to its valid tokens: tokens [T, H] contiguous, sequence b at rows offsets[b]:offsets[b + 1].
struct PackedTokens {
  at::Tensor tokens;             // [T, H], hidden's dtype and device
  at::Tensor offsets;            // [B + 1] int64 on hidden's device
  std::vector<int64_t> host_offsets;  // the same offsets on the host
};

// hidden [B, L, H], attention_mask [B, L], weight [V, H], bias [V] or none.
SpladeArgs check_splade_pool_args(const at::Tensor& hidden, const at::Tensor& attention_mask, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                                  c10::string_view pooling);
// hidden [T, H], cu_seqlens [B + 1] int32/int64, weight [V, H], bias [V] or none.
SpladeArgs check_splade_pool_varlen_args(const at::Tensor& hidden, const at::Tensor& cu_seqlens,
                                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                         c10::string_view activation, c10::string_view pooling);

// The tokens attention_mask marks valid (mask != 0), row by row, in order.
PackedTokens pack_valid_tokens(const at::Tensor& hidden, const at::Tensor& attention_mask);
// The tokens cu_seqlens covers (offsets checked: non-decreasing, within hidden's rows), rebased to start at 0.
PackedTokens pack_varlen_tokens(const at::Tensor& hidden, const at::Tensor& cu_seqlens);

// NaN or inf in the pooled tokens, the weight or the bias raise an error naming the argument (padding is
// never read, so it may hold anything).
void check_splade_finite(const char* op, const at::Tensor& tokens, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias);

// bias as a contiguous fp32 [V] tensor, or zeros when there is none.
at::Tensor splade_bias_fp32(const std::optional<at::Tensor>& bias, const at::Tensor& weight);

}  // namespace sentfuse
