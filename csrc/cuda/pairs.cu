// CUDA threshold_pairs (semantics: python/sentfuse/reference.py threshold_pairs).
//
// Tile by tile, cuBLAS writes the fp32 dot products of a row tile of a and a column tile of b to a bounded
// workspace (as cuda/topk.cu does). A count pass gives each compaction block its number of qualifying
// pairs, their prefix sum sizes the tile's output exactly and gives each block its offset, and a write
// pass over the same partition (ballot scan inside each block) stores (key = row * M + col, score) in
// row-major order. Against itself, a row tile's column tiles start right after its first row, so tiles
// below the diagonal are never computed. max_pairs prunes the pairs found so far to the best max_pairs
// whenever they reach twice that (memory stays bounded) and raises the threshold to the worst kept score.
// One sort of the keys at the end gives (row, col) order.
//
// From 2^22 pairs up, the scan is fused instead (cuda/pair_gemm.cuh): 16-bit tensor-core products
// filtered in registers against the threshold less a rounding bound, the few candidates rescored in fp32.
// The answer is the same; the dense fp32 tiles, which cost more than the GEMM itself, are never written.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include "cuda/pair_gemm.cuh"
#include "cuda/pair_scan.cuh"
#include "cuda/pairs.h"
#include "cuda/reduce.cuh"
#include "cuda/tile_gemm.cuh"

namespace sentfuse {
namespace {

constexpr int kCompactThreads = 256;
constexpr int64_t kSliceCols = 4096;  // tile columns per compaction block
// Tiles of 2048 x 16384 keep cuBLAS near its peak and the per-tile host sync negligible.
constexpr int64_t kMaxTileRows = 2048;
constexpr int64_t kMaxTileCols = 16384;
constexpr int64_t kMinPrune = int64_t{1} << 22;  // max_pairs prunes only lists holding more pairs than this
// The fused scan from this many pairs; below, the tiled scan's few launches cost less than its setup.
constexpr int64_t kFusedMinPairs = int64_t{1} << 22;
// Rows of a per fused launch (one host sync each), and the first candidate buffer.
constexpr int64_t kFusedRows = 64 * pair_gemm::kBlockRows;
constexpr int64_t kFirstCapacity = int64_t{1} << 20;

// What makes a tile element a pair, shared by the count and write passes so that both decide alike.
struct PairEpilogue {
  const float* row_norms;  // [tile rows], nullptr under metric "dot"
  const float* col_norms;  // [tile cols], nullptr under metric "dot"
  int64_t row_begin;       // row of a at tile row 0
  int64_t col_begin;       // row of b at tile column 0
  int64_t num_cols;        // M: a pair's key is row * M + col
  float threshold;
  bool upper_only;  // a against itself: keep col > row only
  int* nonfinite;   // set to 1 when a dot product is NaN or inf
};

__device__ __forceinline__ bool pair_score(const PairEpilogue& epi, float dot, int64_t r, int64_t c, float& score) {
  if (!isfinite(dot)) {
    *epi.nonfinite = 1;
    return false;
  }
  if (epi.upper_only && epi.col_begin + c <= epi.row_begin + r) return false;
  score = epi.row_norms == nullptr ? dot : cosine_from_dot(dot, epi.row_norms[r], epi.col_norms[c]);
  return score >= epi.threshold;
}

// grid (tile rows, slices): block (r, s) covers columns [s * kSliceCols, (s + 1) * kSliceCols) of tile row r.
__global__ void __launch_bounds__(kCompactThreads)
    count_pairs_kernel(const float* __restrict__ dots,  // [rows, cols]
                       int64_t cols, PairEpilogue epi, int32_t* __restrict__ counts) {  // [rows * slices]
  const int64_t r = blockIdx.x;
  const int64_t end = std::min(static_cast<int64_t>(blockIdx.y + 1) * kSliceCols, cols);
  const float* row_dots = dots + r * cols;
  int n = 0;
  for (int64_t c = blockIdx.y * kSliceCols + threadIdx.x; c < end; c += kCompactThreads) {
    float score;
    n += pair_score(epi, row_dots[c], r, c, score) ? 1 : 0;
  }
  n = warp_sum(n);
  __shared__ int warp_counts[kCompactThreads / 32];
  if (threadIdx.x % 32 == 0) warp_counts[threadIdx.x / 32] = n;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kCompactThreads / 32; ++w) total += warp_counts[w];
    counts[r * gridDim.y + blockIdx.y] = total;
  }
}

