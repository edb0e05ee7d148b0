// CUDA host entry points of maxsim, maxsim_topk and maxsim_candidates: checks, device guard, stream, tiling,
// registration. Kernels: maxsim.cu.
//
// The valid query tokens are packed once; documents are walked in tiles of whole documents, each tile one
// cuBLAS GEMM [query tokens, tile tokens] in the input dtype (rounded as sentence-transformers' einsum
// rounds it) folded into the [Q, N] scores by one kernel, so memory is O(query tokens x tile). maxsim_topk
// keeps a running best-k per query, merged by a stable sort after each round of documents.
#include <algorithm>
#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "cuda/maxsim.h"

namespace sentfuse {
namespace {

constexpr int64_t kTileElements = int64_t(1) << 26;  // GEMM tile entries: 256 MiB of fp32 at most
constexpr int64_t kMinTileTokens = 4096;
constexpr int64_t kTopkDocs = 1 << 18;        // documents per maxsim_topk round
constexpr int64_t kMaxGridY = 65535;          // queries per launch (grid.y)

struct Prepared {
  at::Tensor tokens;     // [Tq, D] packed valid query tokens, contiguous
  at::Tensor q_offsets;  // [Q + 1] int64, device
  at::Tensor scale;      // [Q] fp32, device
  at::Tensor docs;       // [T, D] contiguous
  at::Tensor doc_offsets;                 // [N + 1] int64, device
  std::vector<int64_t> host_doc_offsets;  // the same, on the host (tiling)
};

MaxSimDtype dtype_of(const at::Tensor& t) {
  if (t.scalar_type() == at::kHalf) return MaxSimDtype::Half;
  if (t.scalar_type() == at::kBFloat16) return MaxSimDtype::BFloat16;
  return MaxSimDtype::Float;
}

Prepared prepare(const char* op, const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                 const at::Tensor& docs, const at::Tensor& cu_seqlens, MaxSimScore score) {
  const int64_t Q = queries.size(0), L = queries.size(1);
  Prepared p;
  const at::Tensor valid = query_mask.has_value() ? query_mask->ne(0) : at::ones({Q, L}, queries.options().dtype(at::kBool));
  const at::Tensor counts = valid.sum(1, false, at::kLong);
  p.q_offsets = at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)});
  p.scale = score == MaxSimScore::Mean
                ? at::where(counts > 0, counts.to(at::kFloat).reciprocal(), at::zeros({}, counts.options().dtype(at::kFloat)))
                : at::ones({Q}, counts.options().dtype(at::kFloat));
  const at::Tensor flat = queries.reshape({Q * L, queries.size(2)});
  p.tokens = (query_mask.has_value() ? flat.index_select(0, valid.reshape({-1}).nonzero().view({-1})) : flat).contiguous();
  p.docs = docs.contiguous();
  const at::Tensor host = cu_seqlens.to(at::kCPU).to(at::kLong).contiguous();
  p.host_doc_offsets.assign(host.const_data_ptr<int64_t>(), host.const_data_ptr<int64_t>() + host.numel());
  check_maxsim_offsets(op, p.host_doc_offsets.data(), host.numel() - 1, docs.size(0));
  p.doc_offsets = cu_seqlens.to(at::kLong).contiguous();
  check_maxsim_finite(op, p.tokens, p.docs);
  return p;
}

// Scores documents [d0, d1) against every query into out [Q, ldo] (column j: document d0 + j).
void score_documents(const Prepared& p, int64_t d0, int64_t d1, float* out, int64_t ldo, cudaStream_t stream) {
  const int64_t Q = p.scale.size(0), Tq = p.tokens.size(0);
  const std::vector<int64_t>& offs = p.host_doc_offsets;
  const int64_t budget = std::max(kMinTileTokens, kTileElements / std::max<int64_t>(Tq, 1));
  for (int64_t a = d0; a < d1;) {
    int64_t b = a + 1;
    while (b < d1 && offs[b + 1] - offs[a] <= budget) ++b;
    const at::Tensor sim = at::mm(p.tokens, p.docs.narrow(0, offs[a], offs[b] - offs[a]).t());  // [Tq, cols]
    for (int64_t q0 = 0; q0 < Q; q0 += kMaxGridY) {
      C10_CUDA_CHECK(launch_maxsim_fold(sim.const_data_ptr(), dtype_of(sim), sim.size(1),
                                        p.q_offsets.const_data_ptr<int64_t>() + q0,
                                        p.scale.const_data_ptr<float>() + q0, std::min(kMaxGridY, Q - q0),
                                        p.doc_offsets.const_data_ptr<int64_t>(), a, b, out + q0 * ldo + (a - d0), ldo,
                                        stream));
    }
    a = b;
  }
}

void check_scores_finite(const char* op, const at::Tensor& scores) {
  if (scores.numel() > 0 && !at::isfinite(scores).all().item<bool>())
    fail_non_finite(op, "queries or docs (a dot product overflowed)");
}

