// AMX score blocks (see amx_tiles.h). Only the kernels, between the target pragmas, are built for AMX and AVX-512;
// the headers, available() and the tile configuration's load-time initializer stay generic. (Built with -mamx /
// -mavx512 for the whole file, the sanitizer build's available() stored ASan's shadow with an AVX-512 instruction
// and died on an AVX2 CPU, and the file's copies of std::string's inline functions were AVX-512 code another file
// could be linked to.) Nothing inside the pragmas runs unless available() checked the CPU first.
#include "cpu/amx_tiles.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

namespace sentfuse {
namespace amx {
namespace {

constexpr int kArchReqXcompPerm = 0x1023;  // arch_prctl: ask for an extended state component
constexpr int kXfeatureTileData = 18;      // AMX tile data

bool cpu_has_amx_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24;
  return (edx & kAmxBf16) && (edx & kAmxTile);
}

// The tile configuration's memory layout (Intel SDM, LDTILECFG): palette 1, 8 tiles of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Every tile 16 rows x 64 bytes. A constant in memory: GCC's _tile_loadconfig tells the compiler it reads only
// the first 8 bytes, so a configuration built on the stack just before can lose its other stores.
const TileConfig kConfig = [] {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kTileRows;
    config.bytes_per_row[t] = 64;
  }
  return config;
}();

}  // namespace

bool available() {
  static const bool ok = [] {
    const char* choice = std::getenv("SENTFUSE_CPU_AMX");
    if (choice != nullptr && std::string(choice) == "off") return false;
    // Asking again when torch's oneDNN already did is harmless; a kernel without AMX support refuses.
    return cpu_has_amx_bf16() && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) == 0;
  }();
  return ok;
}

namespace {

// AVX512-BF16 with the AVX-512 subsets the kernels use; libgcc's check includes the OS's 512-bit state.
bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bf16");
}

}  // namespace

BlockUnit block_unit() {
  static const BlockUnit unit = [] {
    const char* env = std::getenv("SENTFUSE_CPU_BLOCKS");
    const std::string choice = env == nullptr ? "" : env;
    if (choice == "off") return BlockUnit::kNone;
    if (choice != "avx512_bf16" && available()) return BlockUnit::kTiles;
    return cpu_has_avx512_bf16() ? BlockUnit::kVector : BlockUnit::kNone;
  }();
  return unit;
}

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,f16c")

namespace {

// Inputs widened to fp32, 16 at a time; lanes past `count` read as 0.
inline __m512 load16(const float* p, int count) {
  return count == 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(__mmask16((1u << count) - 1), p);
}
inline __m512 load16(const c10::BFloat16* p, int count) {
  const __m256i half = count == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                    : _mm256_maskz_loadu_epi16(__mmask16((1u << count) - 1), p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
inline __m512 load16(const c10::Half* p, int count) {
  return _mm512_cvtph_ps(count == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                     : _mm256_maskz_loadu_epi16(__mmask16((1u << count) - 1), p));
}

// Rows ahead of the one being packed that are prefetched: the source rows come from memory once, and a single
// stream of demand loads left the pack at half the core's read bandwidth (measured on the 2-core AMX Xeon).
constexpr int64_t kPrefetchRows = 4;

template <typename T>
bool pack_unit_rows_any(const T* rows, int64_t n, int64_t D, int64_t Dp, uint16_t* out, float* norms,
                        float* inverse) {
  // NaN and inf are the values whose difference with themselves is not 0.
  __mmask16 bad = 0;
  const int64_t whole = D / 64 * 64;  // features summed by four independent chains (one chain was latency-bound)
  for (int64_t r = 0; r < n; ++r) {
    const T* x = rows + r * D;
    if (r + kPrefetchRows < n)
      for (int64_t d = 0; d < D * static_cast<int64_t>(sizeof(T)); d += 64)
        _mm_prefetch(reinterpret_cast<const char*>(x + kPrefetchRows * D) + d, _MM_HINT_T0);
    __m512 squares[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t d = 0; d < whole; d += 64)
      for (int a = 0; a < 4; ++a) {
        const __m512 v = load16(x + d + 16 * a, 16);
        bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
        squares[a] = _mm512_fmadd_ps(v, v, squares[a]);
      }
    for (int64_t d = whole; d < D; d += 16) {
      const __m512 v = load16(x + d, static_cast<int>(std::min<int64_t>(16, D - d)));
      bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
      squares[0] = _mm512_fmadd_ps(v, v, squares[0]);
    }
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(squares[0], squares[1]), _mm512_add_ps(squares[2], squares[3]));
    norms[r] = std::sqrt(_mm512_reduce_add_ps(sum));
    inverse[r] = norms[r] > 0.f ? 1.f / norms[r] : 0.f;
    const __m512 s = _mm512_set1_ps(inverse[r]);
    for (int64_t d = 0; d < Dp; d += 32) {
      const int lo = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, D - d)));
      const int hi = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(16, D - d - 16)));
      const __m512 a = load16(x + d, lo), b = hi > 0 ? load16(x + d + 16, hi) : _mm512_setzero_ps();
      const __m512bh packed = _mm512_cvtne2ps_pbh(_mm512_mul_ps(b, s), _mm512_mul_ps(a, s));
      _mm512_storeu_si512(out + r * Dp + d, reinterpret_cast<const __m512i&>(packed));
    }
  }
  return bad == 0;
}