// Same grid as count_pairs_kernel. Block b writes its pairs in column order to [ends[b] - counts[b], ends[b]).
__global__ void __launch_bounds__(kCompactThreads)
    write_pairs_kernel(const float* __restrict__ dots,  // [rows, cols]
                       int64_t cols, PairEpilogue epi, const int32_t* __restrict__ counts,  // [rows * slices]
                       const int64_t* __restrict__ ends,  // [rows * slices] inclusive prefix sums of counts
                       int64_t* __restrict__ out_keys, float* __restrict__ out_scores) {  // [pairs in tile]
  const int64_t block = static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y;
  const int count = counts[block];
  if (count == 0) return;  // most blocks, at a selective threshold
  const int64_t block_end = ends[block];
  int64_t out = block_end - count;
  const int64_t r = blockIdx.x;
  const int64_t begin = blockIdx.y * kSliceCols, end = std::min(begin + kSliceCols, cols);
  const float* row_dots = dots + r * cols;
  const int64_t key_base = (epi.row_begin + r) * epi.num_cols + epi.col_begin;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __shared__ int warp_counts[kCompactThreads / 32];
  for (int64_t base = begin; base < end; base += kCompactThreads) {
    const int64_t c = base + threadIdx.x;
    float score = 0.f;
    const bool keep = c < end && pair_score(epi, row_dots[c], r, c, score);
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < kCompactThreads / 32; ++w) {
      before += w < warp ? warp_counts[w] : 0;
      total += warp_counts[w];
    }
    const int64_t at = out + before + __popc(ballot & ((1u << lane) - 1u));
    if (keep && at < block_end) {
      out_keys[at] = key_base + c;
      out_scores[at] = score;
    }
    out += total;
    __syncthreads();  // warp_counts is rewritten by the next round
  }
}

