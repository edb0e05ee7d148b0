// CUDA cosine_topk (semantics: python/sentfuse/reference.py cosine_topk).
//
// Two stages, both scanning the corpus in tiles as FAISS's GPU brute-force search does: for each (corpus
// tile, query tile) cuBLAS writes the dot products to a bounded, L2-sized workspace, then one block per
// query row (and, when there are few query rows, per column slice too) filters the tile against the
// row's running k-th best with vector loads and warp compaction (select::block_select), fused with the
// cosine / self-exclusion / min_score epilogue. Column slices are merged into the running list by the
// same selection run over their partial lists.
//
// From 64 queries up (or with bf16_rescore), the scan runs on 16-bit tiles and keeps `width` > k
// candidates per query; they are rescored in fp32 and a query whose margin cannot prove the result exact
// (see RescoreBound and rescore_check_kernel) is recomputed on the exact path, which scans fp32 tiles
// (16-bit inputs: tensor cores with fp32 output; fp32: the fp32 GEMM, never TF32). The 16-bit tiles
// multiply fp16 unit-row copies wherever the score is a cosine, so that they hold the score itself. Up to
// kFusedMaxQueries queries under metric "cosine", the exact path computes its scores in one read of the
// corpus, norms included (fused_scores_kernel), instead of cuBLAS plus a norm pass. Where a tile holds the
// score, the select pass skips a vector of entries that are all below the running k-th best with a few
// compares. k > kMaxSelectK (4096) takes a stable sort of [running top-k | tile] on the exact path. With
// SENTFUSE_CUDA_TOPK=fused the 16-bit stage is instead one tensor-core pass whose tiles never leave the SMs
// (cuda/topk_fused.cu).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>

#include "common/dispatch.h"
#include "cuda/launch.cuh"
#include "cuda/reduce.cuh"
#include "cuda/select/block_select.cuh"
#include "cuda/select/rescore_bound.h"
#include "cuda/tile_gemm.cuh"
#include "cuda/topk.h"
#include "cuda/topk_fused.h"
#include "cuda/vec.cuh"

namespace sentfuse {
namespace {

using gemm::cosine_from_dot;
using gemm::row_norms;
using gemm::tile_dots;
using gemm::unit_rows;
using gemm::workspace_bytes;

using select::kNoIndex;

constexpr int kSelectThreads = 128;
// Entries each select thread reads per round, whatever the tile dtype: 16 bytes of fp16, 32 of fp32.
constexpr int kSelectRound = 2048;
// Candidate buffer: two rounds, so a flush runs at most every round (and, once the threshold is good, rarely).
constexpr int kCandCapacity = 2 * kSelectRound;
// The largest k (and 16-bit candidate list) selected in shared memory: 64 KB per block at 4096, which
// needs the opt-in of allow_dynamic_smem. Larger k sorts each tile.
constexpr int kMaxSelectK = 4096;
constexpr int kRescoreWarps = 8;
// A column slice of a tile is worth its own block only if it is this long.
constexpr int64_t kMinSliceCols = 8192;
// From this many queries the 16-bit scan pays for its rescoring; fewer queries read the corpus once either way.
constexpr int64_t kRescoreMinQueries = 64;
// Tile columns stay a multiple of this, so every tile row starts 16-byte aligned.
constexpr int64_t kColAlign = 64;

// How a tile's dot product becomes a score.
enum class ScoreKind : uint8_t {
  kDot,      // the dot product itself (metric "dot", or unit-row copies under metric "cosine")
  kCosine,   // dot / (|q||c|), as cosine_from_dot
  kUnitDot,  // a unit-row dot scaled back by |q||c| (metric "dot" on unit-row copies)
};

// What turns a raw dot product into a candidate, shared by every selection over GEMM tiles.
struct ScoreEpilogue {
  const float* query_norms;   // [tile rows], unused for kDot
  const float* corpus_norms;  // [N], indexed by corpus row, unused for kDot
  const int64_t* query_ids;   // [tile rows] position of each row among the queries, or nullptr: query_begin + row
  int64_t query_begin;
  uint64_t self_shift;  // query_offset - corpus_offset, wrapping like torch's int64 arithmetic
  float min_score;      // -inf when absent
  ScoreKind kind;
  bool exclude_self;
  int* nonfinite;  // set to 1 when a dot product is NaN or inf
};

// Applies the epilogue to tile element (row, corpus row j); false drops the candidate.
__device__ __forceinline__ bool epilogue_score(const ScoreEpilogue& epi, float dot, int64_t row, int64_t j,
                                               float& score) {
  if (!isfinite(dot)) {
    *epi.nonfinite = 1;
    return false;
  }
  switch (epi.kind) {
    case ScoreKind::kDot: score = dot; break;
    case ScoreKind::kCosine: score = cosine_from_dot(dot, epi.query_norms[row], epi.corpus_norms[j]); break;
    case ScoreKind::kUnitDot: score = dot * epi.query_norms[row] * epi.corpus_norms[j]; break;
  }
  if (epi.exclude_self) {
    const int64_t query = epi.query_ids != nullptr ? epi.query_ids[row] : epi.query_begin + row;
    if (static_cast<uint64_t>(query) + epi.self_shift == static_cast<uint64_t>(j)) return false;
  }
  return !(score < epi.min_score);
}

// One row slice of a tile, read 16 bytes at a time (element by element at a ragged end).
template <typename tile_t>
struct TileSource {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(tile_t));
  static constexpr int kChunks = kSelectRound / (kSelectThreads * kVec);
  const tile_t* row_dots;  // [cols] of this block's slice
  ScoreEpilogue epi;
  int64_t row;
  int64_t first_col;  // corpus row of row_dots[0]
  bool aligned;       // row_dots is 16-byte aligned
  __device__ __forceinline__ uint32_t operator()(int64_t chunk, int64_t length, float threshold, float* score,
                                                 int32_t* index) const {
    const int64_t e0 = chunk * kVec;
    float dot[kVec];
    if (aligned && e0 + kVec <= length) {
      load_vec<tile_t, kVec>(row_dots + e0, dot);
      // Where the dot product is the score, a chunk of finite entries all below the running k-th best
      // (almost every chunk, once the list is good) needs no epilogue: a few compares per entry instead
      // of the index and self-exclusion arithmetic. NaN and +-inf fail the test and take the full path,
      // which reports them.
      if (epi.kind == ScoreKind::kDot) {
        bool below = true;
#pragma unroll
        for (int v = 0; v < kVec; ++v) below &= (dot[v] < threshold) & (dot[v] > -INFINITY);
        if (below) return 0;
      }
    } else {
#pragma unroll
      for (int v = 0; v < kVec; ++v) dot[v] = e0 + v < length ? static_cast<float>(row_dots[e0 + v]) : 0.f;
    }
    uint32_t keep = 0;
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      const int64_t j = first_col + e0 + v;
      score[v] = -INFINITY;
      index[v] = static_cast<int32_t>(j);
      if (e0 + v < length && epilogue_score(epi, dot[v], row, j, score[v])) keep |= 1u << v;
    }
    return keep;
  }
};