at::Tensor maxsim_cuda(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask, const at::Tensor& docs,
                       const at::Tensor& cu_seqlens, c10::string_view score) {
  constexpr const char* op = "maxsim";
  const MaxSimArgs args = check_maxsim_args(op, queries, query_mask, docs, cu_seqlens, score);
  const c10::cuda::CUDAGuard guard(queries.device());
  const Prepared p = prepare(op, queries, query_mask, docs, cu_seqlens, args.score);
  at::Tensor out = at::empty({queries.size(0), args.num_docs}, queries.options().dtype(at::kFloat));
  score_documents(p, 0, args.num_docs, out.mutable_data_ptr<float>(), args.num_docs,
                  c10::cuda::getCurrentCUDAStream());
  check_scores_finite(op, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> maxsim_topk_cuda(const at::Tensor& queries,
                                                    const std::optional<at::Tensor>& query_mask, const at::Tensor& docs,
                                                    const at::Tensor& cu_seqlens, int64_t k, c10::string_view score,
                                                    bool /*bf16_rescore: a CPU path; the GPU scan is exact as is*/) {
  constexpr const char* op = "maxsim_topk";
  const MaxSimArgs args = check_maxsim_args(op, queries, query_mask, docs, cu_seqlens, score);
  check_maxsim_k(k);
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t Q = queries.size(0), N = args.num_docs, k_out = std::min(k, N);
  const auto fopt = queries.options().dtype(at::kFloat);
  at::Tensor best_scores = at::empty({Q, 0}, fopt), best_ids = at::empty({Q, 0}, fopt.dtype(at::kLong));
  if (Q == 0 || k_out == 0) return {at::empty({Q, k_out}, fopt), at::empty({Q, k_out}, fopt.dtype(at::kLong))};
  const Prepared p = prepare(op, queries, query_mask, docs, cu_seqlens, args.score);
  const int64_t round = std::min(N, kTopkDocs);
  at::Tensor block = at::empty({Q, round}, fopt);
  for (int64_t d0 = 0; d0 < N; d0 += round) {
    const int64_t n = std::min(round, N - d0);
    score_documents(p, d0, d0 + n, block.mutable_data_ptr<float>(), round, c10::cuda::getCurrentCUDAStream());
    const at::Tensor scores = block.narrow(1, 0, n);
    check_scores_finite(op, scores);
    // Kept candidates (lower ids) come first, and a stable descending sort keeps equal scores in id order.
    const at::Tensor all_scores = at::cat({best_scores, scores}, 1);
    const at::Tensor ids = at::arange(d0, d0 + n, fopt.dtype(at::kLong)).expand({Q, n});
    const at::Tensor all_ids = at::cat({best_ids, ids}, 1);
    const at::Tensor order = std::get<1>(all_scores.sort(true, 1, true)).narrow(1, 0, std::min(k_out, all_scores.size(1)));
    best_scores = all_scores.gather(1, order);
    best_ids = all_ids.gather(1, order);
  }
  return {best_scores, best_ids};
}

at::Tensor maxsim_candidates_cuda(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                                  const at::Tensor& docs, const at::Tensor& cu_seqlens, const at::Tensor& candidates,
                                  c10::string_view score) {
  constexpr const char* op = "maxsim_candidates";
  const MaxSimArgs args = check_maxsim_args(op, queries, query_mask, docs, cu_seqlens, score);
  check_maxsim_candidates(candidates, queries, args.num_docs);
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t Q = queries.size(0), C = candidates.size(1);
  at::Tensor out = at::empty({Q, C}, queries.options().dtype(at::kFloat));
  const Prepared p = prepare(op, queries, query_mask, docs, cu_seqlens, args.score);
  if (out.numel() == 0) return out;
  const at::Tensor cand = candidates.contiguous();
  for (int64_t q0 = 0; q0 < Q; q0 += kMaxGridY) {
    C10_CUDA_CHECK(launch_maxsim_candidates(
        p.tokens.const_data_ptr(), p.docs.const_data_ptr(), dtype_of(p.docs), p.docs.size(1),
        p.q_offsets.const_data_ptr<int64_t>() + q0, p.scale.const_data_ptr<float>() + q0, std::min(kMaxGridY, Q - q0),
        p.doc_offsets.const_data_ptr<int64_t>(), cand.const_data_ptr<int64_t>() + q0 * C, C,
        out.mutable_data_ptr<float>() + q0 * C, c10::cuda::getCurrentCUDAStream()));
  }
  check_scores_finite(op, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) {
  m.impl("maxsim", &maxsim_cuda);
  m.impl("maxsim_topk", &maxsim_topk_cuda);
  m.impl("maxsim_candidates", &maxsim_candidates_cuda);
}

}  // namespace sentfuse
