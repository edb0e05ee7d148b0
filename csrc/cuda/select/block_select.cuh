// Block-wide top-k selection over a stream of (score, index) candidates, in shared memory.
//
// The block keeps its current best `top_size` entries sorted best first, plus a candidate buffer. Each
// thread filters the stream against the k-th best entry seen so far (a threshold that only rises) and
// appends survivors to the buffer; when the buffer may overflow in the next round, the block bitonic-sorts
// the buffer and folds it into the sorted list with one half-cleaner step and a bitonic merge. Once the
// threshold is good, almost nothing passes it and selection runs at the speed of reading the stream.
//
// Order everywhere: higher score first, equal scores by lower index first. Empty slots hold the sentinel
// (-inf, kNoIndex), which ranks after every real candidate (real candidates have finite scores).
#pragma once

#include <cstdint>

#include "cuda/reduce.cuh"

namespace sentfuse::select {

constexpr int32_t kNoIndex = 0x7fffffff;

__device__ __forceinline__ bool ranks_before(float score_a, int32_t index_a, float score_b, int32_t index_b) {
  return score_a > score_b || (score_a == score_b && index_a < index_b);
}

// Afterwards slot lo ranks before slot hi when best_first, after it otherwise.
__device__ __forceinline__ void compare_exchange(float* scores, int32_t* indices, int lo, int hi, bool best_first) {
  const float s_lo = scores[lo], s_hi = scores[hi];
  const int32_t i_lo = indices[lo], i_hi = indices[hi];
  const bool hi_first = ranks_before(s_hi, i_hi, s_lo, i_lo);
  const bool lo_first = ranks_before(s_lo, i_lo, s_hi, i_hi);
  if (best_first ? hi_first : lo_first) {
    scores[lo] = s_hi;
    scores[hi] = s_lo;
    indices[lo] = i_hi;
    indices[hi] = i_lo;
  }
}

// Sorts n (a power of two) shared-memory entries best first. Every thread of the block calls it.
__device__ inline void bitonic_sort(float* scores, int32_t* indices, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1));
        // Sub-sequences alternate direction so that each pair forms a bitonic sequence for the next size.
        compare_exchange(scores, indices, lo, lo + stride, (lo & size) == 0);
      }
      __syncthreads();
    }
  }
}

// Sorts a bitonic sequence of n (a power of two) entries best first.
__device__ inline void bitonic_merge(float* scores, int32_t* indices, int n) {
  for (int stride = n >> 1; stride > 0; stride >>= 1) {
    for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
      const int lo = 2 * i - (i & (stride - 1));
      compare_exchange(scores, indices, lo, lo + stride, true);
    }
    __syncthreads();
  }
}

// Shared-memory state of one block's selection. Dynamic shared memory holds, in order:
// top scores [top_size], candidate scores [cand_capacity], top indices [top_size], candidate indices.
struct BlockQueue {
  float* top_scores;
  int32_t* top_indices;
  float* cand_scores;
  int32_t* cand_indices;
  int* count;  // candidates in the buffer
  int top_size;
  int cand_capacity;

  static constexpr size_t shared_bytes(int top_size, int cand_capacity) {
    return static_cast<size_t>(top_size + cand_capacity) * (sizeof(float) + sizeof(int32_t));
  }

  // Caller guarantees a barrier since the last append. Leaves the buffer empty and top_* sorted, with
  // the best top_size entries of both; ends with a barrier.
  __device__ void flush() {
    const int filled = *count;
    if (filled == 0) return;  // uniform: every thread read the same value after the barrier
    int sorted = 1;
    while (sorted < filled) sorted <<= 1;
    for (int i = filled + threadIdx.x; i < sorted; i += blockDim.x) {
      cand_scores[i] = -INFINITY;
      cand_indices[i] = kNoIndex;
    }
    __syncthreads();
    bitonic_sort(cand_scores, cand_indices, sorted);
    // top is sorted best first and so is the buffer. Pairing top[T-1-i] with cand[i] and keeping the
    // better of each pair leaves exactly the best T of the union in top, as a descending-then-ascending
    // (bitonic) sequence: the buffer's j best can only displace top's j worst.
    const int pairs = min(filled, top_size);
    for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
      const int slot = top_size - 1 - i;
      if (ranks_before(cand_scores[i], cand_indices[i], top_scores[slot], top_indices[slot])) {
        top_scores[slot] = cand_scores[i];
        top_indices[slot] = cand_indices[i];
      }
    }
    __syncthreads();
    bitonic_merge(top_scores, top_indices, top_size);
    if (threadIdx.x == 0) *count = 0;
    __syncthreads();
  }
};

