// CPU smooth_quantize: the int8 compute mode's input quantization (python/sentfuse/model/backbone.py), fused.
//
// Dividing x by the layer's smoothing factors, finding the range and writing uint8 codes takes torch three or
// more passes over x (and linear_dynamic's own two); here it is one pass for the range and one for the codes,
// each reading x once, rows split over torch's threads; AVX-512 or AVX2 loops where the CPU has them (checked at
// run time), plain loops elsewhere, all giving the same codes. Per tensor (one scale for x) or per row.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/quantize_range.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SENTFUSE_QUANTIZE_X86 1  // the AVX-512 and AVX2 loops
#endif

namespace sentfuse {
namespace {

constexpr float kCodeBound = 512.0f;  // |v * inverse_scale| is at most max_code + 0.5 in exact arithmetic

struct RowRange {
  float lo = std::numeric_limits<float>::max();
  float hi = std::numeric_limits<float>::lowest();
  float poison = 0.0f;  // NaN once any value was NaN or inf (v * 0 accumulated)
};

// What one task computes: rows [begin, end) of x [rows, K] times s [K] (null: ones).
struct RowSpan {
  const float* x;
  const float* s;
  int64_t K, begin, end;
};

// Columns [from, K) of each row (from > 0: the tail a vector loop left).
void range_plain(const RowSpan& span, RowRange& out, int64_t from = 0) {
  for (int64_t r = span.begin; r < span.end; ++r) {
    for (int64_t k = from; k < span.K; ++k) {
      const float v = span.s ? span.x[r * span.K + k] * span.s[k] : span.x[r * span.K + k];
      out.lo = std::min(out.lo, v);
      out.hi = std::max(out.hi, v);
      out.poison += v * 0.0f;
    }
  }
}

// codes = clamp(round(v * inverse_scale) + zero_point, 0, max_code), ties to even (the FPU's default mode, as
// torch.round).
void codes_plain(const RowSpan& span, const Quint8Range& q, uint8_t* codes, int64_t from = 0) {
  for (int64_t r = span.begin; r < span.end; ++r) {
    for (int64_t k = from; k < span.K; ++k) {
      const float v = span.s ? span.x[r * span.K + k] * span.s[k] : span.x[r * span.K + k];
      const float t = std::nearbyint(std::clamp(v * q.inverse_scale, -kCodeBound, kCodeBound));
      codes[r * span.K + k] = static_cast<uint8_t>(std::clamp(static_cast<int32_t>(t) + q.zero_point, 0, q.max_code));
    }
  }
}

#ifdef SENTFUSE_QUANTIZE_X86
// The same two loops, 16 values a step (the tail masked); cvtps rounds ties to even like nearbyint.
__attribute__((target("avx512f,avx512bw"))) __m512 load_v(const RowSpan& span, int64_t r, int64_t k, __mmask16 m) {
  const __m512 x = _mm512_maskz_loadu_ps(m, span.x + r * span.K + k);
  return span.s ? _mm512_mul_ps(x, _mm512_maskz_loadu_ps(m, span.s + k)) : x;
}

__attribute__((target("avx512f,avx512bw"))) void range_avx512(const RowSpan& span, RowRange& out) {
  __m512 lo = _mm512_set1_ps(out.lo), hi = _mm512_set1_ps(out.hi), poison = _mm512_setzero_ps();
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t r = span.begin; r < span.end; ++r) {
    for (int64_t k = 0; k < span.K; k += 16) {
      const __mmask16 m = span.K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (span.K - k)) - 1);
      const __m512 v = load_v(span, r, k, m);
      lo = _mm512_mask_min_ps(lo, m, lo, v);
      hi = _mm512_mask_max_ps(hi, m, hi, v);
      poison = _mm512_add_ps(poison, _mm512_mul_ps(v, zero));
    }
  }
  out = {std::min(out.lo, _mm512_reduce_min_ps(lo)), std::max(out.hi, _mm512_reduce_max_ps(hi)),
         out.poison + _mm512_reduce_add_ps(poison)};
}