template <typename T>
float dot_any(const float* x, const T* y, int64_t D) {
  constexpr int kAccumulators = 4;
  __m512 acc[kAccumulators] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t d = 0;
  for (; d + 16 * kAccumulators <= D; d += 16 * kAccumulators)
    for (int a = 0; a < kAccumulators; ++a)
      acc[a] = _mm512_fmadd_ps(_mm512_loadu_ps(x + d + 16 * a), load16(y + d + 16 * a, 16), acc[a]);
  for (; d < D; d += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, D - d));
    acc[0] = _mm512_fmadd_ps(load16(x + d, count), load16(y + d, count), acc[0]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

}  // namespace


// TileScope's members take the target options of their class (declared in the header, before the pragma), so
// they call these, which are built for AMX.
namespace {
void load_tile_config() { _tile_loadconfig(&kConfig); }
void release_tiles() { _tile_release(); }
}  // namespace

TileScope::TileScope() : tiles_(block_unit() == BlockUnit::kTiles) {
  if (tiles_) load_tile_config();
}

TileScope::~TileScope() {
  if (tiles_) release_tiles();
}

bool pack_unit_rows(const float* rows, int64_t n, int64_t D, int64_t Dp, uint16_t* out, float* norms, float* inverse) {
  return pack_unit_rows_any(rows, n, D, Dp, out, norms, inverse);
}
bool pack_unit_rows(const c10::BFloat16* rows, int64_t n, int64_t D, int64_t Dp, uint16_t* out, float* norms,
                    float* inverse) {
  return pack_unit_rows_any(rows, n, D, Dp, out, norms, inverse);
}
bool pack_unit_rows(const c10::Half* rows, int64_t n, int64_t D, int64_t Dp, uint16_t* out, float* norms,
                    float* inverse) {
  return pack_unit_rows_any(rows, n, D, Dp, out, norms, inverse);
}

float dot(const float* x, const float* y, int64_t D) { return dot_any(x, y, D); }
float dot(const float* x, const c10::BFloat16* y, int64_t D) { return dot_any(x, y, D); }
float dot(const float* x, const c10::Half* y, int64_t D) { return dot_any(x, y, D); }

int64_t paired_size(int64_t m, int64_t Dp) { return (m + kTileRows - 1) / kTileRows * kTileRows * Dp; }

void pack_pairs(const uint16_t* rows, int64_t m, int64_t Dp, uint16_t* out) {
  if (m == 0) return;  // no rows: out may be an empty vector's null pointer, which memset must not get
  // Tile row p of step s holds features (2p, 2p + 1) of the step for each of the group's 16 rows.
  std::memset(out, 0, paired_size(m, Dp) * sizeof(uint16_t));
  const int64_t steps = Dp / kDepth;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t group = i / kTileRows, lane = i % kTileRows;
    for (int64_t s = 0; s < steps; ++s) {
      uint32_t* tile = reinterpret_cast<uint32_t*>(out + (group * steps + s) * kTileRows * kDepth);
      const uint32_t* pairs = reinterpret_cast<const uint32_t*>(rows + i * Dp + s * kDepth);
      for (int64_t p = 0; p < kDepth / 2; ++p) tile[p * kTileRows + lane] = pairs[p];
    }
  }
}

