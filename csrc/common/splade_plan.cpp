// The one host-side plan of splade_pool (see splade_plan.h).
#include "common/splade_plan.h"

#include <algorithm>
#include <limits>

#include <ATen/ATen.h>

#include "common/message.h"

namespace sentfuse {

PackedTokens pack_valid_tokens(const at::Tensor& hidden, const at::Tensor& attention_mask) {
  const int64_t B = hidden.size(0), L = hidden.size(1), H = hidden.size(2);
  const at::Tensor valid = attention_mask.ne(0);
  const at::Tensor counts = valid.sum(1);  // [B] int64
  at::Tensor offsets = at::zeros({B + 1}, counts.options());
  if (B > 0) offsets.narrow(0, 1, B).copy_(counts.cumsum(0));
  const at::Tensor index = valid.reshape({B * L}).nonzero().reshape({-1});
  at::Tensor tokens = hidden.reshape({B * L, H}).index_select(0, index).contiguous();
  const at::Tensor host = offsets.cpu();
  const int64_t* p = host.const_data_ptr<int64_t>();
  return {std::move(tokens), std::move(offsets), std::vector<int64_t>(p, p + B + 1)};
}

PackedTokens pack_varlen_tokens(const at::Tensor& hidden, const at::Tensor& cu_seqlens) {
  const int64_t T = hidden.size(0);
  const at::Tensor host = cu_seqlens.to(at::kCPU, at::kLong).contiguous();
  const int64_t* p = host.const_data_ptr<int64_t>();
  const int64_t B = host.size(0) - 1;
  check_varlen_offsets(p, B, T, "splade_pool_varlen");
  SENTFUSE_CHECK_VALUE(p[0] >= 0 && p[0] <= T, "splade_pool_varlen: cu_seqlens[0]=", p[0], " is outside [0, ", T, "]");
  std::vector<int64_t> rebased(p, p + B + 1);
  for (auto& o : rebased) o -= p[0];
  at::Tensor tokens = hidden.narrow(0, p[0], p[B] - p[0]).contiguous();
  at::Tensor offsets = at::tensor(rebased, host.options()).to(hidden.device());
  return {std::move(tokens), std::move(offsets), std::move(rebased)};
}

void splade_activate(at::Tensor& x, const at::Tensor& bias, int log1p_count) {
  x.add_(bias).relu_();
  for (int i = 0; i < log1p_count; ++i) x.log1p_();
}

at::Tensor splade_pool_tiled(const char* op, const PackedTokens& packed, const at::Tensor& weight_in,
                             const std::optional<at::Tensor>& bias_in, SpladeArgs args, const SpladeTiles& tiles) {
  const at::Tensor& tokens = packed.tokens;
  const int64_t B = static_cast<int64_t>(packed.host_offsets.size()) - 1, T = tokens.size(0), V = weight_in.size(0);
  const bool max_pool = args.pooling == SpladePooling::Max;
  // Max pooling keeps the raw maximum: bias and activation are monotonic, so they apply once at the end
  // (and -inf, a row without tokens, becomes 0).
  at::Tensor out = at::full({B, V}, max_pool ? -std::numeric_limits<float>::infinity() : 0.f,
                            tokens.options().dtype(at::kFloat));
  if (B == 0 || V == 0) return out;
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->to(at::kFloat).contiguous()
                                              : at::zeros({V}, weight.options().dtype(at::kFloat));
  check_splade_finite(op, tokens, weight, bias_in);

  const int64_t tile = std::min(V, std::max(tiles.min_vocab_rows, tiles.max_elements / std::max<int64_t>(T, 1)));
  for (int64_t v0 = 0; v0 < V; v0 += tile) {
    const int64_t nv = std::min(tile, V - v0);
    at::Tensor dst = out.narrow(1, v0, nv);
    tiles.fold(tokens, weight.narrow(0, v0, nv), bias.narrow(0, v0, nv), dst);
  }
  if (max_pool) splade_activate(out, bias, args.log1p_count());
  return out;
}

}  // namespace sentfuse