// The best k of (keys, scores) [P]: higher score first, then smaller key, i.e. smaller (row, col).
std::pair<at::Tensor, at::Tensor> keep_best(const at::Tensor& keys, const at::Tensor& scores, int64_t k) {
  auto [sorted_keys, by_key] = at::sort(keys);
  const auto sorted_scores = scores.index_select(0, by_key);
  // A stable sort keeps equal scores in key order.
  const auto order = std::get<1>(at::sort(sorted_scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto best = order.narrow(0, 0, k);
  return {sorted_keys.index_select(0, best), sorted_scores.index_select(0, best)};
}

// The pairs found so far, scan after scan; with max_pairs, pruned to the best max_pairs whenever they reach
// twice that (memory stays bounded), raising the threshold to the worst kept score.
struct PairCollector {
  std::optional<int64_t> max_pairs;
  float min_score;
  std::vector<at::Tensor> keys, scores;
  int64_t found = 0;

  void add(at::Tensor new_keys, at::Tensor new_scores) {
    found += new_keys.size(0);
    keys.push_back(std::move(new_keys));
    scores.push_back(std::move(new_scores));
    if (max_pairs.has_value() && found > std::max(2 * *max_pairs, kMinPrune)) {
      auto [best_keys, best_scores] = keep_best(at::cat(keys), at::cat(scores), *max_pairs);
      // Later pairs must beat the worst kept one; an equal score may still win on (row, col).
      min_score = std::max(min_score, best_scores.min().item<float>());
      keys = {best_keys};
      scores = {best_scores};
      found = *max_pairs;
    }
  }

  // (rows, cols, scores) in (row, col) order.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result(int64_t num_cols, const at::TensorOptions& float_options) {
    const auto index_options = float_options.dtype(at::kLong);
    if (found == 0) {
      return {at::empty({0}, index_options), at::empty({0}, index_options), at::empty({0}, float_options)};
    }
    at::Tensor all_keys = at::cat(keys), all_scores = at::cat(scores);
    if (max_pairs.has_value() && found > *max_pairs) std::tie(all_keys, all_scores) = keep_best(all_keys, all_scores, *max_pairs);
    auto [sorted_keys, order] = at::sort(all_keys);
    return {at::div(sorted_keys, num_cols, "floor"), at::remainder(sorted_keys, num_cols),
            all_scores.index_select(0, order)};
  }
};

// The tiled scan: fp32 dot-product tiles in a bounded workspace, compacted by a count and a write pass.
void tiled_pairs(const at::Tensor& a, const at::Tensor& b, bool self, const at::Tensor& a_norms,
                 const at::Tensor& b_norms, Metric metric, PairCollector& out, at::Tensor& nonfinite) {
  const int64_t N = a.size(0), M = b.size(0);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t budget_floats = gemm::workspace_bytes() / static_cast<int64_t>(sizeof(float));
  const int64_t tile_cols = std::min(M, kMaxTileCols);
  const int64_t tile_rows = std::min({N, kMaxTileRows, std::max<int64_t>(1, budget_floats / tile_cols)});
  auto dots_buffer = at::empty({tile_rows * tile_cols}, a.options().dtype(at::kFloat));

  PairEpilogue epi{};
  epi.num_cols = M;
  epi.upper_only = self;
  epi.nonfinite = nonfinite.mutable_data_ptr<int>();
  // Against itself the last row has no partner j > i.
  const int64_t row_end = self ? N - 1 : N;
  for (int64_t i0 = 0; i0 < row_end; i0 += tile_rows) {
    const int64_t row_tile = std::min(tile_rows, row_end - i0);
    // Against itself a row tile pairs only with columns after its first row...
    for (int64_t j0 = self ? i0 + 1 : 0; j0 < M; j0 += tile_cols) {
      const int64_t cols = std::min(tile_cols, M - j0);
      // ... and only its rows before the column tile's last column pair with this column tile.
      const int64_t rows = self ? std::min(row_tile, j0 + cols - 1 - i0) : row_tile;
      auto dots = dots_buffer.narrow(0, 0, rows * cols).view({rows, cols});
      gemm::tile_dots(a.narrow(0, i0, rows), b.narrow(0, j0, cols), dots);

      epi.row_norms = metric == Metric::Dot ? nullptr : a_norms.const_data_ptr<float>() + i0;
      epi.col_norms = metric == Metric::Dot ? nullptr : b_norms.const_data_ptr<float>() + j0;
      epi.row_begin = i0;
      epi.col_begin = j0;
      epi.threshold = out.min_score;
      const int64_t slices = (cols + kSliceCols - 1) / kSliceCols;
      const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(slices));
      auto counts = at::empty({rows * slices}, a.options().dtype(at::kInt));
      count_pairs_kernel<<<grid, kCompactThreads, 0, stream>>>(dots.const_data_ptr<float>(), cols, epi,
                                                               counts.mutable_data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const auto ends = at::cumsum(counts, 0, at::kLong);
      const int64_t pairs = ends[ends.size(0) - 1].item<int64_t>();
      if (pairs == 0) continue;
      auto keys = at::empty({pairs}, a.options().dtype(at::kLong));
      auto scores = at::empty({pairs}, a.options().dtype(at::kFloat));
      write_pairs_kernel<<<grid, kCompactThreads, 0, stream>>>(
          dots.const_data_ptr<float>(), cols, epi, counts.const_data_ptr<int32_t>(), ends.const_data_ptr<int64_t>(),
          keys.mutable_data_ptr<int64_t>(), scores.mutable_data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      out.add(std::move(keys), std::move(scores));
    }
  }
}

// The fused scan (see pair_gemm.cuh); false when its bound does not hold and the tiled scan must run.
bool fused_pairs(const at::Tensor& a, const at::Tensor& b, bool self, const at::Tensor& a_norms,
                 const at::Tensor& b_norms, Metric metric, PairCollector& out, at::Tensor& nonfinite) {
  auto filter = pair_gemm::plan_filter(a, a_norms, b_norms, self, metric);
  if (!filter.has_value()) return false;
  const auto [a16, b16] = pair_gemm::filter_operands(a, b, self, a_norms, b_norms);
  pair_gemm::PairFilter f = *filter;
  f.num_cols = b.size(0);
  f.nonfinite = nonfinite.mutable_data_ptr<int>();
  auto keys = at::empty({kFirstCapacity}, a.options().dtype(at::kLong));
  auto count = at::zeros({1}, a.options().dtype(at::kLong));
  const int64_t row_end = self ? a.size(0) - 1 : a.size(0);
  for (int64_t r0 = 0; r0 < row_end; r0 += kFusedRows) {
    const int64_t r1 = std::min(r0 + kFusedRows, row_end);
    f.threshold = out.min_score;
    // Against itself, a row block pairs only with columns from its first row on (r0 is a block multiple).
    const int64_t found = pair_gemm::run_filter(a16, b16, r0, r1, self ? r0 : 0, f, keys, count,
                                                std::numeric_limits<int64_t>::max());
    if (found == 0) continue;
    const auto candidates = keys.narrow(0, 0, found);
    const auto scores = pair_gemm::rescore_keys(a, b, candidates, a_norms, b_norms, metric, nonfinite);
    const auto keep = scores >= out.min_score;
    out.add(candidates.masked_select(keep), scores.masked_select(keep));
  }
  return true;
}

}  // namespace

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> run_threshold_pairs(
    const at::Tensor& a_in, const std::optional<at::Tensor>& b_in, float min_score, Metric metric,
    std::optional<int64_t> max_pairs) {
  const bool self = !b_in.has_value();
  const int64_t N = a_in.size(0), M = self ? N : b_in->size(0);
  const auto float_options = a_in.options().dtype(at::kFloat);
  PairCollector out{max_pairs, min_score};
  if (N == 0 || M == 0 || (self && N < 2) || max_pairs == 0) return out.result(M, float_options);

  const auto a = a_in.contiguous();
  const auto b = self ? a : b_in->contiguous();
  const int64_t pairs = self ? N * (N - 1) / 2 : N * M;
  const bool fused = pairs >= kFusedMinPairs;
  // The fused scan's bound needs the norms under either metric.
  at::Tensor a_norms, b_norms;
  if (metric == Metric::Cosine || fused) {
    a_norms = gemm::row_norms(a);
    b_norms = self ? a_norms : gemm::row_norms(b);
  }
  auto nonfinite = at::zeros({1}, a.options().dtype(at::kInt));
  if (!fused || !fused_pairs(a, b, self, a_norms, b_norms, metric, out, nonfinite)) {
    tiled_pairs(a, b, self, a_norms, b_norms, metric, out, nonfinite);
  }
  if (nonfinite.item<int>() != 0) return std::nullopt;
  return out.result(M, float_options);
}

}  // namespace sentfuse
