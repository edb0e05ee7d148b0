// CPU kernels for masked_pool, masked_pool_varlen and l2_normalize, and their backward ops.
//
// Each row is pooled in one pass over its valid tokens into an fp32 accumulator that stays in L1
// (H floats), then scaled, optionally L2-normalized and written once. Rows run in parallel on
// torch's thread pool. Inner loops are plain unit-stride loops that the compiler vectorizes.
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/bounds.h"
#include "common/checks.h"
#include "common/dispatch.h"
#include "cpu/load_float.h"

namespace sentfuse {
namespace {

template <typename scalar_t>
inline void add_scaled(float* __restrict acc, const scalar_t* __restrict x, float w, int64_t n) {
  for (int64_t h = 0; h < n; ++h) acc[h] += w * load_float(x, h);
}

template <typename scalar_t>
inline void add(float* __restrict acc, const scalar_t* __restrict x, int64_t n) {
  for (int64_t h = 0; h < n; ++h) acc[h] += load_float(x, h);
}

template <typename scalar_t>
inline void take_max(float* __restrict acc, const scalar_t* __restrict x, int64_t n) {
  for (int64_t h = 0; h < n; ++h) acc[h] = std::max(acc[h], load_float(x, h));
}

template <typename scalar_t>
inline void copy_in(float* __restrict acc, const scalar_t* __restrict x, int64_t n) {
  for (int64_t h = 0; h < n; ++h) acc[h] = load_float(x, h);
}

// acc * scale, divided by its L2 norm when normalize (F.normalize's eps of 1e-12), stored as scalar_t.
template <typename scalar_t>
inline void store_row(scalar_t* __restrict out, const float* __restrict acc, float scale, bool normalize,
                      int64_t n) {
  if (normalize) {
    float sumsq = 0.f;
    for (int64_t h = 0; h < n; ++h) sumsq += acc[h] * acc[h];
    float norm = std::sqrt(sumsq) * std::abs(scale);
    scale = norm > kNormEps ? scale / norm : scale / kNormEps;
  }
  for (int64_t h = 0; h < n; ++h) out[h] = static_cast<scalar_t>(acc[h] * scale);
}

// One sequence: `length` tokens `token_stride` elements apart; `mask` is null when all are present.
struct RowView {
  const void* tokens;
  int64_t length;
  int64_t token_stride;
  const bool* mask;

