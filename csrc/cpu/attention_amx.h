// packed_attention's bf16 kernel on Intel AMX (cpu/attention_amx.cpp, built with AMX flags): one (row, head)
// at a time, Q Kᵀ and P V on the tile registers, the softmax in fp32 with AVX-512, only the valid tokens
// touched. Call it only when amx::available() (cpu/amx_tiles.h) says yes.
#pragma once

#include <cstdint>

namespace sentfuse {
namespace amx {

// Head sizes the kernel takes: whole tile depths (32 bf16 features), up to kMaxHeadSize.
constexpr int64_t kMaxHeadSize = 128;
inline bool attention_head_size_fits(int64_t head_size) {
  return head_size > 0 && head_size % 32 == 0 && head_size <= kMaxHeadSize;
}

// qkv [rows, width, 3 * heads * head_size] bf16 (contiguous; q, k, v, each heads x head_size), lengths [rows]
// (row r's tokens 0..lengths[r] - 1 are valid, clamped to [0, width]) -> out [rows, width, heads * head_size],
// bf16 (out_fp32 false) or fp32: softmax(scale q kᵀ) v over the valid keys for each valid query, zeros for the
// others. P enters P V as two bf16 terms (hi + lo = ~16 mantissa bits): rounding it to one bf16 term gave
// 1.6x the mean rerank score difference to fp32 on the worst pairs (0.63% against 0.40% of max |score|) for
// ~15% more time in this kernel.
void attention_bf16(const uint16_t* qkv, const int64_t* lengths, int64_t rows, int64_t width, int64_t heads,
                    int64_t head_size, float scale, void* out, bool out_fp32);

}  // namespace amx
}  // namespace sentfuse
