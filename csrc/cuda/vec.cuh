// Vectorized global loads and stores of VEC consecutive elements, converted to and from fp32.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace sentfuse {

// One register-sized word per access width, so each access is a single LDG/STG of that width.
template <int kBytes>
struct RawWord;
template <>
struct RawWord<2> { using type = unsigned short; };
template <>
struct RawWord<4> { using type = unsigned int; };
template <>
struct RawWord<8> { using type = uint2; };
template <>
struct RawWord<16> { using type = uint4; };

// Largest VEC (elements per access, at most 16 bytes) for which n, every stride and the base address
// keep all accesses aligned; 1 is always possible.
template <typename scalar_t>
inline int pick_vec_width(const void* base, std::initializer_list<int64_t> counts) {
  for (int vec = 16 / static_cast<int>(sizeof(scalar_t)); vec > 1; vec /= 2) {
    bool ok = reinterpret_cast<uintptr_t>(base) % (vec * sizeof(scalar_t)) == 0;
    for (int64_t n : counts) ok = ok && n % vec == 0;
    if (ok) return vec;
  }
  return 1;
}

// Calls fn(std::integral_constant<int, VEC>{}) for the runtime vec picked by pick_vec_width.
template <typename scalar_t, typename Fn>
inline void dispatch_vec_width(int vec, Fn&& fn) {
  constexpr int kMax = 16 / static_cast<int>(sizeof(scalar_t));
  if constexpr (kMax >= 8) {
    if (vec == 8) return fn(std::integral_constant<int, 8>{});
  }
  if constexpr (kMax >= 4) {
    if (vec == 4) return fn(std::integral_constant<int, 4>{});
  }
  if constexpr (kMax >= 2) {
    if (vec == 2) return fn(std::integral_constant<int, 2>{});
  }
  fn(std::integral_constant<int, 1>{});
}

template <typename scalar_t, int VEC>
using VecWord = typename RawWord<sizeof(scalar_t) * VEC>::type;

// VEC elements as loaded, unconverted: a kernel that keeps several loads in flight holds 16-bit data in half
// the registers floats would take, and converts each word only when it uses it (unpack_vec).
// Read-only path (LDG.NC): inputs are never written while a kernel reads them.
template <typename scalar_t, int VEC>
__device__ __forceinline__ VecWord<scalar_t, VEC> load_raw(const scalar_t* p) {
  return __ldg(reinterpret_cast<const VecWord<scalar_t, VEC>*>(p));
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void unpack_vec(const VecWord<scalar_t, VEC>& word, float (&out)[VEC]) {
  const scalar_t* elems = reinterpret_cast<const scalar_t*>(&word);
#pragma unroll
  for (int k = 0; k < VEC; ++k) out[k] = static_cast<float>(elems[k]);
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void load_vec(const scalar_t* p, float (&out)[VEC]) {
  unpack_vec<scalar_t, VEC>(load_raw<scalar_t, VEC>(p), out);
}

template <typename scalar_t, int VEC>
__device__ __forceinline__ void store_vec(scalar_t* p, const float (&in)[VEC]) {
  using Word = typename RawWord<sizeof(scalar_t) * VEC>::type;
  Word word;
  scalar_t* elems = reinterpret_cast<scalar_t*>(&word);
#pragma unroll
  for (int k = 0; k < VEC; ++k) elems[k] = static_cast<scalar_t>(in[k]);
  *reinterpret_cast<Word*>(p) = word;
}

}  // namespace sentfuse
