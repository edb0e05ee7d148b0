// The one definition of splade_pool's argument checks and token packing (see splade_checks.h).
#include "common/message.h"
#include "common/splade_checks.h"

#include <string>

#include <ATen/ATen.h>

namespace sentfuse {
namespace {

SpladeActivation parse_activation(const char* op, c10::string_view activation) {
  if (activation == "relu") return SpladeActivation::Relu;
  if (activation == "log1p_relu") return SpladeActivation::Log1pRelu;
  SENTFUSE_CHECK_VALUE(false, op, ": activation must be 'relu' or 'log1p_relu', got '", std::string(activation), "'");
}

SpladePooling parse_pooling(const char* op, c10::string_view pooling) {
  if (pooling == "max") return SpladePooling::Max;
  if (pooling == "sum") return SpladePooling::Sum;
  SENTFUSE_CHECK_VALUE(false, op, ": pooling must be 'max' or 'sum', got '", std::string(pooling), "'");
}

void check_float(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  SENTFUSE_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
                   " must be float32, float16 or bfloat16, got ", dt);
}

// weight [V, H] with H = hidden's last dim, hidden's dtype and device; bias [V] or none.
SpladeArgs check_projection(const char* op, const at::Tensor& hidden, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view activation,
                            c10::string_view pooling) {
  check_float(op, "hidden", hidden);
  const int64_t H = hidden.size(-1);
  SENTFUSE_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == H, op, ": weight must be [vocab, hidden] = [V, ", H,
                    "] to match hidden ", hidden.sizes(), ", got ", weight.sizes());
  SENTFUSE_CHECK_TYPE(weight.scalar_type() == hidden.scalar_type(), op, ": weight must have hidden's dtype ",
                   hidden.scalar_type(), ", got ", weight.scalar_type());
  SENTFUSE_CHECK_VALUE(weight.device() == hidden.device(), op, ": weight is on ", weight.device(),
                    " but hidden is on ", hidden.device());
  if (bias.has_value()) {
    SENTFUSE_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [vocab] = [",
                      weight.size(0), "] to match weight ", weight.sizes(), ", got ", bias->sizes());
    check_float(op, "bias", *bias);
    SENTFUSE_CHECK_VALUE(bias->device() == hidden.device(), op, ": bias is on ", bias->device(), " but hidden is on ",
                      hidden.device());
  }
  return {parse_activation(op, activation), parse_pooling(op, pooling)};
}

}  // namespace

SpladeArgs check_splade_pool_args(const at::Tensor& hidden, const at::Tensor& attention_mask, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                                  c10::string_view pooling) {
  const char* op = "splade_pool";
  SENTFUSE_CHECK_VALUE(hidden.dim() == 3, op, ": hidden must be [batch, seq, hidden], got shape ", hidden.sizes());
  SENTFUSE_CHECK_VALUE(attention_mask.dim() == 2 && attention_mask.size(0) == hidden.size(0) &&
                        attention_mask.size(1) == hidden.size(1),
                    op, ": attention_mask must be [batch, seq] = [", hidden.size(0), ", ", hidden.size(1),
                    "] to match hidden ", hidden.sizes(), ", got ", attention_mask.sizes());
  SENTFUSE_CHECK_TYPE(!attention_mask.is_complex(), op, ": attention_mask must be integer, bool or float, got ",
                   attention_mask.scalar_type());
  SENTFUSE_CHECK_VALUE(attention_mask.device() == hidden.device(), op, ": attention_mask is on ",
                    attention_mask.device(), " but hidden is on ", hidden.device());
  return check_projection(op, hidden, weight, bias, activation, pooling);
}

SpladeArgs check_splade_pool_varlen_args(const at::Tensor& hidden, const at::Tensor& cu_seqlens,
                                         const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                         c10::string_view activation, c10::string_view pooling) {
  const char* op = "splade_pool_varlen";
  SENTFUSE_CHECK_VALUE(hidden.dim() == 2, op, ": hidden must be [total_tokens, hidden], got shape ", hidden.sizes());
  SENTFUSE_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, op,
                    ": cu_seqlens must be [batch + 1] offsets, got shape ", cu_seqlens.sizes());
  SENTFUSE_CHECK_TYPE(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong, op,
                   ": cu_seqlens must be int32 or int64, got ", cu_seqlens.scalar_type());
  SENTFUSE_CHECK_VALUE(cu_seqlens.device() == hidden.device(), op, ": cu_seqlens is on ", cu_seqlens.device(),
                    " but hidden is on ", hidden.device());
  return check_projection(op, hidden, weight, bias, activation, pooling);
}

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
  for (int64_t b = 0; b < B; ++b) {
    SENTFUSE_CHECK_VALUE(p[b] >= 0 && p[b] <= p[b + 1] && p[b + 1] <= T, "splade_pool_varlen: cu_seqlens must be ",
                      "non-decreasing offsets within [0, ", T, "] (hidden has ", T, " tokens), got cu_seqlens[", b,
                      "]=", p[b], ", cu_seqlens[", b + 1, "]=", p[b + 1]);
  }
  SENTFUSE_CHECK_VALUE(p[0] >= 0 && p[0] <= T, "splade_pool_varlen: cu_seqlens[0]=", p[0], " is outside [0, ", T, "]");
  std::vector<int64_t> rebased(p, p + B + 1);
  for (auto& o : rebased) o -= p[0];
  at::Tensor tokens = hidden.narrow(0, p[0], p[B] - p[0]).contiguous();
  at::Tensor offsets = at::tensor(rebased, host.options()).to(hidden.device());
  return {std::move(tokens), std::move(offsets), std::move(rebased)};
}

void check_splade_finite(const char* op, const at::Tensor& tokens, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  SENTFUSE_CHECK_VALUE(at::isfinite(tokens).all().item<bool>(), op,
                    ": hidden holds NaN or inf at a token the mask marks valid");
  SENTFUSE_CHECK_VALUE(at::isfinite(weight).all().item<bool>(), op, ": weight holds NaN or inf");
  SENTFUSE_CHECK_VALUE(!bias.has_value() || at::isfinite(*bias).all().item<bool>(), op, ": bias holds NaN or inf");
}

at::Tensor splade_bias_fp32(const std::optional<at::Tensor>& bias, const at::Tensor& weight) {
  if (!bias.has_value()) return at::zeros({weight.size(0)}, weight.options().dtype(at::kFloat));
  return bias->to(at::kFloat).contiguous();
}

}  // namespace sentfuse