namespace {

void start_tiles(const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int64_t Dp) {
  // Tiles 0-3: the four 16 x 16 fp32 quarters of c; 4-5: a's two row halves; 6-7: the two query groups. Each
  // operand of the next step is loaded as soon as its last product of this step is issued, so that its load runs
  // under the products still queued (3-5% faster per block than loading at the top of each step).
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t a_stride = Dp * sizeof(uint16_t);
  const uint16_t* a1 = a + kTileRows * Dp;
  _tile_loadd(4, a, a_stride);
  _tile_loadd(6, b0, 64);
  _tile_loadd(7, b1, 64);
  _tile_loadd(5, a1, a_stride);
  int64_t d = kDepth, step = kTileRows * kDepth;
  for (; d < Dp; d += kDepth, step += kTileRows * kDepth) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(4, a + d, a_stride);
    _tile_dpbf16ps(2, 5, 6);
    _tile_loadd(6, b0 + step, 64);
    _tile_dpbf16ps(3, 5, 7);
    _tile_loadd(7, b1 + step, 64);
    _tile_loadd(5, a1 + d, a_stride);
  }
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

void finish_tiles(float* c) {
  constexpr int64_t row_bytes = kBlock * sizeof(float);
  _tile_stored(0, c, row_bytes);
  _tile_stored(1, c + kTileRows, row_bytes);
  _tile_stored(2, c + kTileRows * kBlock, row_bytes);
  _tile_stored(3, c + kTileRows * kBlock + kTileRows, row_bytes);
}

// The pack_pairs layout is vdpbf16ps's right-hand operand: feature pair p of a 16-row group is one register
// (16 rows x 2 features) at p * 32 values, whatever the step. Each of a's rows broadcasts its pair p and adds
// the two products to its 16 columns' fp32 sums. kRows rows x 32 columns = 16 accumulators, so each group
// register loaded serves kRows rows, and the 32 registers hold them, the two group values and a broadcast.
constexpr int kRows = 8;

void score_rows_vector(const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int64_t Dp, float* c) {
  __m512 lo[kRows], hi[kRows];
  for (int r = 0; r < kRows; ++r) lo[r] = hi[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < Dp / 2; ++p) {
    const __m512bh g0 = (__m512bh)_mm512_loadu_si512(b0 + p * 32);
    const __m512bh g1 = (__m512bh)_mm512_loadu_si512(b1 + p * 32);
    for (int r = 0; r < kRows; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * Dp + 2 * p, sizeof(pair));
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
      lo[r] = _mm512_dpbf16_ps(lo[r], x, g0);
      hi[r] = _mm512_dpbf16_ps(hi[r], x, g1);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    _mm512_storeu_ps(c + r * kBlock, lo[r]);
    _mm512_storeu_ps(c + r * kBlock + kTileRows, hi[r]);
  }
}

void score_block_vector(const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int64_t Dp, float* c) {
  for (int64_t r = 0; r < kBlock; r += kRows) score_rows_vector(a + r * Dp, b0, b1, Dp, c + r * kBlock);
}

}  // namespace

void score_block_start(const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int64_t Dp, float* c) {
  if (block_unit() == BlockUnit::kTiles)
    start_tiles(a, b0, b1, Dp);
  else
    score_block_vector(a, b0, b1, Dp, c);
}

void score_block_finish(float* c) {
  if (block_unit() == BlockUnit::kTiles) finish_tiles(c);
}

void score_block(const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int64_t Dp, float* c) {
  score_block_start(a, b0, b1, Dp, c);
  score_block_finish(c);
}

namespace {

// Per column of c's first `rows` rows, the largest value (32 rows: eight independent chains, not two long ones).
inline void column_max(const float* c, int64_t rows, __m512& top0, __m512& top1) {
  if (rows == kBlock) {
    __m512 m[8];
    for (int a = 0; a < 8; ++a) m[a] = _mm512_loadu_ps(c + a * 16);
    for (int64_t r = 4; r < kBlock; r += 4)
      for (int a = 0; a < 8; ++a) m[a] = _mm512_max_ps(m[a], _mm512_loadu_ps(c + r * kBlock + a * 16));
    top0 = _mm512_max_ps(_mm512_max_ps(m[0], m[2]), _mm512_max_ps(m[4], m[6]));
    top1 = _mm512_max_ps(_mm512_max_ps(m[1], m[3]), _mm512_max_ps(m[5], m[7]));
    return;
  }
  top0 = _mm512_loadu_ps(c);
  top1 = _mm512_loadu_ps(c + 16);
  for (int64_t r = 1; r < rows; ++r) {
    top0 = _mm512_max_ps(top0, _mm512_loadu_ps(c + r * kBlock));
    top1 = _mm512_max_ps(top1, _mm512_loadu_ps(c + r * kBlock + 16));
  }
}

}  // namespace