// Selects the best k of `length` stream entries together with `init` (k entries sorted best first, or
// nullptr), writing k entries best first to out (which may alias init: init is read before any write).
//
// The stream is read in chunks of Source::kVec consecutive entries (one vector load for tiles), each
// thread taking Source::kChunks chunks per round. source(chunk, length, threshold, score, index) fills the
// chunk's entries and returns a bit mask of the ones that are candidates at all; it may return 0 without
// filling them when every entry scores below `threshold` (the running k-th best score), as such entries
// could not be kept anyway. A thread compares its entries
// with the running k-th best in registers; only survivors are written out, compacted per warp (a prefix
// sum of the survivor counts and one shared atomic per warp), so once the threshold is good a round costs
// the loads and one barrier. The k <= top_size requirement is the caller's; top_size and cand_capacity are
// powers of 2 and cand_capacity >= 2 * kThreads * kChunks * kVec.
template <int kThreads, typename Source>
__device__ void block_select(const Source& source, int64_t length, int k, int top_size, int cand_capacity,
                            const float* init_scores, const int32_t* init_indices,  // [k] or nullptr
                            float* out_scores, int32_t* out_indices) {              // [k]
  constexpr int kVec = Source::kVec;
  constexpr int kPerThread = Source::kChunks * kVec;
  constexpr int kRound = kThreads * kPerThread;
  static_assert(kPerThread <= 32, "survivor masks are 32 bits");
  extern __shared__ __align__(16) unsigned char select_smem[];
  __shared__ int count;
  BlockQueue q;
  q.top_scores = reinterpret_cast<float*>(select_smem);
  q.cand_scores = q.top_scores + top_size;
  q.top_indices = reinterpret_cast<int32_t*>(q.cand_scores + cand_capacity);
  q.cand_indices = q.top_indices + top_size;
  q.count = &count;
  q.top_size = top_size;
  q.cand_capacity = cand_capacity;

  for (int i = threadIdx.x; i < top_size; i += kThreads) {
    const bool given = init_scores != nullptr && i < k;
    q.top_scores[i] = given ? init_scores[i] : -INFINITY;
    q.top_indices[i] = given ? init_indices[i] : kNoIndex;
  }
  if (threadIdx.x == 0) count = 0;
  __syncthreads();

  const int lane = threadIdx.x % 32;
  const int64_t chunks = (length + kVec - 1) / kVec;
  float threshold_score = q.top_scores[k - 1];
  int32_t threshold_index = q.top_indices[k - 1];
  for (int64_t first = 0; first < chunks; first += kThreads * Source::kChunks) {
    float score[kPerThread];
    int32_t index[kPerThread];
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      score[e] = -INFINITY;
      index[e] = kNoIndex;
    }
    uint32_t keep = 0;
#pragma unroll
    for (int c = 0; c < Source::kChunks; ++c) {
      const int64_t chunk = first + c * kThreads + threadIdx.x;
      if (chunk < chunks) {
        keep |= source(chunk, length, threshold_score, score + c * kVec, index + c * kVec) << (c * kVec);
      }
    }
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      if (!ranks_before(score[e], index[e], threshold_score, threshold_index)) keep &= ~(1u << e);
    }
    // Warp compaction: an inclusive prefix sum of the survivor counts, one atomic per warp.
    const int mine = __popc(keep);
    int before = mine;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int up = __shfl_up_sync(kFullWarp, before, offset);
      if (lane >= offset) before += up;
    }
    const int warp_total = __shfl_sync(kFullWarp, before, 31);
    int warp_base = 0;
    if (lane == 31 && warp_total > 0) warp_base = atomicAdd(&count, warp_total);
    warp_base = __shfl_sync(kFullWarp, warp_base, 31);
    int slot = warp_base + before - mine;
    while (keep != 0) {
      const int e = __ffs(keep) - 1;
      keep &= keep - 1;
      q.cand_scores[slot] = score[e];
      q.cand_indices[slot] = index[e];
      ++slot;
    }
    // The warp ending last ends at count; flush once another round could overflow the buffer.
    const bool nearly_full = lane == 31 && warp_total > 0 && warp_base + warp_total > cand_capacity - kRound;
    if (__syncthreads_or(nearly_full)) {
      q.flush();
      threshold_score = q.top_scores[k - 1];
      threshold_index = q.top_indices[k - 1];
    }
  }
  __syncthreads();
  q.flush();
  for (int i = threadIdx.x; i < k; i += kThreads) {
    out_scores[i] = q.top_scores[i];
    out_indices[i] = q.top_indices[i];
  }
}

}  // namespace sentfuse::select
