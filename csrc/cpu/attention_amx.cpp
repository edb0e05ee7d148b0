// packed_attention on AMX (see attention_amx.h). The code after the includes is built for AMX and AVX-512 by a
// target pragma, as in amx_tiles.cpp (the headers stay generic); nothing here runs unless amx::available() checked
// the CPU first.
//
// One work item is one (row, head): its valid keys packed once into the tiles' pair layout (K as the right-hand
// operand of Q Kᵀ, V as that of P V), then 16 queries at a time: their scores against every valid key from the
// tile registers (head size 32 is one tile depth, so one tile multiply per 16 x 16 block), the softmax of each
// valid query's row in fp32, P as two bf16 terms (hi + lo) and P V accumulated in fp32 tiles,
// normalized by the rows' fp32 sums at the end. The queries read Q straight from the packed
// product's output (a tile load takes any row stride); the context is written straight into the layout the
// output projection reads, [rows, width, heads * head size].
#include "cpu/attention_amx.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include <ATen/Parallel.h>

#include "cpu/amx_tiles.h"

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,f16c")

namespace sentfuse {
namespace amx {
namespace {

constexpr int64_t kTileValues = kTileRows * kDepth;  // bf16 values in one tile (1 KB)
constexpr int64_t kValueBlock = 2 * kTileRows;       // keys per P V step: one tile row holds a pair of keys

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// exp(x) for x <= 0 in fp32: x = n ln 2 + r with |r| <= ln 2 / 2 (Cody-Waite), exp(r) by its degree-5 Taylor
// polynomial (error < 3e-6 relative, below the 2^-16 the two bf16 terms of P keep), then scaled by 2^n; underflows
// to 0 below -87.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 120);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 widen(__m256bh x) { return _mm512_cvtpbh_ps(x); }
inline __mmask16 first(int64_t count) { return count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1); }

// One work item's scratch, sized once per thread for the widest row.
struct Scratch {
  int64_t head_size, steps, groups;  // features, tile depths (head_size / 32), 16-feature groups
  TileVector<uint16_t> keys;         // [key blocks of 16][steps][16 pair rows x 32]
  TileVector<uint16_t> values;       // [key blocks of 32][groups][16 pair rows x 32]
  TileVector<uint16_t> queries;      // [16, head_size]: a last query block that would run past the row
  TileVector<float> scores;          // [16, padded keys]
  TileVector<uint16_t> probs;        // [2 terms][16, padded keys]
  TileVector<float> context;         // [16, head_size]
  float inverse_sum[kTileRows];

