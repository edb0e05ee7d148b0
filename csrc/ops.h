// Host entry points of every sentfuse op, per backend. Schemas live in bindings.cpp.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace sentfuse {

// hidden [B, L, H] fp32/fp16/bf16, attention_mask [B, L] -> [B, H] pooled over valid tokens.
at::Tensor masked_pool_cpu(const at::Tensor& hidden, const at::Tensor& attention_mask, c10::string_view mode,
                           bool normalize, int64_t skip_tokens);
// hidden [T, H] packed sequences, cu_seqlens [B + 1] int32/int64 offsets -> [B, H].
at::Tensor masked_pool_varlen_cpu(const at::Tensor& hidden, const at::Tensor& cu_seqlens, c10::string_view mode,
                                  bool normalize, int64_t skip_tokens);
// x [N, D] -> [N, dim or D]: first `dim` features, scaled to unit L2 norm.
at::Tensor l2_normalize_cpu(const at::Tensor& x, std::optional<int64_t> dim);

// queries [M, D], corpus [N, D] -> (scores, indices) [M, min(k, N)]: exact cosine top-k, tile by tile.
std::tuple<at::Tensor, at::Tensor> cosine_topk_cpu(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                                   bool normalized, bool exclude_self,
                                                   std::optional<double> min_score, int64_t query_offset,
                                                   int64_t corpus_offset, bool bf16_rescore);
// a [N, D], b [M, D] or none (a against itself, i < j) -> (rows, cols, scores) [P]: pairs scoring >= threshold.
std::tuple<at::Tensor, at::Tensor, at::Tensor> threshold_pairs_cpu(const at::Tensor& a,
                                                                   const std::optional<at::Tensor>& b,
                                                                   double threshold, bool normalized,
                                                                   std::optional<int64_t> max_pairs);
// a [N, D], b [M, D] or none, rows / cols [P] -> scores [P] fp32 of the listed pairs.
at::Tensor pair_scores_cpu(const at::Tensor& a, const std::optional<at::Tensor>& b, const at::Tensor& rows,
                           const at::Tensor& cols, bool normalized);

at::Tensor masked_pool_cuda(const at::Tensor& hidden, const at::Tensor& attention_mask, c10::string_view mode,
                            bool normalize, int64_t skip_tokens);
at::Tensor masked_pool_varlen_cuda(const at::Tensor& hidden, const at::Tensor& cu_seqlens, c10::string_view mode,
                                   bool normalize, int64_t skip_tokens);
at::Tensor l2_normalize_cuda(const at::Tensor& x, std::optional<int64_t> dim);
std::tuple<at::Tensor, at::Tensor> cosine_topk_cuda(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                                    bool normalized, bool exclude_self,
                                                    std::optional<double> min_score, int64_t query_offset,
                                                    int64_t corpus_offset, bool bf16_rescore);
std::tuple<at::Tensor, at::Tensor, at::Tensor> threshold_pairs_cuda(const at::Tensor& a,
                                                                    const std::optional<at::Tensor>& b,
                                                                    double threshold, bool normalized,
                                                                    std::optional<int64_t> max_pairs);
at::Tensor pair_scores_cuda(const at::Tensor& a, const std::optional<at::Tensor>& b, const at::Tensor& rows,
                            const at::Tensor& cols, bool normalized);

}  // namespace sentfuse