  bool present(int64_t t) const { return mask == nullptr || mask[t]; }
};

// What a row's pass leaves in acc: how many tokens it pooled and the scale that finishes the mode.
struct Pooled {
  int64_t count;
  float scale;
};

// mean, mean_sqrt_len_tokens and weightedmean: acc = sum of w_t * token t over the valid tokens from `start`.
template <typename scalar_t>
Pooled pool_sum(const RowView& row, PoolMode mode, int64_t first, int64_t start, int64_t H, float* acc) {
  const auto* x = static_cast<const scalar_t*>(row.tokens);
  std::fill(acc, acc + H, 0.f);
  int64_t count = 0;
  float weight_sum = 0.f;
  for (int64_t t = start; t < row.length; ++t) {
    if (!row.present(t)) continue;
    if (mode == PoolMode::WeightedMean) {
      const float w = float(t + 1 - first);  // sentence-transformers: 1-based position after left padding
      add_scaled(acc, x + t * row.token_stride, w, H);
      weight_sum += w;
    } else {
      add(acc, x + t * row.token_stride, H);
    }
    ++count;
  }
  if (count == 0) return {0, 0.f};
  if (mode == PoolMode::WeightedMean) return {count, 1.f / weight_sum};
  return {count, mode == PoolMode::Mean ? 1.f / count : 1.f / std::sqrt(float(count))};
}

template <typename scalar_t>
Pooled pool_max(const RowView& row, int64_t start, int64_t H, float* acc) {
  const auto* x = static_cast<const scalar_t*>(row.tokens);
  int64_t count = 0;
  for (int64_t t = start; t < row.length; ++t) {
    if (!row.present(t)) continue;
    if (count++ == 0) {
      copy_in(acc, x + t * row.token_stride, H);
    } else {
      take_max(acc, x + t * row.token_stride, H);
    }
  }
  return {count, 1.f};
}

// cls and lasttoken: the position of the first or last valid token from `start`, or -1.
inline int64_t pick_token(const RowView& row, PoolMode mode, int64_t start) {
  if (mode == PoolMode::Cls) {
    for (int64_t t = start; t < row.length; ++t)
      if (row.present(t)) return t;
  } else {
    for (int64_t t = row.length - 1; t >= start; --t)
      if (row.present(t)) return t;
  }
  return -1;
}

template <typename scalar_t>
Pooled pool_pick(const RowView& row, PoolMode mode, int64_t start, int64_t H, float* acc) {
  const int64_t pick = pick_token(row, mode, start);
  if (pick < 0) return {0, 0.f};
  copy_in(acc, static_cast<const scalar_t*>(row.tokens) + pick * row.token_stride, H);
  return {1, 1.f};
}

// Where a row's pooling starts: its first present token, and that plus skip_tokens (saturating instead of
// overflowing for huge skip_tokens).
struct RowStart {
  int64_t first;
  int64_t start;
};

inline RowStart row_start(const RowView& row, int64_t skip_tokens) {
  int64_t first = 0;
  while (first < row.length && !row.present(first)) ++first;
  return {first, skip_tokens >= row.length - first ? row.length : first + skip_tokens};
}

// Pools one row into out[0:H]; acc is H floats of scratch.
template <typename scalar_t>
void pool_row(const RowView& row, PoolMode mode, int64_t skip_tokens, bool normalize, int64_t H, float* acc,
              scalar_t* out) {
  const auto [first, start] = row_start(row, skip_tokens);
  Pooled pooled;
  if (mode == PoolMode::Max) {
    pooled = pool_max<scalar_t>(row, start, H, acc);
  } else if (mode == PoolMode::Cls || mode == PoolMode::LastToken) {
    pooled = pool_pick<scalar_t>(row, mode, start, H, acc);
  } else {
    pooled = pool_sum<scalar_t>(row, mode, first, start, H, acc);
  }
  if (pooled.count == 0) {
    std::fill(out, out + H, scalar_t(0.f));
    return;
  }
  store_row(out, acc, pooled.scale, normalize, H);
}

// Runs pool_row over `batch` rows in parallel; row_at(b) describes row b.
template <typename RowAt>
void pool_rows(const at::Tensor& hidden, at::Tensor& out, int64_t batch, RowAt row_at, PoolMode mode,
               int64_t skip_tokens, bool normalize) {
  const int64_t H = out.size(1);
  SENTFUSE_DISPATCH_FLOAT_TYPES(hidden.scalar_type(), "sentfuse_masked_pool_cpu", [&] {
    auto* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(H);
      for (int64_t b = begin; b < end; ++b)
        pool_row<scalar_t>(row_at(b), mode, skip_tokens, normalize, H, acc.data(), out_ptr + b * H);
    });
  });
}

at::Tensor masked_pool_cpu(const at::Tensor& hidden_in, const at::Tensor& attention_mask, c10::string_view mode,
                           bool normalize, int64_t skip_tokens) {
  const PoolMode pool_mode = check_masked_pool_args(hidden_in, attention_mask, mode, skip_tokens);
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const int64_t B = hidden.size(0), L = hidden.size(1), H = hidden.size(2);
  at::Tensor out = at::empty({B, H}, hidden.options());
  if (B == 0 || H == 0) return out;
  if (L == 0) return out.zero_();

  const at::Tensor present = attention_mask.ne(0).contiguous();  // [B, L] bool
  const bool* mask = present.data_ptr<bool>();
  const auto* base = static_cast<const char*>(hidden.data_ptr());
  const int64_t item = hidden.element_size();
  const int64_t batch_stride = hidden.stride(0), token_stride = hidden.stride(1);
  auto row_at = [&](int64_t b) {
    return RowView{base + b * batch_stride * item, L, token_stride, mask + b * L};
  };
  pool_rows(hidden, out, B, row_at, pool_mode, skip_tokens, normalize);
  return out;
}

at::Tensor masked_pool_varlen_cpu(const at::Tensor& hidden_in, const at::Tensor& cu_seqlens_in,
                                  c10::string_view mode, bool normalize, int64_t skip_tokens) {
  const PoolMode pool_mode = check_varlen_args(hidden_in, cu_seqlens_in, mode, skip_tokens);
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const int64_t T = hidden.size(0), H = hidden.size(1);
  const at::Tensor cu = cu_seqlens_in.to(at::kLong).contiguous();
  const int64_t B = cu.size(0) - 1;
  const int64_t* offsets = cu.data_ptr<int64_t>();
  check_varlen_offsets(offsets, B, T);
  at::Tensor out = at::empty({B, H}, hidden.options());
  if (B == 0 || H == 0) return out;

  const auto* base = static_cast<const char*>(hidden.data_ptr());
  const int64_t item = hidden.element_size();
  const int64_t token_stride = hidden.stride(0);
  auto row_at = [&](int64_t b) {
    return RowView{base + offsets[b] * token_stride * item, offsets[b + 1] - offsets[b], token_stride, nullptr};
  };
  pool_rows(hidden, out, B, row_at, pool_mode, skip_tokens, normalize);
  return out;
}

