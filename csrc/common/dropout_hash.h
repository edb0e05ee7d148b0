// The dropout mask as a pure function of (seed, element index): a counter-based generator, so the forward
// and backward passes, the CPU and the CUDA kernels all draw the same mask from a seed and nothing is stored.
//
// Bits: two rounds of a 32-bit integer hash (Chris Wellons' "lowbias32": xorshift-multiply, full avalanche),
// keyed by the seed's halves and the index's high word. An element is kept when its 32 bits, read as an
// unsigned integer, are >= dropout_threshold(p) = round(p * 2^32): the keep probability is 1 - p within 2^-33.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SENTFUSE_HD __host__ __device__ __forceinline__
#else
#define SENTFUSE_HD inline
#endif

namespace sentfuse {

SENTFUSE_HD uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The second round's key: the seed's high half mixed with the index's high half (constant over runs of 2^32
// indices, so a loop over indices hoists it and hashes 32-bit lanes only).
SENTFUSE_HD uint32_t dropout_key(uint64_t seed, uint32_t index_high) {
  return static_cast<uint32_t>(seed >> 32) ^ (index_high * 0x9e3779b9U);
}

SENTFUSE_HD uint32_t dropout_bits_of(uint32_t seed_low, uint32_t key, uint32_t index_low) {
  return lowbias32(lowbias32(index_low ^ seed_low) ^ key);
}

SENTFUSE_HD uint32_t dropout_bits(uint64_t seed, uint64_t index) {
  return dropout_bits_of(static_cast<uint32_t>(seed), dropout_key(seed, static_cast<uint32_t>(index >> 32)),
                         static_cast<uint32_t>(index));
}

// p in [0, 1] -> the smallest kept value of dropout_bits, as uint64 so that p = 1 keeps nothing.
inline uint64_t dropout_threshold(double p) { return static_cast<uint64_t>(std::llround(p * 4294967296.0)); }

// The scale of a kept element: 1 / (1 - p), and 0 for p = 1 (nothing is kept).
inline float dropout_scale(double p) { return p < 1.0 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f; }

}  // namespace sentfuse
