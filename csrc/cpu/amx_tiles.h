// bf16 score blocks on the CPU's bf16 units (cpu/amx_tiles.cpp, the only file built with AMX flags): rows packed
// to bf16 once, then 32 x 32 fp32 score blocks from Intel AMX's tile registers or, on CPUs with AVX512-BF16 but no
// AMX (AMD Zen 4 and later, Intel Cooper Lake), from vector bf16 dot products on the same packed layout; filtered
// against per-query bars with AVX-512 so that only candidates leave the block. Call nothing here but
// available() / block_unit() unless block_unit() says there is a unit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace sentfuse {
namespace amx {

constexpr int64_t kTileRows = 16;  // rows of a tile register
constexpr int64_t kDepth = 32;     // bf16 features per tile row (64 bytes)
constexpr int64_t kBlock = 32;     // a score block: 2 x 2 tiles, kBlock corpus rows x kBlock queries

// Storage for tile operands and score blocks, on 64-byte boundaries: a tile row that straddles two cache lines
// made the 32 x 32 blocks ~2.5x slower (measured from L2 on the 2-core AMX Xeon). Rows of Dp bf16 values are
// 64-byte multiples, so every row and every tile of such a buffer starts on a cache line.
template <typename T>
struct TileAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  TileAllocator() = default;
  template <typename U>
  TileAllocator(const TileAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  template <typename U>
  bool operator==(const TileAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const TileAllocator<U>&) const { return false; }
};
template <typename T>
using TileVector = std::vector<T, TileAllocator<T>>;

// Features padded with zeros to a whole number of tile rows.
inline int64_t padded_depth(int64_t D) { return (D + kDepth - 1) / kDepth * kDepth; }

// The CPU has AMX-BF16 and the OS granted this process the tile data (asked once). SENTFUSE_CPU_AMX=off
// says no (read once per process; the tests use it to cover the ATen bf16 GEMM path on AMX CPUs).
bool available();

// What scores the blocks, chosen once per process: AMX tiles where available() says yes, else AVX512-BF16 dot
// products where the CPU (and the OS, for the 512-bit state) has them, else none (the callers keep their fp32 or
// ATen paths). SENTFUSE_CPU_BLOCKS=off says none, =avx512_bf16 skips the tiles (the tests cover each path so).
enum class BlockUnit { kNone, kVector, kTiles };
BlockUnit block_unit();
inline bool blocks_available() { return block_unit() != BlockUnit::kNone; }

// Holds the tile configuration for score_block on the calling thread (AMX only); released on destruction.
class TileScope {
 public:
  TileScope();
  ~TileScope();
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;

 private:
  bool tiles_;
};

// rows [n, D] (row stride D) scaled to unit length and rounded to bf16 into out [n, Dp], zeros past D; each
// row's fp32 norm into norms[r] and 1 / norm into inverse[r] (0 for a zero row, which stays zero). Returns
// false when an input value is NaN or inf.
bool pack_unit_rows(const float* rows, int64_t n, int64_t D, int64_t Dp, uint16_t* out, float* norms, float* inverse);
bool pack_unit_rows(const c10::BFloat16* rows, int64_t n, int64_t D, int64_t Dp, uint16_t* out, float* norms,
                    float* inverse);
bool pack_unit_rows(const c10::Half* rows, int64_t n, int64_t D, int64_t Dp, uint16_t* out, float* norms,
                    float* inverse);

// x . y over D features in fp32, 16-wide fused multiply-adds on four accumulators: the exact rescoring of the AMX
// blocks' candidates, several times faster than row_dot's portable lanes (whose latency-bound chains dominated
// it). Another summation order than row_dot's, as an fp32 GEMM tile has.
float dot(const float* x, const float* y, int64_t D);
float dot(const float* x, const c10::BFloat16* y, int64_t D);
float dot(const float* x, const c10::Half* y, int64_t D);

// bf16 rows [m, Dp] -> the right-hand operand's layout, [ceil(m / 16) groups][Dp / 32 steps][16 pair rows][16
// rows x 2 features] (rows past m zero): group g serves queries 16g... Returns its size in bf16 values.
int64_t paired_size(int64_t m, int64_t Dp);
void pack_pairs(const uint16_t* rows, int64_t m, int64_t Dp, uint16_t* out);

// c [32, 32] fp32 (64-byte aligned, as a, b0 and b1) = a [32, Dp] (bf16 rows, stride Dp) x the two 16-row groups at b0, b1 (pack_pairs layout)
// transposed: c[r][t] scores row r of a against row t of the groups. Needs a TileScope. Both units add exact
// bf16 products in fp32 (other orders: the error bound of topk_bf16.h covers either).
void score_block(const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int64_t Dp, float* c);

// score_block in two halves, so that the core can filter the previous block while the tiles compute this one:
// start issues the products (tiles: into the tile registers; the vector unit computes c at once), finish writes
// the block into c. Between a start and its finish, nothing may use the tiles or c. The overlap is partial: start
// returns once only a few hundred cycles of products are left queued (measured on the 2-core AMX Xeon).
void score_block_start(const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int64_t Dp, float* c);
void score_block_finish(float* c);

// For each column t (within `columns`) of c [32, 32], bits r (r < rows) where the upper bound
// (c[r][t] + beta) * (row_scale[r] * column_scale[t]) reaches bar[t] (scales nullptr: 1; scales >= 0), into hits[t].
// Returns the columns with a hit; hits[t] is written only for those. The rows are tested only in the columns
// whose largest score can reach the bar: once a scan's bars have risen, few columns of a block hold one.
uint32_t filter_columns(const float* c, int64_t rows, uint32_t columns, const float* bar, const float* row_scale,
                        const float* column_scale, float beta, uint32_t* hits);

}  // namespace amx
}  // namespace sentfuse