at::Tensor l2_normalize_cpu(const at::Tensor& x_in, std::optional<int64_t> dim) {
  const int64_t D = check_l2_normalize_args(x_in, dim);
  const at::Tensor x = with_unit_feature_stride(x_in);
  const int64_t N = x.size(0);
  at::Tensor out = at::empty({N, D}, x.options());
  if (N == 0) return out;
  SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "sentfuse_l2_normalize_cpu", [&] {
    const auto* in_ptr = x.data_ptr<scalar_t>();
    auto* out_ptr = out.data_ptr<scalar_t>();
    const int64_t row_stride = x.stride(0);
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(D);
      for (int64_t n = begin; n < end; ++n) {
        copy_in(acc.data(), in_ptr + n * row_stride, D);
        store_row(out_ptr + n * D, acc.data(), 1.f, true, D);
      }
    });
  });
  return out;
}

// ---- Backward ----------------------------------------------------------------------------------------------
// Each row's gradient is written once over all its tokens (zeros where a token was not pooled). What the
// forward kept in fp32 (the pooled row for normalize, each feature's argmax for max) is recomputed from
// hidden rather than saved, so the autograd graph holds nothing beyond the op's inputs.

// A row of grad_hidden: `length` tokens of H contiguous features, `token_stride` elements apart.
template <typename scalar_t>
struct GradRow {
  scalar_t* tokens;
  int64_t token_stride;

  scalar_t* at(int64_t t) const { return tokens + t * token_stride; }
};

template <typename scalar_t>
void fill_tokens(const GradRow<scalar_t>& grad, int64_t begin, int64_t end, int64_t H) {
  for (int64_t t = begin; t < end; ++t) std::fill(grad.at(t), grad.at(t) + H, scalar_t(0.f));
}

// Turns dp from d(loss)/d(normalized row) into d(loss)/d(p), p = acc * scale, through y = p / max(|p|, eps)
// (F.normalize, whose clamp passes no gradient to the norm below eps).
inline void normalize_backward(const float* acc, float scale, float* dp, int64_t H) {
  float pp = 0.f, pg = 0.f;
  for (int64_t h = 0; h < H; ++h) {
    const float p = acc[h] * scale;
    pp += p * p;
    pg += p * dp[h];
  }
  const float norm = std::sqrt(pp);
  if (norm < kNormEps) {
    for (int64_t h = 0; h < H; ++h) dp[h] /= kNormEps;
    return;
  }
  const float along = pg / pp;  // (y . g) / |p|
  for (int64_t h = 0; h < H; ++h) dp[h] = (dp[h] - acc[h] * scale * along) / norm;
}

// The scale pool_sum would finish with, from the mask alone (no pass over the features).
inline Pooled sum_scale(const RowView& row, PoolMode mode, int64_t first, int64_t start) {
  int64_t count = 0;
  float weight_sum = 0.f;
  for (int64_t t = start; t < row.length; ++t) {
    if (!row.present(t)) continue;
    weight_sum += float(t + 1 - first);
    ++count;
  }
  if (count == 0) return {0, 0.f};
  if (mode == PoolMode::WeightedMean) return {count, 1.f / weight_sum};
  return {count, mode == PoolMode::Mean ? 1.f / count : 1.f / std::sqrt(float(count))};
}

// pool_max that also records, per feature, the first valid token holding the maximum (the reference's rule).
template <typename scalar_t>
int64_t pool_argmax(const RowView& row, int64_t start, int64_t H, float* acc, int64_t* arg) {
  const auto* x = static_cast<const scalar_t*>(row.tokens);
  int64_t count = 0;
  for (int64_t t = start; t < row.length; ++t) {
    if (!row.present(t)) continue;
    const scalar_t* token = x + t * row.token_stride;
    if (count++ == 0) {
      copy_in(acc, token, H);
      std::fill(arg, arg + H, t);
      continue;
    }
    for (int64_t h = 0; h < H; ++h) {
      const float v = load_float(token, h);
      if (v > acc[h]) {
        acc[h] = v;
        arg[h] = t;
      }
    }
  }
  return count;
}