struct ListSource {
  static constexpr int kVec = 1;
  static constexpr int kChunks = kSelectRound / kSelectThreads;
  const float* scores;     // [length]
  const int32_t* indices;  // [length]
  __device__ __forceinline__ uint32_t operator()(int64_t e, int64_t, float, float* score, int32_t* index) const {
    score[0] = scores[e];
    index[0] = indices[e];
    return index[0] != kNoIndex ? 1u : 0u;
  }
};

// grid (rows, slices). Block (row, slice) selects from columns [slice * slice_cols, ...) of tile row `row`
// and writes k entries to out + row * out_ld + slice * k; init (if any) is [rows, init_ld].
template <typename tile_t>
__global__ void __launch_bounds__(kSelectThreads)
    tile_select_kernel(const tile_t* __restrict__ dots,  // [rows, cols], row stride cols
                       int64_t cols, int64_t slice_cols, int64_t corpus_begin, ScoreEpilogue epi, int k,
                       int top_size, const float* init_scores, const int32_t* init_indices,  // [rows, init_ld]
                       int64_t init_ld, float* out_scores, int32_t* out_indices,             // [rows, out_ld]
                       int64_t out_ld) {
  const int64_t row = blockIdx.x;
  const int64_t col_begin = blockIdx.y * slice_cols;
  const int64_t length = std::min(slice_cols, cols - col_begin);
  const tile_t* row_dots = dots + row * cols + col_begin;
  const bool aligned = reinterpret_cast<uintptr_t>(row_dots) % 16 == 0;
  const TileSource<tile_t> source{row_dots, epi, row, corpus_begin + col_begin, aligned};
  const int64_t out_at = row * out_ld + static_cast<int64_t>(blockIdx.y) * k;
  select::block_select<kSelectThreads>(source, length, k, top_size, kCandCapacity,
                                       init_scores ? init_scores + row * init_ld : nullptr,
                                       init_indices ? init_indices + row * init_ld : nullptr, out_scores + out_at,
                                       out_indices + out_at);
}

// grid (rows). Best k of each row's list [rows, length] together with init [rows, k] (or nullptr).
__global__ void __launch_bounds__(kSelectThreads)
    list_select_kernel(const float* __restrict__ list_scores, const int32_t* __restrict__ list_indices,
                       int64_t length, int k, int top_size, const float* init_scores,
                       const int32_t* init_indices,                     // [rows, k]
                       float* out_scores, int32_t* out_indices) {  // [rows, k]
  const int64_t row = blockIdx.x;
  const ListSource source{list_scores + row * length, list_indices + row * length};
  select::block_select<kSelectThreads>(source, length, k, top_size, kCandCapacity,
                                       init_scores ? init_scores + row * k : nullptr,
                                       init_indices ? init_indices + row * k : nullptr, out_scores + row * k,
                                       out_indices + row * k);
}

// The epilogue alone, for the k > kMaxSelectK path: dropped candidates become -inf.
__global__ void tile_scores_kernel(const float* __restrict__ dots,  // [rows, cols]
                                   int64_t rows, int64_t cols, int64_t corpus_begin, ScoreEpilogue epi,
                                   float* __restrict__ out) {  // [rows, cols]
  const int64_t total = rows * cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / cols;
    float score;
    out[e] = epilogue_score(epi, dots[e], row, corpus_begin + e % cols, score) ? score : -INFINITY;
  }
}

