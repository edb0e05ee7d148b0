// The host-side plan of splade_pool and splade_pool_varlen, shared by the CPU and CUDA entry points: pack the
// valid tokens, walk the vocabulary a tile at a time, finish max pooling. The backends differ only in how a
// tile is multiplied and folded (SpladeTiles). C++ compiler only; nvcc never sees it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common/checks.h"

namespace sentfuse {

// A batch reduced to its valid tokens: tokens [T, H] contiguous, sequence b at rows offsets[b]:offsets[b + 1].
struct PackedTokens {
  at::Tensor tokens;                  // [T, H], hidden's dtype and device
  at::Tensor offsets;                 // [B + 1] int64 on hidden's device
  std::vector<int64_t> host_offsets;  // the same offsets on the host
};

// The tokens attention_mask marks valid (mask != 0), row by row, in order.
PackedTokens pack_valid_tokens(const at::Tensor& hidden, const at::Tensor& attention_mask);
// The tokens cu_seqlens covers (offsets checked: non-decreasing, within hidden's rows), rebased to start at 0.
PackedTokens pack_varlen_tokens(const at::Tensor& hidden, const at::Tensor& cu_seqlens);

// What a backend brings to the tile loop.
struct SpladeTiles {
  int64_t max_elements;    // logits per tile at most: memory stays O(tokens x tile), never tokens x vocab
  int64_t min_vocab_rows;  // vocabulary rows per tile at least, so each GEMM stays wide
  // Multiplies tokens [T, H] by weight [nv, H] and folds the logits into out [B, nv] fp32 (a view whose rows
  // are V apart): max keeps the raw maximum, sum adds the activations of logit + bias [nv] fp32.
  std::function<void(const at::Tensor& tokens, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& out)>
      fold;
};

// tokens [T, H] packed, weight [V, H], bias [V] or none -> [B, V] fp32 pooled over each sequence's tokens.
at::Tensor splade_pool_tiled(const char* op, const PackedTokens& packed, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, SpladeArgs args, const SpladeTiles& tiles);

// x + bias, then log1p(relu(.)) and log1p_count - 1 more log1p, in place: the SPLADE activation.
void splade_activate(at::Tensor& x, const at::Tensor& bias, int log1p_count);

}  // namespace sentfuse