// mean, mean_sqrt_len_tokens, weightedmean: token t's gradient is w_t * scale * dp, for every valid token.
template <typename scalar_t>
void sum_backward(const RowView& row, PoolMode mode, RowStart rs, float scale, const float* dp, int64_t H,
                  const GradRow<scalar_t>& grad) {
  for (int64_t t = 0; t < row.length; ++t) {
    scalar_t* out = grad.at(t);
    if (t < rs.start || !row.present(t)) {
      std::fill(out, out + H, scalar_t(0.f));
      continue;
    }
    const float w = mode == PoolMode::WeightedMean ? float(t + 1 - rs.first) * scale : scale;
    for (int64_t h = 0; h < H; ++h) out[h] = static_cast<scalar_t>(w * dp[h]);
  }
}

// Scratch for one thread's rows: the recomputed pooled row, its gradient and max's argmax.
struct BackwardScratch {
  std::vector<float> acc, dp;
  std::vector<int64_t> arg;
  explicit BackwardScratch(int64_t H) : acc(H), dp(H), arg(H) {}
};

// Writes d(loss)/d(tokens) of one row from g = d(loss)/d(pooled row) [H].
template <typename scalar_t>
void pool_row_backward(const RowView& row, PoolMode mode, int64_t skip_tokens, bool normalize, int64_t H,
                       const scalar_t* g, BackwardScratch& s, const GradRow<scalar_t>& grad) {
  const RowStart rs = row_start(row, skip_tokens);
  float* dp = s.dp.data();
  copy_in(dp, g, H);
  if (mode == PoolMode::Max) {
    if (pool_argmax<scalar_t>(row, rs.start, H, s.acc.data(), s.arg.data()) == 0) return fill_tokens(grad, 0, row.length, H);
    if (normalize) normalize_backward(s.acc.data(), 1.f, dp, H);
    fill_tokens(grad, 0, row.length, H);
    for (int64_t h = 0; h < H; ++h) grad.at(s.arg[h])[h] = static_cast<scalar_t>(dp[h]);
    return;
  }
  if (mode == PoolMode::Cls || mode == PoolMode::LastToken) {
    const int64_t pick = pick_token(row, mode, rs.start);
    fill_tokens(grad, 0, row.length, H);
    if (pick < 0) return;
    if (normalize) {
      copy_in(s.acc.data(), static_cast<const scalar_t*>(row.tokens) + pick * row.token_stride, H);
      normalize_backward(s.acc.data(), 1.f, dp, H);
    }
    for (int64_t h = 0; h < H; ++h) grad.at(pick)[h] = static_cast<scalar_t>(dp[h]);
    return;
  }
  const Pooled pooled = normalize ? pool_sum<scalar_t>(row, mode, rs.first, rs.start, H, s.acc.data())
                                  : sum_scale(row, mode, rs.first, rs.start);
  if (pooled.count == 0) return fill_tokens(grad, 0, row.length, H);
  if (normalize) normalize_backward(s.acc.data(), pooled.scale, dp, H);
  sum_backward(row, mode, rs, pooled.scale, dp, H, grad);
}

// Runs pool_row_backward over `batch` rows in parallel; row_at(b) describes row b, grad_at(b) where its
// gradient goes (as a pointer into grad of hidden's dtype, token stride H).
template <typename RowAt, typename GradAt>
void pool_rows_backward(const at::Tensor& hidden, const at::Tensor& grad_out, int64_t batch, RowAt row_at,
                        GradAt grad_at, PoolMode mode, int64_t skip_tokens, bool normalize) {
  const int64_t H = grad_out.size(1);
  SENTFUSE_DISPATCH_FLOAT_TYPES(hidden.scalar_type(), "sentfuse_masked_pool_backward_cpu", [&] {
    const auto* g = grad_out.data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      BackwardScratch scratch(H);
      for (int64_t b = begin; b < end; ++b) {
        const GradRow<scalar_t> grad{static_cast<scalar_t*>(grad_at(b)), H};
        pool_row_backward<scalar_t>(row_at(b), mode, skip_tokens, normalize, H, g + b * H, scratch, grad);
      }
    });
  });
}