// Few queries (at most kFusedMaxQueries): one pass over the corpus gives both the dot products and the
// corpus norms, where cuBLAS would read the corpus once for the norms and once for the product. One warp
// per corpus row, the queries in shared memory as fp32; out holds the score (cosine_from_dot of the fp32
// dot product under metric "cosine", the dot product under "dot"), or NaN for a non-finite dot product
// so that the select epilogue reports it. Instantiated for kQueries 1 and kFusedMaxQueries only.
constexpr int kFusedMaxQueries = 8;
constexpr int kFusedWarps = 8;
constexpr size_t kFusedMaxSmem = 32 * 1024;

template <typename scalar_t, int VEC, int kQueries>
__global__ void __launch_bounds__(kFusedWarps * 32)
    fused_scores_kernel(const scalar_t* __restrict__ queries,  // [q_rows, dim], q_rows <= kQueries
                        int q_rows, const float* __restrict__ query_norms,  // [q_rows], nullptr: metric "dot"
                        const scalar_t* __restrict__ corpus, int64_t cols, int64_t dim,  // [cols, dim]
                        float* __restrict__ out) {  // [q_rows, cols]
  extern __shared__ float query_smem[];  // [q_rows, dim]
  for (int64_t e = threadIdx.x; e < q_rows * dim; e += blockDim.x) query_smem[e] = static_cast<float>(queries[e]);
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kFusedWarps;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(kFusedWarps) + threadIdx.x / 32; j < cols; j += stride) {
    const scalar_t* c = corpus + j * dim;
    float dots[kQueries];
#pragma unroll
    for (int i = 0; i < kQueries; ++i) dots[i] = 0.f;
    float sum_sq = 0.f;
    // The loop of gemm::warp_row_sum_sq with the dot products added: the same order of sums, so the
    // corpus norms equal gemm::row_norms' bit for bit.
    for (int64_t d = static_cast<int64_t>(lane) * VEC; d < dim; d += 32 * VEC) {
      float x[VEC];
      load_vec<scalar_t, VEC>(c + d, x);
#pragma unroll
      for (int v = 0; v < VEC; ++v) sum_sq = fmaf(x[v], x[v], sum_sq);
#pragma unroll
      for (int i = 0; i < kQueries; ++i) {
        if (i >= q_rows) break;
        const float* q = query_smem + i * dim + d;
        if constexpr (VEC % 4 == 0) {
          // dim and d are multiples of VEC, so q is 16-byte aligned: a quarter of the shared-memory reads.
#pragma unroll
          for (int v = 0; v < VEC; v += 4) {
            const float4 q4 = *reinterpret_cast<const float4*>(q + v);
            dots[i] = fmaf(q4.w, x[v + 3], fmaf(q4.z, x[v + 2], fmaf(q4.y, x[v + 1], fmaf(q4.x, x[v], dots[i]))));
          }
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v) dots[i] = fmaf(q[v], x[v], dots[i]);
        }
      }
    }
    const float corpus_norm = norm_from_sum_sq(warp_sum(sum_sq));
#pragma unroll
    for (int i = 0; i < kQueries; ++i) {
      if (i >= q_rows) break;
      const float dot = warp_sum(dots[i]);
      if (lane == i % 32) {
        float score = dot;
        if (!isfinite(dot)) {
          score = NAN;
        } else if (query_norms != nullptr) {
          score = cosine_from_dot(dot, query_norms[i], corpus_norm);
        }
        out[i * cols + j] = score;
      }
    }
  }
}

// One warp per (query, candidate): exact fp32 score of a 16-bit-stage candidate; dropped ones become sentinels.
template <typename scalar_t>
__global__ void __launch_bounds__(kRescoreWarps * 32)
    rescore_kernel(const scalar_t* __restrict__ queries,  // [M, dim]
                   const scalar_t* __restrict__ corpus,   // [N, dim]
                   int64_t dim, const int32_t* __restrict__ candidates,  // [M, width]
                   int64_t rows, int width, const float* __restrict__ query_norms,  // [M]
                   const float* __restrict__ corpus_norms,                           // [N]
                   Metric metric, float min_score, int* nonfinite, float* __restrict__ out_scores,
                   int32_t* __restrict__ out_indices) {  // [M, width]
  const int64_t slot = blockIdx.x * static_cast<int64_t>(kRescoreWarps) + threadIdx.x / 32;
  if (slot >= rows * width) return;
  const int lane = threadIdx.x % 32;
  const int64_t row = slot / width;
  const int32_t j = candidates[slot];
  float score = -INFINITY;
  int32_t index = kNoIndex;
  if (j != kNoIndex) {
    const scalar_t* q = queries + row * dim;
    const scalar_t* c = corpus + static_cast<int64_t>(j) * dim;
    float dot = 0.f;
    for (int64_t d = lane; d < dim; d += 32) dot = fmaf(static_cast<float>(q[d]), static_cast<float>(c[d]), dot);
    dot = warp_sum(dot);
    if (!isfinite(dot)) {
      if (lane == 0) *nonfinite = 1;
    } else {
      const float s = metric == Metric::Dot ? dot : cosine_from_dot(dot, query_norms[row], corpus_norms[j]);
      if (!(s < min_score)) {
        score = s;
        index = j;
      }
    }
  }
  if (lane == 0) {
    out_scores[slot] = score;
    out_indices[slot] = index;
  }
}