__attribute__((target("avx512f,avx512bw"))) void codes_avx512(const RowSpan& span, const Quint8Range& range,
                                                               uint8_t* codes) {
  const __m512 scale = _mm512_set1_ps(range.inverse_scale), bound = _mm512_set1_ps(kCodeBound);
  const __m512 neg_bound = _mm512_set1_ps(-kCodeBound);
  const __m512i zp = _mm512_set1_epi32(range.zero_point), zero = _mm512_setzero_si512();
  const __m512i top = _mm512_set1_epi32(range.max_code);
  for (int64_t r = span.begin; r < span.end; ++r) {
    for (int64_t k = 0; k < span.K; k += 16) {
      const __mmask16 m = span.K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (span.K - k)) - 1);
      const __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(load_v(span, r, k, m), scale), neg_bound), bound);
      const __m512i q = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(t), zp), zero), top);
      _mm512_mask_cvtusepi32_storeu_epi8(codes + r * span.K + k, m, q);
    }
  }
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return yes;
}

// AVX2 CPUs (no AVX-512): 8 values a step, the row's last K % 8 through the plain loops (same results). The plain
// loops do not vectorize (nearbyint, and min/max that must keep their order), which made quantizing 2,048 x 384 cost
// ~40% of its int8 product on a Zen 3.
__attribute__((target("avx2"))) __m256 load_v8(const RowSpan& span, int64_t r, int64_t k) {
  const __m256 x = _mm256_loadu_ps(span.x + r * span.K + k);
  return span.s ? _mm256_mul_ps(x, _mm256_loadu_ps(span.s + k)) : x;
}

__attribute__((target("avx2"))) float reduce8(__m256 v, __m128 (*op)(__m128, __m128)) {
  __m128 x = op(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = op(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(op(x, _mm_shuffle_ps(x, x, 1)));
}

__attribute__((target("avx2"))) void range_avx2(const RowSpan& span, RowRange& out) {
  const int64_t whole = span.K - span.K % 8;
  __m256 lo = _mm256_set1_ps(out.lo), hi = _mm256_set1_ps(out.hi), poison = _mm256_setzero_ps();
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t r = span.begin; r < span.end; ++r) {
    for (int64_t k = 0; k < whole; k += 8) {
      const __m256 v = load_v8(span, r, k);
      lo = _mm256_min_ps(lo, v);  // a NaN may be dropped here: poison still catches it
      hi = _mm256_max_ps(hi, v);
      poison = _mm256_add_ps(poison, _mm256_mul_ps(v, zero));
    }
  }
  out.lo = std::min(out.lo, reduce8(lo, [](__m128 a, __m128 b) { return _mm_min_ps(a, b); }));
  out.hi = std::max(out.hi, reduce8(hi, [](__m128 a, __m128 b) { return _mm_max_ps(a, b); }));
  out.poison += reduce8(poison, [](__m128 a, __m128 b) { return _mm_add_ps(a, b); });
  if (whole < span.K) range_plain(span, out, whole);
}

// 32 values a step: four vectors of int32 codes packed with saturation to bytes; the packs interleave 128-bit
// lanes, which one permute puts back in order.
__attribute__((target("avx2"))) void codes_avx2(const RowSpan& span, const Quint8Range& range, uint8_t* codes) {
  const int64_t whole = span.K - span.K % 32;
  const __m256 scale = _mm256_set1_ps(range.inverse_scale), bound = _mm256_set1_ps(kCodeBound);
  const __m256 neg_bound = _mm256_set1_ps(-kCodeBound);
  const __m256i zp = _mm256_set1_epi32(range.zero_point), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i top = _mm256_set1_epi8(static_cast<char>(range.max_code));
  for (int64_t r = span.begin; r < span.end; ++r) {
    for (int64_t k = 0; k < whole; k += 32) {
      __m256i q[4];
      for (int j = 0; j < 4; ++j) {
        const __m256 v = _mm256_mul_ps(load_v8(span, r, k + 8 * j), scale);
        q[j] = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, neg_bound), bound)), zp);
      }  // cvtps rounds ties to even, as nearbyint
      const __m256i ab = _mm256_packs_epi32(q[0], q[1]);  // int16, saturating
      const __m256i cd = _mm256_packs_epi32(q[2], q[3]);
      const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);  // clamps to 0..255
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + r * span.K + k), _mm256_min_epu8(bytes, top));
    }
  }
  if (whole < span.K) codes_plain(span, range, codes, whole);
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