at::Tensor masked_pool_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& hidden_in,
                                    const at::Tensor& attention_mask, c10::string_view mode, bool normalize,
                                    int64_t skip_tokens) {
  const PoolMode pool_mode = check_masked_pool_args(hidden_in, attention_mask, mode, skip_tokens);
  const int64_t B = hidden_in.size(0), L = hidden_in.size(1), H = hidden_in.size(2);
  check_grad_out("masked_pool_backward", grad_out_in, B, H, hidden_in);
  at::Tensor grad = at::empty({B, L, H}, hidden_in.options());  // contiguous
  if (grad.numel() == 0) return grad;
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor present = attention_mask.ne(0).contiguous();  // [B, L] bool
  const bool* mask = present.data_ptr<bool>();
  const auto* base = static_cast<const char*>(hidden.data_ptr());
  auto* grad_base = static_cast<char*>(grad.data_ptr());
  const int64_t item = hidden.element_size();
  const int64_t batch_stride = hidden.stride(0), token_stride = hidden.stride(1);
  auto row_at = [&](int64_t b) {
    return RowView{base + b * batch_stride * item, L, token_stride, mask + b * L};
  };
  auto grad_at = [&](int64_t b) { return static_cast<void*>(grad_base + b * L * H * item); };
  pool_rows_backward(hidden, grad_out, B, row_at, grad_at, pool_mode, skip_tokens, normalize);
  return grad;
}

at::Tensor masked_pool_varlen_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& hidden_in,
                                           const at::Tensor& cu_seqlens_in, c10::string_view mode, bool normalize,
                                           int64_t skip_tokens) {
  const PoolMode pool_mode = check_varlen_args(hidden_in, cu_seqlens_in, mode, skip_tokens);
  const int64_t T = hidden_in.size(0), H = hidden_in.size(1);
  const at::Tensor cu = cu_seqlens_in.to(at::kLong).contiguous();
  const int64_t B = cu.size(0) - 1;
  const int64_t* offsets = cu.data_ptr<int64_t>();
  check_varlen_offsets(offsets, B, T);
  check_grad_out("masked_pool_varlen_backward", grad_out_in, B, H, hidden_in);
  at::Tensor grad = at::empty({T, H}, hidden_in.options());  // contiguous
  if (grad.numel() == 0) return grad;
  // Tokens before the first sequence or after the last belong to none.
  grad.narrow(0, 0, offsets[0]).zero_();
  grad.narrow(0, offsets[B], T - offsets[B]).zero_();
  const at::Tensor hidden = with_unit_feature_stride(hidden_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const auto* base = static_cast<const char*>(hidden.data_ptr());
  auto* grad_base = static_cast<char*>(grad.data_ptr());
  const int64_t item = hidden.element_size();
  const int64_t token_stride = hidden.stride(0);
  auto row_at = [&](int64_t b) {
    return RowView{base + offsets[b] * token_stride * item, offsets[b + 1] - offsets[b], token_stride, nullptr};
  };
  auto grad_at = [&](int64_t b) { return static_cast<void*>(grad_base + offsets[b] * H * item); };
  pool_rows_backward(hidden, grad_out, B, row_at, grad_at, pool_mode, skip_tokens, normalize);
  return grad;
}

at::Tensor l2_normalize_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                     std::optional<int64_t> dim) {
  const int64_t D = check_l2_normalize_args(x_in, dim);
  const int64_t N = x_in.size(0), full = x_in.size(1);
  check_grad_out("l2_normalize_backward", grad_out_in, N, D, x_in);
  // Features beyond `dim` were dropped, so their gradient is zero.
  at::Tensor grad = D == full ? at::empty({N, full}, x_in.options()) : at::zeros({N, full}, x_in.options());
  if (N == 0 || D == 0) return grad;
  const at::Tensor x = with_unit_feature_stride(x_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  SENTFUSE_DISPATCH_FLOAT_TYPES(x.scalar_type(), "sentfuse_l2_normalize_backward_cpu", [&] {
    const auto* in_ptr = x.data_ptr<scalar_t>();
    const auto* g_ptr = grad_out.data_ptr<scalar_t>();
    auto* grad_ptr = grad.data_ptr<scalar_t>();
    const int64_t row_stride = x.stride(0);
    const int64_t grain = std::max<int64_t>(1, 32768 / D);
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(D), dp(D);
      for (int64_t n = begin; n < end; ++n) {
        copy_in(acc.data(), in_ptr + n * row_stride, D);
        copy_in(dp.data(), g_ptr + n * D, D);
        normalize_backward(acc.data(), 1.f, dp.data(), D);
        scalar_t* out = grad_ptr + n * full;
        for (int64_t h = 0; h < D; ++h) out[h] = static_cast<scalar_t>(dp[h]);
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) {
  m.impl("masked_pool", &masked_pool_cpu);
  m.impl("masked_pool_varlen", &masked_pool_varlen_cpu);
  m.impl("l2_normalize", &l2_normalize_cpu);
  m.impl("masked_pool_backward", &masked_pool_backward_cpu);
  m.impl("masked_pool_varlen_backward", &masked_pool_varlen_backward_cpu);
  m.impl("l2_normalize_backward", &l2_normalize_backward_cpu);
}

}  // namespace sentfuse