// Flags each query whose rescored top-k is not provably the exact one (see rescored_topk).
__global__ void rescore_check_kernel(const float* __restrict__ approx_scores,  // [M, width], best first
                                     const int32_t* __restrict__ approx_indices, int width,
                                     const float* __restrict__ exact_scores,  // [M, k], best first
                                     int k, int64_t rows, const float* __restrict__ query_norms,  // [M]
                                     float relative_bound, float absolute_bound,
                                     const float* __restrict__ norm_range,  // [2] corpus norms: max, min nonzero
                                     Metric metric, float min_score, bool candidates_cover_corpus,
                                     uint8_t* __restrict__ needs_exact) {  // [M]
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const float corpus_norm_max = norm_range[0], corpus_norm_min = norm_range[1];
  const float worst_kept = approx_scores[row * width + width - 1];
  // A list that is not full holds every corpus row the 16-bit stage did not exclude.
  bool exact = candidates_cover_corpus || approx_indices[row * width + width - 1] == kNoIndex;
  if (!exact) {
    const float nq = query_norms[row];
    const bool in_range = nq >= select::kMinNorm && nq <= select::kMaxNorm;
    // In score units: dot products for metric "dot", cosines (divided by |q||c| >= |q| min|c|) otherwise.
    const float bound = metric == Metric::Dot ? relative_bound * nq * corpus_norm_max + absolute_bound
                                              : relative_bound + absolute_bound / (nq * corpus_norm_min);
    const float beaten = fmaxf(exact_scores[row * k + k - 1], min_score);
    exact = in_range && worst_kept + bound < beaten;
  }
  needs_exact[row] = exact ? 0 : 1;
}

int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

int select_top_size(int64_t k) {
  int size = 32;
  while (size < k) size <<= 1;
  return size;
}

// Shared memory of the select kernels (tile_select_kernel<tile_t>, list_select_kernel) for lists of
// top_size entries, with the 48 KB default lifted where needed: called once per scan, not per tile.
template <typename tile_t>
size_t prepare_select(int top_size) {
  const size_t smem = select::BlockQueue::shared_bytes(top_size, kCandCapacity);
  C10_CUDA_CHECK(allow_dynamic_smem(tile_select_kernel<tile_t>, smem));
  C10_CUDA_CHECK(allow_dynamic_smem(list_select_kernel, smem));
  return smem;
}

struct TilePlan {
  int64_t rows;
  int64_t cols;
};

// Tile shape for `elements` workspace elements per (row, col), plus `row_extra` per row (the k > kMaxSelectK sort).
TilePlan plan_tiles(int64_t m, int64_t n, int64_t row_extra, int64_t bytes_per_element, int64_t budget) {
  const int64_t elements = std::max<int64_t>(budget / bytes_per_element, 1);
  int64_t cols = std::min(n, std::max<int64_t>(4096, elements / std::min<int64_t>(m, 2048)));
  if (cols < n) cols = std::max(kColAlign, cols / kColAlign * kColAlign);
  const int64_t rows = std::min(m, std::max<int64_t>(1, elements / (cols + row_extra)));
  return {rows, cols};
}

// Workspace for one 16-bit tile: half the L2 cache, so the select pass reads what the GEMM just wrote
// from L2, within the call's budget. SENTFUSE_CUDA_TOPK_TILE_MB overrides the half L2 (read at each call, for
// benchmarks/sweep_topk_tiles.py): the H200 run spent ~5 of 6.75 ms of 1,000 x 1M fp16 in 64 tiles' selects,
// and fewer, larger tiles trade per-tile overhead for traffic beyond L2.
int64_t l2_tile_bytes() {
  if (const char* env = std::getenv("SENTFUSE_CUDA_TOPK_TILE_MB")) {
    const long long mb = std::atoll(env);
    if (mb > 0) return std::min<int64_t>(static_cast<int64_t>(mb) << 20, workspace_bytes());
  }
  const int64_t l2 = at::cuda::getCurrentDeviceProperties()->l2CacheSize;
  return std::clamp<int64_t>(l2 / 2, int64_t{8} << 20, workspace_bytes());
}

struct TopkOptions {
  Metric metric;
  bool exclude_self;
  float min_score;  // -inf when absent
  uint64_t self_shift;
};

// What the scan multiplies and how it turns the products into scores.
struct ScanInputs {
  at::Tensor queries;      // [M, D], in the GEMM's dtype
  at::Tensor corpus;       // [N, D], converted tile by tile to unit rows when unit_corpus
  at::Tensor query_norms;  // [M] fp32, undefined for kDot
  at::Tensor corpus_norms; // [N] fp32, undefined for kDot
  at::Tensor query_ids;    // int64 [M] position among the original queries, or undefined
  at::ScalarType tile_type;
  ScoreKind kind;
  bool unit_corpus;
  // fused_scores_kernel instead of cuBLAS: the tile holds finished scores (kind is then kDot), cosines
  // when query_norms is defined; corpus_norms is not needed.
  bool fused = false;
  // With unit_corpus: the conversion of each corpus tile also computes its rows' norms into corpus_norms.
  bool norms_from_scan = false;
};