  Scratch(int64_t width, int64_t D)
      : head_size(D), steps(D / kDepth), groups(D / kTileRows),
        keys(round_up(width, kTileRows) * D), values(round_up(width, kValueBlock) * D),
        queries(kTileRows * D), scores(kTileRows * round_up(width, kValueBlock)),
        probs(2 * kTileRows * round_up(width, kValueBlock)), context(kTileRows * D) {}
};

// K's n rows (stride in bf16 values) -> the right-hand operand of Q Kᵀ: tile row p of (block, step) holds
// features (2p, 2p + 1) of the step for the block's 16 keys; keys past n are zero.
void pack_keys(const uint16_t* k, int64_t stride, int64_t n, Scratch& s) {
  const int64_t blocks = (n + kTileRows - 1) / kTileRows;
  for (int64_t kb = 0; kb < blocks; ++kb)
    for (int64_t step = 0; step < s.steps; ++step) {
      uint32_t* tile = reinterpret_cast<uint32_t*>(s.keys.data() + (kb * s.steps + step) * kTileValues);
      for (int64_t lane = 0; lane < kTileRows; ++lane) {
        const int64_t key = kb * kTileRows + lane;
        const __m512i pairs = key < n ? _mm512_loadu_si512(k + key * stride + step * kDepth) : _mm512_setzero_si512();
        alignas(64) uint32_t column[kTileRows];
        _mm512_store_si512(column, pairs);
        for (int64_t p = 0; p < kTileRows; ++p) tile[p * kTileRows + lane] = column[p];
      }
    }
}

// V's n rows -> the right-hand operand of P V: tile row p of (block, group) interleaves keys 2p and 2p + 1 of the
// block's 32 for the group's 16 features; keys past n are zero (their probabilities are zero, and 0 x NaN is not).
void pack_values(const uint16_t* v, int64_t stride, int64_t n, Scratch& s) {
  alignas(64) static const uint16_t kLow[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i low = _mm512_load_si512(kLow), high = _mm512_add_epi16(low, _mm512_set1_epi16(16));
  const int64_t blocks = (n + kValueBlock - 1) / kValueBlock;
  for (int64_t kb = 0; kb < blocks; ++kb)
    for (int64_t p = 0; p < kTileRows; ++p) {
      const int64_t j = kb * kValueBlock + 2 * p;
      for (int64_t c = 0; c < s.steps; ++c) {
        const __m512i a = j < n ? _mm512_loadu_si512(v + j * stride + c * kDepth) : _mm512_setzero_si512();
        const __m512i b = j + 1 < n ? _mm512_loadu_si512(v + (j + 1) * stride + c * kDepth) : _mm512_setzero_si512();
        uint16_t* tile = s.values.data() + (kb * s.groups + 2 * c) * kTileValues + p * kDepth;
        _mm512_store_si512(tile, _mm512_permutex2var_epi16(a, low, b));
        _mm512_store_si512(tile + kTileValues, _mm512_permutex2var_epi16(a, high, b));
      }
    }
}

// scores [16, padded keys] = the 16 queries at q (stride in bf16 values) against the n packed keys.
void score_queries(const uint16_t* q, int64_t q_stride, int64_t n, int64_t padded, Scratch& s) {
  const int64_t blocks = (n + kTileRows - 1) / kTileRows;
  if (s.steps == 1) {  // head size 32: the queries stay in one tile, two accumulators alternate
    _tile_loadd(1, q, q_stride * 2);
    int64_t kb = 0;
    for (; kb + 1 < blocks; kb += 2) {
      _tile_zero(0);
      _tile_zero(3);
      _tile_loadd(2, s.keys.data() + kb * kTileValues, 64);
      _tile_loadd(4, s.keys.data() + (kb + 1) * kTileValues, 64);
      _tile_dpbf16ps(0, 1, 2);
      _tile_dpbf16ps(3, 1, 4);
      _tile_stored(0, s.scores.data() + kb * kTileRows, padded * 4);
      _tile_stored(3, s.scores.data() + (kb + 1) * kTileRows, padded * 4);
    }
    if (kb < blocks) {
      _tile_zero(0);
      _tile_loadd(2, s.keys.data() + kb * kTileValues, 64);
      _tile_dpbf16ps(0, 1, 2);
      _tile_stored(0, s.scores.data() + kb * kTileRows, padded * 4);
    }
    return;
  }
  for (int64_t kb = 0; kb < blocks; ++kb) {
    _tile_zero(0);
    for (int64_t step = 0; step < s.steps; ++step) {
      _tile_loadd(1, q + step * kDepth, q_stride * 2);
      _tile_loadd(2, s.keys.data() + (kb * s.steps + step) * kTileValues, 64);
      _tile_dpbf16ps(0, 1, 2);
    }
    _tile_stored(0, s.scores.data() + kb * kTileRows, padded * 4);
  }
}

// Row i's probabilities exp(scale (x - max)) over its n keys as two bf16 terms (hi, and lo = the rest), zeros up
// to `padded`; inverse_sum[i] = 1 / their fp32 sum (hi + lo is each within 2^-16 of it).
void softmax_row(int64_t i, int64_t n, int64_t padded, float scale, Scratch& s) {
  const float* x = s.scores.data() + i * padded;
  uint16_t* hi = s.probs.data() + i * padded;
  uint16_t* lo = hi + kTileRows * padded;
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t c = 0; c < n; c += 16) top = _mm512_mask_max_ps(top, first(n - c), top, _mm512_loadu_ps(x + c));
  const __m512 factor = _mm512_set1_ps(scale), shift = _mm512_set1_ps(-scale * _mm512_reduce_max_ps(top));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t c = 0; c < padded; c += 16) {
    const __mmask16 valid = c < n ? first(n - c) : __mmask16(0);
    const __m512 e = _mm512_maskz_mov_ps(valid, exp_nonpositive(_mm512_fmadd_ps(_mm512_loadu_ps(x + c), factor, shift)));
    const __m256bh h = _mm512_cvtneps_pbh(e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + c), reinterpret_cast<const __m256i&>(h));
    const __m256bh l = _mm512_cvtneps_pbh(_mm512_sub_ps(e, widen(h)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + c), reinterpret_cast<const __m256i&>(l));
    sum = _mm512_add_ps(sum, e);
  }
  s.inverse_sum[i] = 1.f / _mm512_reduce_add_ps(sum);
}