void row_range(const RowSpan& span, RowRange& out) {
#ifdef SENTFUSE_QUANTIZE_X86
  if (has_avx512()) return range_avx512(span, out);
  if (has_avx2()) return range_avx2(span, out);
#endif
  range_plain(span, out);
}

void row_codes(const RowSpan& span, const Quint8Range& q, uint8_t* codes) {
#ifdef SENTFUSE_QUANTIZE_X86
  if (has_avx512()) return codes_avx512(span, q, codes);
  if (has_avx2()) return codes_avx2(span, q, codes);
#endif
  codes_plain(span, q, codes);
}

// Rows per task: enough work per thread to outweigh the split (~32k values).
int64_t grain(int64_t K) { return std::max<int64_t>(1, (int64_t{1} << 15) / K); }

RowRange range_of(const float* x, const float* s, int64_t rows, int64_t K) {
  const int64_t step = grain(K);
  std::vector<RowRange> parts((rows + step - 1) / step);
  at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) row_range({x, s, K, p * step, std::min(rows, (p + 1) * step)}, parts[p]);
  });
  RowRange all;
  for (const RowRange& p : parts) all = {std::min(all.lo, p.lo), std::max(all.hi, p.hi), all.poison + p.poison};
  return all;
}

// per_row: each row its own range, scale and zero point, found and applied while the row is in cache (one read of x
// from memory). The NaN / inf check covers every row at the end.
void quantize_rows(const float* x, const float* s, int64_t rows, int64_t K, int32_t max_code, uint8_t* codes,
                   float* scales, int32_t* zero_points) {
  const int64_t step = grain(K);
  std::vector<float> poison((rows + step - 1) / step, 0.0f);  // per task, as range_of
  at::parallel_for(0, static_cast<int64_t>(poison.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t r = p * step; r < std::min(rows, (p + 1) * step); ++r) {
        const RowSpan row{x, s, K, r, r + 1};
        RowRange range;
        row_range(row, range);
        poison[p] += range.poison;
        const Quint8Range q = quint8_range(range.lo, range.hi, max_code);
        row_codes(row, q, codes);
        scales[r] = q.scale;
        zero_points[r] = q.zero_point;
      }
    }
  });
  float all = 0.0f;
  for (const float p : poison) all += p;
  check_smooth_quantize_range(all, all);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_quantize_cpu(const at::Tensor& x_in,
                                                                   const std::optional<at::Tensor>& inverse_smooth,
                                                                   bool per_row, int64_t max_code) {
  check_smooth_quantize_args(x_in, inverse_smooth, max_code);
  const auto top = static_cast<int32_t>(max_code);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor s = inverse_smooth.has_value() ? inverse_smooth->contiguous() : at::Tensor();
  const int64_t K = x.size(-1), rows = x.numel() / K;
  at::Tensor codes = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const float* xp = rows > 0 ? x.const_data_ptr<float>() : nullptr;
  const float* sp = s.defined() ? s.const_data_ptr<float>() : nullptr;
  if (per_row) {
    const at::IntArrayRef lead = x.sizes().slice(0, x.dim() - 1);
    at::Tensor scales = at::empty(lead, x.options());
    at::Tensor zero_points = at::empty(lead, x.options().dtype(at::kInt));
    if (rows > 0) {
      quantize_rows(xp, sp, rows, K, top, codes.mutable_data_ptr<uint8_t>(), scales.mutable_data_ptr<float>(),
                    zero_points.mutable_data_ptr<int32_t>());
    }
    return {codes, scales, zero_points};
  }
  Quint8Range q = quint8_range(0.0f, 0.0f, top);
  if (rows > 0) {
    const RowRange range = range_of(xp, sp, rows, K);
    check_smooth_quantize_range(range.lo + range.poison, range.hi + range.poison);
    q = quint8_range(range.lo, range.hi, top);
    uint8_t* out = codes.mutable_data_ptr<uint8_t>();
    at::parallel_for(0, rows, grain(K),
                     [&](int64_t begin, int64_t end) { row_codes({xp, sp, K, begin, end}, q, out); });
  }
  return {codes, at::scalar_tensor(q.scale, x.options()), at::scalar_tensor(q.zero_point, x.options().dtype(at::kInt))};
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("smooth_quantize", &smooth_quantize_cpu); }

}  // namespace sentfuse