// Few query rows leave SMs idle: the number of column slices a tile row is split into.
int64_t plan_slices(int64_t rows, int64_t cols, int64_t k) {
  const int64_t target_blocks = 4 * num_sms();
  if (rows >= target_blocks) return 1;
  const int64_t slices = std::min((target_blocks + rows - 1) / rows, cols / std::max<int64_t>(kMinSliceCols, 4 * k));
  return std::max<int64_t>(slices, 1);
}

// Whether fused_scores_kernel takes queries [M, D] (see there).
bool fused_scan_fits(const at::Tensor& queries) {
  return queries.size(0) <= kFusedMaxQueries &&
         static_cast<size_t>(queries.numel()) * sizeof(float) <= kFusedMaxSmem;
}

// scores [rows, cols] fp32 of queries [rows, D] (rows <= kFusedMaxQueries) against corpus [cols, D];
// query_norms [rows] for metric "cosine", undefined for "dot".
void fused_scores(const at::Tensor& queries, const at::Tensor& query_norms, const at::Tensor& corpus,
                  at::Tensor& scores) {
  const int64_t rows = queries.size(0), cols = corpus.size(0), dim = queries.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const size_t smem = static_cast<size_t>(rows * dim) * sizeof(float);
  const auto blocks = static_cast<unsigned>(
      std::clamp<int64_t>((cols + kFusedWarps - 1) / kFusedWarps, 1, int64_t{8} * num_sms()));
  const float* norms = query_norms.defined() ? query_norms.const_data_ptr<float>() : nullptr;
  gemm::dispatch_rows(corpus, [&](auto type_c, auto vec_c) {
    using scalar_t = decltype(type_c);
    constexpr int VEC = decltype(vec_c)::value;
    auto kernel = rows == 1 ? fused_scores_kernel<scalar_t, VEC, 1>
                            : fused_scores_kernel<scalar_t, VEC, kFusedMaxQueries>;
    kernel<<<blocks, kFusedWarps * 32, smem, stream>>>(queries.const_data_ptr<scalar_t>(), static_cast<int>(rows),
                                                        norms, corpus.const_data_ptr<scalar_t>(), cols, dim,
                                                        scores.mutable_data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Folds tile `dots` [rows, cols] (corpus rows n0...) into the running lists run_* [rows, k]; smem from
// prepare_select<tile_t>(top_size).
template <typename tile_t>
void select_tile(const at::Tensor& dots, int64_t n0, const ScoreEpilogue& epi, int64_t k, int top_size, size_t smem,
                 at::Tensor& run_scores, at::Tensor& run_indices) {
  const int64_t rows = dots.size(0), cols = dots.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto* tile = dots.const_data_ptr<tile_t>();
  const int64_t slices = plan_slices(rows, cols, k);
  if (slices == 1) {
    tile_select_kernel<tile_t><<<dim3(static_cast<unsigned>(rows), 1), kSelectThreads, smem, stream>>>(
        tile, cols, cols, n0, epi, static_cast<int>(k), top_size, run_scores.const_data_ptr<float>(),
        run_indices.const_data_ptr<int32_t>(), k, run_scores.mutable_data_ptr<float>(),
        run_indices.mutable_data_ptr<int32_t>(), k);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  // Slices a multiple of kColAlign wide keep every slice 16-byte aligned.
  const int64_t slice_cols = (((cols + slices - 1) / slices) + kColAlign - 1) / kColAlign * kColAlign;
  const int64_t used = (cols + slice_cols - 1) / slice_cols;
  auto part_scores = at::empty({rows, used * k}, run_scores.options());
  auto part_indices = at::empty({rows, used * k}, run_indices.options());
  tile_select_kernel<tile_t><<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(used)), kSelectThreads,
                               smem, stream>>>(tile, cols, slice_cols, n0, epi, static_cast<int>(k), top_size,
                                               nullptr, nullptr, 0, part_scores.mutable_data_ptr<float>(),
                                               part_indices.mutable_data_ptr<int32_t>(), used * k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  list_select_kernel<<<static_cast<unsigned>(rows), kSelectThreads, smem, stream>>>(
      part_scores.const_data_ptr<float>(), part_indices.const_data_ptr<int32_t>(), used * k, static_cast<int>(k),
      top_size, run_scores.const_data_ptr<float>(), run_indices.const_data_ptr<int32_t>(),
      run_scores.mutable_data_ptr<float>(), run_indices.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// k > kMaxSelectK: the epilogue into a score tile, then a stable sort of [running top-k | tile].
void sort_tile(const at::Tensor& dots, int64_t n0, const ScoreEpilogue& epi, int64_t k, at::Tensor& run_scores,
               at::Tensor& run_indices) {
  const int64_t rows = dots.size(0), cols = dots.size(1);
  auto tile_scores = at::empty_like(dots);
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((rows * cols + 255) / 256, 65535));
  tile_scores_kernel<<<blocks, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      dots.const_data_ptr<float>(), rows, cols, n0, epi, tile_scores.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Running entries come first and have lower corpus rows, so a stable sort keeps ties in index order.
  auto all_scores = at::cat({run_scores, tile_scores}, 1);
  auto tile_rows = at::arange(n0, n0 + cols, run_indices.options()).expand({rows, cols});
  auto all_indices = at::cat({run_indices, tile_rows}, 1);
  auto [best, order] = at::sort(all_scores, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  run_scores.copy_(best.narrow(1, 0, k));
  run_indices.copy_(all_indices.gather(1, order.narrow(1, 0, k)));
}

// Running top-k of in.queries [M, D] against in.corpus [N, D] into scores [M, k] / indices [M, k] (corpus
// rows, kNoIndex for none), corpus tile by corpus tile (each converted once), query tile by query tile.
void tiled_topk(const ScanInputs& in, int64_t k, const TopkOptions& opt, at::Tensor& scores, at::Tensor& indices,
                at::Tensor& nonfinite) {
  const int64_t m = in.queries.size(0), n = in.corpus.size(0);
  scores.fill_(-std::numeric_limits<float>::infinity());
  indices.fill_(kNoIndex);
  const bool sort_path = k > kMaxSelectK;
  TORCH_INTERNAL_ASSERT(!sort_path || in.tile_type == at::kFloat);
  const int64_t element_bytes = at::elementSize(in.tile_type);
  // Per element of the sort path: the dots, the epilogue copy, the concatenation, the sort's values, order
  // and scratch.
  const TilePlan plan = sort_path ? plan_tiles(m, n, k, 48, workspace_bytes())
                                  : plan_tiles(m, n, 0, element_bytes, l2_tile_bytes());
  auto dots_buffer = at::empty({plan.rows * plan.cols}, in.queries.options().dtype(in.tile_type));
  const int top_size = select_top_size(k);
  size_t smem = 0;
  if (!sort_path) {
    SENTFUSE_DISPATCH_FLOAT_TYPES(in.tile_type, "cosine_topk", [&] { smem = prepare_select<scalar_t>(top_size); });
  }

  ScoreEpilogue epi{};
  epi.corpus_norms = in.kind == ScoreKind::kDot ? nullptr : in.corpus_norms.const_data_ptr<float>();
  epi.self_shift = opt.self_shift;
  epi.min_score = opt.min_score;
  epi.kind = in.kind;
  epi.exclude_self = opt.exclude_self;
  epi.nonfinite = nonfinite.mutable_data_ptr<int>();

  for (int64_t n0 = 0; n0 < n; n0 += plan.cols) {
    const int64_t cols = std::min(plan.cols, n - n0);
    auto c_tile = in.corpus.narrow(0, n0, cols);
    if (in.unit_corpus) c_tile = unit_rows(c_tile, in.corpus_norms.narrow(0, n0, cols), in.norms_from_scan);
    for (int64_t m0 = 0; m0 < m; m0 += plan.rows) {
      const int64_t rows = std::min(plan.rows, m - m0);
      auto dots = dots_buffer.narrow(0, 0, rows * cols).view({rows, cols});
      if (in.fused) {
        fused_scores(in.queries.narrow(0, m0, rows),
                     in.query_norms.defined() ? in.query_norms.narrow(0, m0, rows) : at::Tensor(), c_tile, dots);
      } else {
        tile_dots(in.queries.narrow(0, m0, rows), c_tile, dots);
      }
      epi.query_norms = in.kind == ScoreKind::kDot ? nullptr : in.query_norms.const_data_ptr<float>() + m0;
      epi.query_ids = in.query_ids.defined() ? in.query_ids.const_data_ptr<int64_t>() + m0 : nullptr;
      epi.query_begin = m0;
      auto run_scores = scores.narrow(0, m0, rows);
      auto run_indices = indices.narrow(0, m0, rows);
      if (sort_path) {
        sort_tile(dots, n0, epi, k, run_scores, run_indices);
        continue;
      }
      SENTFUSE_DISPATCH_FLOAT_TYPES(in.tile_type, "cosine_topk", [&] {
        select_tile<scalar_t>(dots, n0, epi, k, top_size, smem, run_scores, run_indices);
      });
    }
  }
}

// The exact scan of at most kFusedMaxQueries queries: fp32 scores from fused_scores_kernel.
ScanInputs fused_scan(const at::Tensor& queries, const at::Tensor& corpus, const at::Tensor& query_norms) {
  ScanInputs scan{queries, corpus, query_norms, at::Tensor(), at::Tensor(), at::kFloat, ScoreKind::kDot, false};
  scan.fused = true;
  return scan;
}

// The exact scan: fp32 tiles of the inputs themselves.
ScanInputs exact_scan(const at::Tensor& queries, const at::Tensor& corpus, const at::Tensor& query_norms,
                      const at::Tensor& corpus_norms, Metric metric) {
  return {queries, corpus, query_norms, corpus_norms, at::Tensor(), at::kFloat,
          metric == Metric::Dot ? ScoreKind::kDot : ScoreKind::kCosine, false};
}

struct RescorePlan {
  ScanInputs scan;
  select::RescoreBound bound;
};

// The 16-bit scan multiplies fp16 unit-row copies (gemm::unit_rows) under metric "cosine", whatever the
// dtype: the tile then holds the score, which the select pass filters with a compare or two per entry.
// fp32 inputs under metric "dot" use the copies too (no overflow), scaled back by both norms; 16-bit
// inputs under metric "dot" are multiplied as they are into tiles of their own dtype.
bool unit_row_scan(const at::Tensor& queries, Metric metric) {
  return queries.scalar_type() == at::kFloat || metric == Metric::Cosine;
}

// corpus_norms: filled by the scan itself when unit_row_scan (norms_from_scan), else already computed.
RescorePlan plan_rescore(const at::Tensor& queries, const at::Tensor& corpus, const at::Tensor& query_norms,
                         const at::Tensor& corpus_norms, Metric metric) {
  const int64_t dim = queries.size(1);
  const double fp16_u = std::ldexp(1.0, -11), fp16_subnormal = std::ldexp(1.0, -24);
  if (unit_row_scan(queries, metric)) {
    ScanInputs scan{unit_rows(queries, query_norms), corpus, query_norms, corpus_norms, at::Tensor(), at::kHalf,
                    metric == Metric::Dot ? ScoreKind::kUnitDot : ScoreKind::kDot, true};
    scan.norms_from_scan = true;
    return {scan, select::rescore_bound(dim, fp16_u, fp16_u, fp16_subnormal)};
  }
  const bool half = queries.scalar_type() == at::kHalf;
  const double u = half ? fp16_u : std::ldexp(1.0, -8);
  const double subnormal = half ? fp16_subnormal : std::ldexp(1.0, -133);
  ScanInputs scan{queries, corpus, query_norms, corpus_norms, at::Tensor(), queries.scalar_type(), ScoreKind::kDot,
                  false};
  return {scan, select::rescore_bound(dim, 0.0, u, subnormal)};
}

// The 16-bit stage keeps `width` candidates per query. The fp32 top-k among them is the exact top-k when
// every dropped corpus row j scores below it: j's 16-bit score is at most the worst kept one t, so its
// exact score is at most t + bound, and the check is t + bound < max(k-th exact score, min_score).
// Returns the rows that failed the check (on the device), or nullopt when the whole call must go exact.
// Leaves the corpus norms in corpus_norms unless it returns nullopt before scanning. (One function of
// ~60 lines: scan, rescore, select and check share the candidate lists and run in this order on one stream.)
std::optional<at::Tensor> rescored_topk(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                        const at::Tensor& query_norms, at::Tensor& corpus_norms,
                                        const TopkOptions& opt, at::Tensor& scores, at::Tensor& indices,
                                        at::Tensor& nonfinite) {
  const int64_t m = queries.size(0), n = corpus.size(0), dim = queries.size(1);
  const bool unit = unit_row_scan(queries, opt.metric);
  // bf16 tiles are 8x coarser than fp16 ones: a wider list keeps the proof's margin.
  const int64_t spread = !unit && queries.scalar_type() == at::kBFloat16 ? 4 : 2;
  const int64_t width = std::min<int64_t>({n, kMaxSelectK, std::max<int64_t>(k + 64, spread * k)});
  if (width < n && width - k < 32) return std::nullopt;  // no room for a useful margin
  // A unit-row scan computes the corpus norms while it converts each tile: the corpus is read once.
  corpus_norms = unit ? at::empty({n}, query_norms.options()) : row_norms(corpus);
  const RescorePlan plan = plan_rescore(queries, corpus, query_norms, corpus_norms, opt.metric);

  auto approx_nonfinite = at::zeros({1}, queries.options().dtype(at::kInt));
  auto approx_scores = at::empty({m, width}, scores.options());
  auto approx_indices = at::empty({m, width}, indices.options());
  TopkOptions approx_opt = opt;
  approx_opt.min_score = -std::numeric_limits<float>::infinity();
  tiled_topk(plan.scan, width, approx_opt, approx_scores, approx_indices, approx_nonfinite);

  const auto stream = at::cuda::getCurrentCUDAStream();
  auto exact_scores = at::empty({m, width}, scores.options());
  auto exact_indices = at::empty({m, width}, indices.options());
  const int64_t slots = m * width;
  SENTFUSE_DISPATCH_FLOAT_TYPES(queries.scalar_type(), "cosine_topk", [&] {
    rescore_kernel<scalar_t><<<static_cast<unsigned>((slots + kRescoreWarps - 1) / kRescoreWarps),
                               kRescoreWarps * 32, 0, stream>>>(
        queries.const_data_ptr<scalar_t>(), corpus.const_data_ptr<scalar_t>(), dim,
        approx_indices.const_data_ptr<int32_t>(), m, static_cast<int>(width),
        opt.metric == Metric::Dot ? nullptr : query_norms.const_data_ptr<float>(),
        opt.metric == Metric::Dot ? nullptr : corpus_norms.const_data_ptr<float>(), opt.metric, opt.min_score,
        nonfinite.mutable_data_ptr<int>(), exact_scores.mutable_data_ptr<float>(),
        exact_indices.mutable_data_ptr<int32_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int top_size = select_top_size(k);
  list_select_kernel<<<static_cast<unsigned>(m), kSelectThreads, prepare_select<float>(top_size), stream>>>(
      exact_scores.const_data_ptr<float>(), exact_indices.const_data_ptr<int32_t>(), width, static_cast<int>(k),
      top_size, nullptr, nullptr, scores.mutable_data_ptr<float>(), indices.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // The bound is relative; tiny nonzero or huge corpus rows void it (checked below, with the scan's flag).
  auto nonzero_norms = corpus_norms.masked_fill(corpus_norms == 0, std::numeric_limits<float>::infinity());
  const auto range = at::stack({corpus_norms.max(), nonzero_norms.min()});
  auto needs_exact = at::empty({m}, queries.options().dtype(at::kByte));
  rescore_check_kernel<<<static_cast<unsigned>((m + 255) / 256), 256, 0, stream>>>(
      approx_scores.const_data_ptr<float>(), approx_indices.const_data_ptr<int32_t>(), static_cast<int>(width),
      scores.const_data_ptr<float>(), static_cast<int>(k), m, query_norms.const_data_ptr<float>(),
      static_cast<float>(plan.bound.relative), static_cast<float>(plan.bound.absolute), range.const_data_ptr<float>(),
      opt.metric, opt.min_score, width >= n, needs_exact.mutable_data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // One host read for both: a non-finite 16-bit score may only be an overflow of the tile, and norms out
  // of range void the bound; either way the exact path decides.
  const auto flags = at::cat({range, approx_nonfinite.to(at::kFloat)}).cpu();
  const float corpus_norm_max = flags[0].item<float>(), corpus_norm_min = flags[1].item<float>();
  if (flags[2].item<float>() != 0.f) return std::nullopt;
  if (!(corpus_norm_max <= select::kMaxNorm) || corpus_norm_min < select::kMinNorm) return std::nullopt;
  return at::nonzero(needs_exact).squeeze(1);
}

}  // namespace

static_assert(kNoIndex == kMaxCudaTopkCorpus, "cuda/topk.h's corpus bound is the selection's index sentinel");

std::optional<std::tuple<at::Tensor, at::Tensor>> run_cosine_topk(const at::Tensor& queries_in,
                                                                  const at::Tensor& corpus_in, int64_t k_out,
                                                                  Metric metric, bool exclude_self, float min_score,
                                                                  int64_t query_offset, int64_t corpus_offset,
                                                                  bool bf16_rescore) {
  const int64_t m = queries_in.size(0);
  auto float_options = queries_in.options().dtype(at::kFloat);
  auto scores = at::empty({m, k_out}, float_options);
  if (m == 0 || k_out == 0) return std::make_tuple(scores, at::empty({m, k_out}, queries_in.options().dtype(at::kLong)));

  const auto queries = queries_in.contiguous();
  const auto corpus = corpus_in.contiguous();
  TopkOptions opt{};
  opt.metric = metric;
  opt.exclude_self = exclude_self;
  opt.min_score = min_score;
  opt.self_shift = static_cast<uint64_t>(query_offset) - static_cast<uint64_t>(corpus_offset);

  // The 16-bit scan with fp32 rescoring is exact whatever the dtype, so it is the default wherever it pays.
  const bool rescore = bf16_rescore || m >= kRescoreMinQueries;
  if (rescore && fused_topk_requested() && fused_topk_fits(corpus.size(0), k_out)) {
    bool fused_nonfinite = false;
    auto fused = fused_topk(queries, corpus, k_out, metric, exclude_self, min_score, query_offset, corpus_offset,
                            fused_nonfinite);
    if (fused_nonfinite) return std::nullopt;
    if (fused.has_value()) return fused;
  }
  // A few queries under metric "cosine" read the corpus once, norms included (fused_scores_kernel), where the
  // exact scan reads it twice (norms, then cuBLAS). Under "dot" there are no norms to save: cuBLAS reads it once
  // too and, on the 2026-12-04 H200 run, the fused scan took 1.04 ms for 1 x 1M fp16 rows (dot) against 0.21 ms
  // for cuBLAS's product.
  const bool fused = !rescore && metric == Metric::Cosine && fused_scan_fits(queries);
  // The rescore bound needs norms even under metric "dot".
  at::Tensor query_norms, corpus_norms;
  if (metric == Metric::Cosine || rescore) query_norms = row_norms(queries);
  auto indices = at::empty({m, k_out}, queries.options().dtype(at::kInt));
  auto nonfinite = at::zeros({1}, queries.options().dtype(at::kInt));

  std::optional<at::Tensor> redo;
  if (rescore) redo = rescored_topk(queries, corpus, k_out, query_norms, corpus_norms, opt, scores, indices, nonfinite);
  // The exact path scores cosines from both norms (unless fused, which computes its own).
  if (metric == Metric::Cosine && !fused && !corpus_norms.defined()) corpus_norms = row_norms(corpus);
  if (!redo.has_value()) {
    tiled_topk(fused ? fused_scan(queries, corpus, query_norms)
                     : exact_scan(queries, corpus, query_norms, corpus_norms, metric),
               k_out, opt, scores, indices, nonfinite);
  } else if (redo->numel() > 0) {
    const auto& ids = *redo;
    auto sub_scores = at::empty({ids.size(0), k_out}, float_options);
    auto sub_indices = at::empty({ids.size(0), k_out}, indices.options());
    ScanInputs scan = exact_scan(queries.index_select(0, ids), corpus, query_norms.index_select(0, ids),
                                 corpus_norms, metric);
    scan.query_ids = ids;
    tiled_topk(scan, k_out, opt, sub_scores, sub_indices, nonfinite);
    scores.index_copy_(0, ids, sub_scores);
    indices.index_copy_(0, ids, sub_indices);
  }
  if (nonfinite.item<int>() != 0) return std::nullopt;
  const auto empty = scores == -std::numeric_limits<float>::infinity();
  auto out_indices = at::where(empty, at::scalar_tensor(-1, indices.options().dtype(at::kLong)),
                               indices.to(at::kLong) + corpus_offset);
  return std::make_tuple(scores, out_indices);
}

}  // namespace sentfuse