// context [16, head size] = P (16 rows, both terms) x the n packed values, unnormalized, fp32.
void weigh_values(int64_t n, int64_t padded, Scratch& s) {
  const int64_t blocks = (n + kValueBlock - 1) / kValueBlock;
  const uint16_t* hi = s.probs.data();
  const uint16_t* lo = hi + kTileRows * padded;
  for (int64_t g = 0; g < s.groups; g += 2) {
    _tile_zero(0);
    _tile_zero(1);
    for (int64_t kb = 0; kb < blocks; ++kb) {
      const uint16_t* v = s.values.data() + (kb * s.groups + g) * kTileValues;
      _tile_loadd(2, hi + kb * kValueBlock, padded * 2);
      _tile_loadd(3, v, 64);
      _tile_loadd(4, v + kTileValues, 64);
      _tile_dpbf16ps(0, 2, 3);
      _tile_dpbf16ps(1, 2, 4);
      _tile_loadd(5, lo + kb * kValueBlock, padded * 2);
      _tile_dpbf16ps(0, 5, 3);
      _tile_dpbf16ps(1, 5, 4);
    }
    _tile_stored(0, s.context.data() + g * kTileRows, s.head_size * 4);
    _tile_stored(1, s.context.data() + (g + 1) * kTileRows, s.head_size * 4);
  }
}

// Row i of the context, normalized, into out (head_size values, bf16 or fp32).
void write_row(int64_t i, void* out, bool out_fp32, const Scratch& s) {
  const __m512 inverse = _mm512_set1_ps(s.inverse_sum[i]);
  for (int64_t f = 0; f < s.head_size; f += 16) {
    const __m512 y = _mm512_mul_ps(_mm512_load_ps(s.context.data() + i * s.head_size + f), inverse);
    if (out_fp32) {
      _mm512_storeu_ps(static_cast<float*>(out) + f, y);
    } else {
      const __m256bh h = _mm512_cvtneps_pbh(y);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + f),
                          reinterpret_cast<const __m256i&>(h));
    }
  }
}

}  // namespace

void attention_bf16(const uint16_t* qkv, const int64_t* lengths, int64_t rows, int64_t width, int64_t heads,
                    int64_t head_size, float scale, void* out, bool out_fp32) {
  const int64_t hidden = heads * head_size, stride = 3 * hidden;
  const int64_t out_size = out_fp32 ? 4 : 2;
  at::parallel_for(0, rows * heads, 1, [&](int64_t begin, int64_t end) {
    TileScope tiles;
    Scratch s(width, head_size);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / heads, h = item % heads;
      const int64_t n = std::clamp<int64_t>(lengths[r], 0, width), padded = round_up(n, kValueBlock);
      const uint16_t* q = qkv + r * width * stride + h * head_size;
      char* o = static_cast<char*>(out) + ((r * width) * hidden + h * head_size) * out_size;
      for (int64_t t = n; t < width; ++t) std::memset(o + t * hidden * out_size, 0, head_size * out_size);
      if (n == 0) continue;
      pack_keys(q + hidden, stride, n, s);
      pack_values(q + 2 * hidden, stride, n, s);
      for (int64_t q0 = 0; q0 < n; q0 += kTileRows) {
        const int64_t count = std::min(kTileRows, n - q0);
        const uint16_t* block = q + q0 * stride;
        int64_t block_stride = stride;
        if (q0 + kTileRows > width) {  // a full tile load would read past the row: copy the block's queries
          std::fill(s.queries.begin(), s.queries.end(), uint16_t{0});
          for (int64_t i = 0; i < count; ++i)
            std::memcpy(s.queries.data() + i * head_size, block + i * stride, head_size * 2);
          block = s.queries.data(), block_stride = head_size;
        }
        score_queries(block, block_stride, n, padded, s);
        for (int64_t i = 0; i < kTileRows; ++i) {
          if (i < count) {
            softmax_row(i, n, padded, scale, s);
          } else {  // rows past the valid queries multiply too: keep them zero, never stale NaN
            std::memset(s.probs.data() + i * padded, 0, padded * 2);
            std::memset(s.probs.data() + (kTileRows + i) * padded, 0, padded * 2);
          }
        }
        weigh_values(n, padded, s);
        for (int64_t i = 0; i < count; ++i) write_row(i, o + (q0 + i) * hidden * out_size, out_fp32, s);
      }
    }
  });
}

}  // namespace amx
}  // namespace sentfuse

#pragma GCC pop_options