uint32_t filter_columns(const float* c, int64_t rows, uint32_t columns, const float* bar, const float* row_scale,
                        const float* column_scale, float beta, uint32_t* hits) {
  const __m512 b = _mm512_set1_ps(beta), zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f);
  const __mmask16 low_rows = static_cast<__mmask16>(rows >= 16 ? 0xffff : (1u << rows) - 1);
  const __mmask16 high_rows = static_cast<__mmask16>(rows >= 32 ? 0xffff : rows > 16 ? (1u << (rows - 16)) - 1 : 0);
  // Row scales: two vectors (rows past `rows` read as 0) and their largest.
  const __m512 rs0 = row_scale ? _mm512_maskz_loadu_ps(low_rows, row_scale) : one;
  const __m512 rs1 = row_scale ? _mm512_maskz_loadu_ps(high_rows, row_scale + 16) : one;
  const float max_scale = row_scale ? _mm512_reduce_max_ps(_mm512_max_ps(rs0, rs1)) : 1.f;
  const __m512 cs0 = column_scale ? _mm512_loadu_ps(column_scale) : one;
  const __m512 cs1 = column_scale ? _mm512_loadu_ps(column_scale + 16) : one;
  __m512 top0, top1;
  column_max(c, rows, top0, top1);
  top0 = _mm512_add_ps(top0, b);
  top1 = _mm512_add_ps(top1, b);
  // Rounding is monotone and the scales are >= 0: a column whose largest c + beta is >= 0 and whose bound with the
  // largest row scale stays below its bar holds no candidate. A negative (or NaN) largest c + beta always counts.
  const __m512 s = _mm512_set1_ps(max_scale);
  const __m512 up0 = _mm512_mul_ps(top0, _mm512_mul_ps(s, cs0)), up1 = _mm512_mul_ps(top1, _mm512_mul_ps(s, cs1));
  const __m512 bar0 = _mm512_loadu_ps(bar), bar1 = _mm512_loadu_ps(bar + 16);
  const uint32_t below = _mm512_cmp_ps_mask(up0, bar0, _CMP_LT_OQ) & _mm512_cmp_ps_mask(top0, zero, _CMP_GE_OQ);
  const uint32_t below_hi = _mm512_cmp_ps_mask(up1, bar1, _CMP_LT_OQ) & _mm512_cmp_ps_mask(top1, zero, _CMP_GE_OQ);
  const uint32_t maybe = ~(below | (below_hi << 16)) & columns;
  // The candidate columns' rows, gathered (stride kBlock), each tested against the bound above.
  const __m512i stride = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(kBlock));
  uint32_t any = 0;
  for (uint32_t bits = maybe; bits != 0; bits &= bits - 1) {
    const int t = __builtin_ctz(bits);
    const __m512 col_scale = _mm512_set1_ps(column_scale ? column_scale[t] : 1.f), bar_t = _mm512_set1_ps(bar[t]);
    const __m512 v0 = _mm512_mask_i32gather_ps(zero, low_rows, stride, c + t, 4);
    const __m512 v1 = _mm512_mask_i32gather_ps(zero, high_rows, stride, c + 16 * kBlock + t, 4);
    const __m512 u0 = _mm512_mul_ps(_mm512_add_ps(v0, b), _mm512_mul_ps(rs0, col_scale));
    const __m512 u1 = _mm512_mul_ps(_mm512_add_ps(v1, b), _mm512_mul_ps(rs1, col_scale));
    const uint32_t lo = _mm512_mask_cmp_ps_mask(low_rows, u0, bar_t, _CMP_GE_OQ);
    const uint32_t hi = _mm512_mask_cmp_ps_mask(high_rows, u1, bar_t, _CMP_GE_OQ);
    const uint32_t found = lo | (hi << 16);
    if (found != 0) {
      hits[t] = found;
      any |= 1u << t;
    }
  }
  return any;
}

#pragma GCC pop_options

}  // namespace amx
}  // namespace sentfuse
