// CUDA cosine_topk (semantics: python/sentfuse/reference.py cosine_topk).
//
// The corpus is scanned in tiles, as FAISS's GPU brute-force search does: for each (query tile, corpus
// tile) cuBLAS writes the fp32 dot products to a bounded workspace, then one block per query row (and,
// when there are few query rows, per column slice too) selects the best k of the tile with
// select::block_select, fused with the cosine / self-exclusion / min_score epilogue and with the running
// top-k of the earlier tiles. Column slices are merged into the running top-k by the same selection run
// over their partial lists. k > 1024 takes a stable sort of [running top-k | tile] instead.
//
// bf16_rescore (fp32 inputs; 16-bit inputs already run the exact GEMM on tensor cores): tiles are scored
// in bf16 with fp32 accumulation keeping k + margin candidates, the candidates are rescored in fp32, and a
// query whose margin cannot prove the result exact (see rescore_is_exact) is recomputed on the exact path.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>

#include "common/dispatch.h"
#include "cuda/reduce.cuh"
#include "cuda/select/block_select.cuh"
#include "cuda/tile_gemm.cuh"
#include "cuda/topk.h"

namespace sentfuse {
namespace {

using gemm::cosine_from_dot;
using gemm::row_norms;
using gemm::tile_dots;
using gemm::workspace_bytes;

using select::kNoIndex;

constexpr int kSelectThreads = 128;
constexpr int kSelectPerThread = 8;
// Candidate buffer: four rounds of the stream, so a flush runs at most every three rounds.
constexpr int kCandCapacity = 4 * kSelectThreads * kSelectPerThread;
constexpr int kMaxSelectK = 1024;
constexpr int kRescoreWarps = 8;
// A column slice of a tile is worth its own block only if it is this long.
constexpr int64_t kMinSliceCols = 8192;

// What turns a raw dot product into a candidate, shared by every selection over GEMM tiles.
struct ScoreEpilogue {
  const float* query_norms;   // [tile rows], unused when normalized
  const float* corpus_norms;  // [N], indexed by corpus row, unused when normalized
  const int64_t* query_ids;   // [tile rows] position of each row among the queries, or nullptr: query_begin + row
  int64_t query_begin;
  uint64_t self_shift;  // query_offset - corpus_offset, wrapping like torch's int64 arithmetic
  float min_score;      // -inf when absent
  bool normalized;
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
  score = epi.normalized ? dot : cosine_from_dot(dot, epi.query_norms[row], epi.corpus_norms[j]);
  if (epi.exclude_self) {
    const int64_t query = epi.query_ids != nullptr ? epi.query_ids[row] : epi.query_begin + row;
    if (static_cast<uint64_t>(query) + epi.self_shift == static_cast<uint64_t>(j)) return false;
  }
  return !(score < epi.min_score);
}

struct TileSource {
  const float* row_dots;  // [cols] of this block's slice
  ScoreEpilogue epi;
  int64_t row;
  int64_t first_col;  // corpus row of row_dots[0]
  __device__ __forceinline__ bool operator()(int64_t e, float& score, int32_t& index) const {
    const int64_t j = first_col + e;
    index = static_cast<int32_t>(j);
    return epilogue_score(epi, row_dots[e], row, j, score);
  }
};

struct ListSource {
  const float* scores;     // [length]
  const int32_t* indices;  // [length]
  __device__ __forceinline__ bool operator()(int64_t e, float& score, int32_t& index) const {
    score = scores[e];
    index = indices[e];
    return index != kNoIndex;
  }
};

// grid (rows, slices). Block (row, slice) selects from columns [slice * slice_cols, ...) of tile row `row`
// and writes k entries to out + row * out_ld + slice * k; init (if any) is [rows, init_ld].
__global__ void __launch_bounds__(kSelectThreads)
    tile_select_kernel(const float* __restrict__ dots,  // [rows, cols], row stride cols
                       int64_t cols, int64_t slice_cols, int64_t corpus_begin, ScoreEpilogue epi, int k,
                       int top_size, const float* init_scores, const int32_t* init_indices,  // [rows, init_ld]
                       int64_t init_ld, float* out_scores, int32_t* out_indices,             // [rows, out_ld]
                       int64_t out_ld) {
  const int64_t row = blockIdx.x;
  const int64_t col_begin = blockIdx.y * slice_cols;
  const int64_t length = std::min(slice_cols, cols - col_begin);
  const TileSource source{dots + row * cols + col_begin, epi, row, corpus_begin + col_begin};
  const int64_t out_at = row * out_ld + static_cast<int64_t>(blockIdx.y) * k;
  select::block_select<kSelectThreads, kSelectPerThread>(
      source, length, k, top_size, kCandCapacity, init_scores ? init_scores + row * init_ld : nullptr,
      init_indices ? init_indices + row * init_ld : nullptr, out_scores + out_at, out_indices + out_at);
}

// grid (rows). Best k of each row's list [rows, length] together with init [rows, k] (or nullptr).
__global__ void __launch_bounds__(kSelectThreads)
    list_select_kernel(const float* __restrict__ list_scores, const int32_t* __restrict__ list_indices,
                       int64_t length, int k, int top_size, const float* init_scores,
                       const int32_t* init_indices,                     // [rows, k]
                       float* out_scores, int32_t* out_indices) {  // [rows, k]
  const int64_t row = blockIdx.x;
  const ListSource source{list_scores + row * length, list_indices + row * length};
  select::block_select<kSelectThreads, kSelectPerThread>(
      source, length, k, top_size, kCandCapacity, init_scores ? init_scores + row * k : nullptr,
      init_indices ? init_indices + row * k : nullptr, out_scores + row * k, out_indices + row * k);
}

// The epilogue alone, for the k > 1024 path: dropped candidates become -inf.
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

// One warp per (query, candidate): exact fp32 score of a bf16-stage candidate; dropped ones become sentinels.
__global__ void __launch_bounds__(kRescoreWarps * 32)
    rescore_kernel(const float* __restrict__ queries,  // [M, dim]
                   const float* __restrict__ corpus,   // [N, dim]
                   int64_t dim, const int32_t* __restrict__ candidates,  // [M, width]
                   int64_t rows, int width, const float* __restrict__ query_norms,  // [M]
                   const float* __restrict__ corpus_norms,                           // [N]
                   bool normalized, float min_score, int* nonfinite, float* __restrict__ out_scores,
                   int32_t* __restrict__ out_indices) {  // [M, width]
  const int64_t slot = blockIdx.x * static_cast<int64_t>(kRescoreWarps) + threadIdx.x / 32;
  if (slot >= rows * width) return;
  const int lane = threadIdx.x % 32;
  const int64_t row = slot / width;
  const int32_t j = candidates[slot];
  float score = -INFINITY;
  int32_t index = kNoIndex;
  if (j != kNoIndex) {
    const float* q = queries + row * dim;
    const float* c = corpus + static_cast<int64_t>(j) * dim;
    float dot = 0.f;
    for (int64_t d = lane; d < dim; d += 32) dot = fmaf(q[d], c[d], dot);
    dot = warp_sum(dot);
    if (!isfinite(dot)) {
      if (lane == 0) *nonfinite = 1;
    } else {
      const float s = normalized ? dot : cosine_from_dot(dot, query_norms[row], corpus_norms[j]);
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

// Flags each query whose rescored top-k is not provably the exact one (see rescore_is_exact).
__global__ void rescore_check_kernel(const float* __restrict__ approx_scores,  // [M, width], best first
                                     const int32_t* __restrict__ approx_indices, int width,
                                     const float* __restrict__ exact_scores,  // [M, k], best first
                                     int k, int64_t rows, const float* __restrict__ query_norms,  // [M]
                                     float error_bound, float corpus_norm_max, bool normalized, float min_score,
                                     bool candidates_cover_corpus, uint8_t* __restrict__ needs_exact) {  // [M]
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const float worst_kept = approx_scores[row * width + width - 1];
  // A list that is not full holds every corpus row the bf16 stage did not exclude.
  bool exact = candidates_cover_corpus || approx_indices[row * width + width - 1] == kNoIndex;
  if (!exact) {
    const float nq = query_norms[row];
    // Outside this range bf16 rounding of tiny components or fp32 overflow would void the bound.
    const bool in_range = nq >= 0x1p-60f && nq <= 0x1p60f;
    const float bound = normalized ? error_bound * nq * corpus_norm_max : error_bound;
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

size_t select_shared_bytes(int top_size) { return select::BlockQueue::shared_bytes(top_size, kCandCapacity); }

struct TilePlan {
  int64_t rows;
  int64_t cols;
};

// Tile shape for `elements` workspace elements per (row, col), plus `row_extra` per row (the k > 1024 sort).
TilePlan plan_tiles(int64_t m, int64_t n, int64_t row_extra, int64_t bytes_per_element, int64_t budget) {
  const int64_t elements = std::max<int64_t>(budget / bytes_per_element, 1);
  const int64_t cols = std::min(n, std::max<int64_t>(4096, elements / std::min<int64_t>(m, 2048)));
  const int64_t rows = std::min(m, std::max<int64_t>(1, elements / (cols + row_extra)));
  return {rows, cols};
}

struct TopkOptions {
  bool normalized;
  bool exclude_self;
  float min_score;  // -inf when absent
  uint64_t self_shift;
};

// Running top-k of queries [M, D] against corpus [N, D] into scores [M, k] / indices [M, k] (corpus rows,
// kNoIndex for none), tile by tile. query_norms / corpus_norms are [M] / [N] (undefined when normalized);
// query_ids (int64 [M] or undefined) gives each row's position among the original queries for exclude_self.
// For the bf16 stage, `as_bf16` scores the tiles from bf16 copies.
void tiled_topk(const at::Tensor& queries, const at::Tensor& corpus, int64_t k, const at::Tensor& query_norms,
                const at::Tensor& corpus_norms, const at::Tensor& query_ids, const TopkOptions& opt, bool as_bf16,
                at::Tensor& scores, at::Tensor& indices, at::Tensor& nonfinite) {
  const int64_t m = queries.size(0), n = corpus.size(0), dim = queries.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  scores.fill_(-std::numeric_limits<float>::infinity());
  indices.fill_(kNoIndex);
  const bool sort_path = k > kMaxSelectK;
  const int64_t budget = workspace_bytes();
  // Per element: the dots, plus for the sort path the epilogue copy, the concatenation, the sort's values,
  // order and scratch; bf16 copies of the tiles are bounded separately below.
  TilePlan plan = sort_path ? plan_tiles(m, n, k, 48, budget) : plan_tiles(m, n, 0, 4, budget);
  if (as_bf16) plan.cols = std::min(plan.cols, std::max<int64_t>(1024, budget / 4 / std::max<int64_t>(dim * 2, 1)));
  auto dots_buffer = at::empty({plan.rows * plan.cols}, queries.options().dtype(at::kFloat));
  const int top_size = select_top_size(k);
  const size_t smem = select_shared_bytes(top_size);
  const int target_blocks = 4 * num_sms();

  ScoreEpilogue epi{};
  epi.corpus_norms = opt.normalized ? nullptr : corpus_norms.const_data_ptr<float>();
  epi.self_shift = opt.self_shift;
  epi.min_score = opt.min_score;
  epi.normalized = opt.normalized;
  epi.exclude_self = opt.exclude_self;
  epi.nonfinite = nonfinite.mutable_data_ptr<int>();

  for (int64_t m0 = 0; m0 < m; m0 += plan.rows) {
    const int64_t rows = std::min(plan.rows, m - m0);
    auto q_tile = queries.narrow(0, m0, rows);
    if (as_bf16) q_tile = q_tile.to(at::kBFloat16);
    auto run_scores = scores.narrow(0, m0, rows);
    auto run_indices = indices.narrow(0, m0, rows);
    epi.query_norms = opt.normalized ? nullptr : query_norms.const_data_ptr<float>() + m0;
    epi.query_ids = query_ids.defined() ? query_ids.const_data_ptr<int64_t>() + m0 : nullptr;
    epi.query_begin = m0;
    for (int64_t n0 = 0; n0 < n; n0 += plan.cols) {
      const int64_t cols = std::min(plan.cols, n - n0);
      auto c_tile = corpus.narrow(0, n0, cols);
      if (as_bf16) c_tile = c_tile.to(at::kBFloat16);
      auto dots = dots_buffer.narrow(0, 0, rows * cols).view({rows, cols});
      tile_dots(q_tile, c_tile, dots);

      if (sort_path) {
        auto tile_scores = at::empty_like(dots);
        const auto blocks = static_cast<unsigned>(std::min<int64_t>((rows * cols + 255) / 256, 65535));
        tile_scores_kernel<<<blocks, 256, 0, stream>>>(dots.const_data_ptr<float>(), rows, cols, n0, epi,
                                                       tile_scores.mutable_data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        // Running entries come first and have lower corpus rows, so a stable sort keeps ties in index order.
        auto all_scores = at::cat({run_scores, tile_scores}, 1);
        auto tile_rows = at::arange(n0, n0 + cols, indices.options()).expand({rows, cols});
        auto all_indices = at::cat({run_indices, tile_rows}, 1);
        auto [best, order] = at::sort(all_scores, /*stable=*/true, /*dim=*/1, /*descending=*/true);
        auto keep = order.narrow(1, 0, k);
        run_scores.copy_(best.narrow(1, 0, k));
        run_indices.copy_(all_indices.gather(1, keep));
        continue;
      }

      // Few query rows leave SMs idle: split each tile row into slices and merge their top-k afterwards.
      int64_t slices = 1;
      if (rows < target_blocks) {
        slices = std::min((target_blocks + rows - 1) / rows, cols / std::max<int64_t>(kMinSliceCols, 4 * k));
        slices = std::max<int64_t>(slices, 1);
      }
      const int64_t slice_cols = (cols + slices - 1) / slices;
      slices = (cols + slice_cols - 1) / slice_cols;
      if (slices == 1) {
        tile_select_kernel<<<dim3(static_cast<unsigned>(rows), 1), kSelectThreads, smem, stream>>>(
            dots.const_data_ptr<float>(), cols, cols, n0, epi, static_cast<int>(k), top_size,
            run_scores.const_data_ptr<float>(), run_indices.const_data_ptr<int32_t>(), k,
            run_scores.mutable_data_ptr<float>(), run_indices.mutable_data_ptr<int32_t>(), k);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        auto part_scores = at::empty({rows, slices * k}, scores.options());
        auto part_indices = at::empty({rows, slices * k}, indices.options());
        tile_select_kernel<<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(slices)), kSelectThreads,
                             smem, stream>>>(dots.const_data_ptr<float>(), cols, slice_cols, n0, epi,
                                             static_cast<int>(k), top_size, nullptr, nullptr, 0,
                                             part_scores.mutable_data_ptr<float>(),
                                             part_indices.mutable_data_ptr<int32_t>(), slices * k);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        list_select_kernel<<<static_cast<unsigned>(rows), kSelectThreads, smem, stream>>>(
            part_scores.const_data_ptr<float>(), part_indices.const_data_ptr<int32_t>(), slices * k,
            static_cast<int>(k), top_size, run_scores.const_data_ptr<float>(), run_indices.const_data_ptr<int32_t>(),
            run_scores.mutable_data_ptr<float>(), run_indices.mutable_data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  }
}

// |bf16 score - fp32 score| <= bound, in cosine units (times |q| max|c| when normalized). Rounding each input
// to bf16 (unit roundoff u = 2^-8) moves each product q_d c_d by at most (2u + u^2)|q_d c_d|, and summing
// |q_d c_d| over d is at most |q||c| (Cauchy-Schwarz). The bf16 GEMM's fp32 accumulation and the fp32
// rescoring each add at most D * 2^-24 |q||c|; tensor cores may truncate instead of round, so the first is
// taken twice: 3 D 2^-23 for both. 5% and 2^-20 absorb the rounding of the computed norms and quotients.
float rescore_error_bound(int64_t dim) {
  const double u = std::ldexp(1.0, -8);
  const double bound = 2 * u + u * u + 3.0 * static_cast<double>(dim) * std::ldexp(1.0, -23);
  return static_cast<float>(1.05 * bound + std::ldexp(1.0, -20));
}

// The bf16 stage keeps `width` candidates per query. The fp32 top-k among them is the exact top-k when
// every dropped corpus row j scores below it: j's bf16 score is at most the worst kept bf16 score t, so
// its exact score is at most t + bound, and the check is t + bound < max(k-th exact score, min_score).
// Returns the rows that failed the check (on the device), or nullopt when the whole call must go exact.
std::optional<at::Tensor> rescored_topk(const at::Tensor& queries, const at::Tensor& corpus, int64_t k,
                                        const at::Tensor& query_norms, const at::Tensor& corpus_norms,
                                        const TopkOptions& opt, at::Tensor& scores, at::Tensor& indices,
                                        at::Tensor& nonfinite) {
  const int64_t m = queries.size(0), n = corpus.size(0), dim = queries.size(1);
  const int64_t width = std::min<int64_t>({n, kMaxSelectK, k + std::max<int64_t>(k, 64)});
  if (width < n && width - k < 32) return std::nullopt;  // no room for a useful margin
  // The bound is relative; tiny nonzero or huge corpus rows void it.
  auto nonzero_norms = corpus_norms.masked_fill(corpus_norms == 0, std::numeric_limits<float>::infinity());
  const auto range = at::stack({corpus_norms.max(), nonzero_norms.min()}).cpu();
  const float corpus_norm_max = range[0].item<float>(), corpus_norm_min = range[1].item<float>();
  if (!(corpus_norm_max <= 0x1p60f) || corpus_norm_min < 0x1p-60f) return std::nullopt;

  auto approx_nonfinite = at::zeros({1}, queries.options().dtype(at::kInt));
  auto approx_scores = at::empty({m, width}, scores.options());
  auto approx_indices = at::empty({m, width}, indices.options());
  TopkOptions approx_opt = opt;
  approx_opt.min_score = -std::numeric_limits<float>::infinity();
  tiled_topk(queries, corpus, width, query_norms, corpus_norms, at::Tensor(), approx_opt, /*as_bf16=*/true,
             approx_scores, approx_indices, approx_nonfinite);

  const auto stream = at::cuda::getCurrentCUDAStream();
  auto exact_scores = at::empty({m, width}, scores.options());
  auto exact_indices = at::empty({m, width}, indices.options());
  const int64_t slots = m * width;
  rescore_kernel<<<static_cast<unsigned>((slots + kRescoreWarps - 1) / kRescoreWarps), kRescoreWarps * 32, 0,
                   stream>>>(queries.const_data_ptr<float>(), corpus.const_data_ptr<float>(), dim,
                             approx_indices.const_data_ptr<int32_t>(), m, static_cast<int>(width),
                             opt.normalized ? nullptr : query_norms.const_data_ptr<float>(),
                             opt.normalized ? nullptr : corpus_norms.const_data_ptr<float>(), opt.normalized,
                             opt.min_score, nonfinite.mutable_data_ptr<int>(), exact_scores.mutable_data_ptr<float>(),
                             exact_indices.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int top_size = select_top_size(k);
  list_select_kernel<<<static_cast<unsigned>(m), kSelectThreads, select_shared_bytes(top_size), stream>>>(
      exact_scores.const_data_ptr<float>(), exact_indices.const_data_ptr<int32_t>(), width, static_cast<int>(k),
      top_size, nullptr, nullptr, scores.mutable_data_ptr<float>(), indices.mutable_data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  auto needs_exact = at::empty({m}, queries.options().dtype(at::kByte));
  rescore_check_kernel<<<static_cast<unsigned>((m + 255) / 256), 256, 0, stream>>>(
      approx_scores.const_data_ptr<float>(), approx_indices.const_data_ptr<int32_t>(), static_cast<int>(width),
      scores.const_data_ptr<float>(), static_cast<int>(k), m, query_norms.const_data_ptr<float>(),
      rescore_error_bound(dim), corpus_norm_max, opt.normalized, opt.min_score, width >= n,
      needs_exact.mutable_data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // A non-finite bf16 score may only be an overflow of the rounded copy: let the exact path decide.
  if (approx_nonfinite.item<int>() != 0) return std::nullopt;
  return at::nonzero(needs_exact).squeeze(1);
}

}  // namespace

static_assert(kNoIndex == kMaxCudaTopkCorpus, "cuda/topk.h's corpus bound is the selection's index sentinel");

std::optional<std::tuple<at::Tensor, at::Tensor>> run_cosine_topk(const at::Tensor& queries_in,
                                                                  const at::Tensor& corpus_in, int64_t k_out,
                                                                  bool normalized, bool exclude_self, float min_score,
                                                                  int64_t query_offset, int64_t corpus_offset,
                                                                  bool bf16_rescore) {
  const int64_t m = queries_in.size(0);
  auto float_options = queries_in.options().dtype(at::kFloat);
  auto scores = at::empty({m, k_out}, float_options);
  if (m == 0 || k_out == 0) return std::make_tuple(scores, at::empty({m, k_out}, queries_in.options().dtype(at::kLong)));

  const auto queries = queries_in.contiguous();
  const auto corpus = corpus_in.contiguous();
  TopkOptions opt{};
  opt.normalized = normalized;
  opt.exclude_self = exclude_self;
  opt.min_score = min_score;
  opt.self_shift = static_cast<uint64_t>(query_offset) - static_cast<uint64_t>(corpus_offset);

  const bool rescore = bf16_rescore && queries.scalar_type() == at::kFloat;
  // The rescore bound needs norms even for normalized inputs.
  at::Tensor query_norms, corpus_norms;
  if (!normalized || rescore) {
    query_norms = row_norms(queries);
    corpus_norms = row_norms(corpus);
  }
  auto indices = at::empty({m, k_out}, queries.options().dtype(at::kInt));
  auto nonfinite = at::zeros({1}, queries.options().dtype(at::kInt));

  std::optional<at::Tensor> redo;
  if (rescore) redo = rescored_topk(queries, corpus, k_out, query_norms, corpus_norms, opt, scores, indices, nonfinite);
  if (!redo.has_value()) {
    tiled_topk(queries, corpus, k_out, query_norms, corpus_norms, at::Tensor(), opt, false, scores, indices,
               nonfinite);
  } else if (redo->numel() > 0) {
    const auto& ids = *redo;
    auto sub_scores = at::empty({ids.size(0), k_out}, float_options);
    auto sub_indices = at::empty({ids.size(0), k_out}, indices.options());
    tiled_topk(queries.index_select(0, ids), corpus, k_out, query_norms.index_select(0, ids), corpus_norms, ids, opt,
               false, sub_scores, sub_indices, nonfinite);
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
