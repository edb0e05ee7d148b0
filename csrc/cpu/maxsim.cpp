// CPU maxsim, maxsim_topk and maxsim_candidates (semantics: python/sentfuse/reference.py).
//
// Late interaction scores a query against a document by the best document token for each query token,
// summed. Nothing of size [query tokens, all document tokens] is ever built: the valid query tokens are
// packed once, documents are cut into tiles of whole documents (~kTileTokens tokens) and queries into
// blocks of whole queries (~kBlockRows tokens), and each (block, tile) pair is one work item of
// at::parallel_for: a single-threaded GEMM into that thread's own cache-sized buffer, folded at once
// (max over each document's columns, summed over each query's rows) into the [Q, N] scores. Every score is
// written by exactly one item, so there is nothing to merge. GEMMs run in the input dtype through
// at::mm_out (oneDNN; AMX for bf16 where the CPU has it), with fp32 accumulation; 16-bit products are
// rounded to the input dtype as sentence-transformers' einsum rounds them, and maxima are summed in fp32.
// maxsim_topk scores a block of documents at a time, so memory stays O(Q x block) whatever N is; with
// bf16_rescore (fp32 inputs, AMX CPUs) the blocks come from the bf16 scan (cpu/maxsim_bf16.h) and only the
// candidates it cannot rule out are scored here, through maxsim_candidates' GEMMs.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "cpu/load_float.h"
#include "cpu/maxsim_bf16.h"

namespace sentfuse {
namespace {

constexpr int64_t kTileTokens = 1024;   // document tokens per GEMM tile (more only for one longer document)
constexpr int64_t kBlockRows = 256;     // query tokens per GEMM block: a 1 MB fp32 tile stays in L2
constexpr int64_t kTopkDocs = 1 << 16;  // documents scored per maxsim_topk round: scores stay O(Q x 64k)

// The valid tokens of every query, packed: query q owns rows offsets[q]:offsets[q + 1] of tokens.
struct PackedQueries {
  at::Tensor tokens;             // [Tq, D], docs' dtype, contiguous
  std::vector<int64_t> offsets;  // [Q + 1]
  std::vector<float> scale;      // [Q]: 1, or 1 / valid tokens for MeanMaxSim (0 tokens: score 0)
};

PackedQueries pack_queries(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                           MaxSimScore score) {
  const int64_t Q = queries.size(0), L = queries.size(1);
  PackedQueries out;
  out.offsets.assign(Q + 1, 0);
  out.scale.assign(Q, 1.f);
  at::Tensor valid = query_mask.has_value() ? query_mask->ne(0).to(at::kLong).contiguous()
                                            : at::ones({Q, L}, queries.options().dtype(at::kLong));
  const int64_t* v = valid.const_data_ptr<int64_t>();
  for (int64_t q = 0; q < Q; ++q) {
    int64_t n = 0;
    for (int64_t t = 0; t < L; ++t) n += v[q * L + t];
    out.offsets[q + 1] = out.offsets[q] + n;
    if (score == MaxSimScore::Mean) out.scale[q] = n > 0 ? 1.f / static_cast<float>(n) : 0.f;
  }
  const at::Tensor flat = queries.reshape({Q * L, queries.size(2)});
  out.tokens = (query_mask.has_value() ? flat.index_select(0, valid.view({-1}).nonzero().view({-1})) : flat)
                   .contiguous();
  return out;
}

std::vector<int64_t> host_offsets(const char* op, const at::Tensor& cu_seqlens, int64_t total_tokens) {
  const at::Tensor c = cu_seqlens.to(at::kLong).contiguous();
  std::vector<int64_t> offsets(c.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>() + c.numel());
  check_maxsim_offsets(op, offsets.data(), static_cast<int64_t>(offsets.size()) - 1, total_tokens);
  return offsets;
}

// Cuts items [0, n) with sizes given by offsets (item i spans offsets[i]:offsets[i + 1]) into consecutive
// groups of at most `budget` units, or one item where a single item is larger. Returns group boundaries.
std::vector<int64_t> group_by_budget(const std::vector<int64_t>& offsets, int64_t first, int64_t last, int64_t budget) {
  std::vector<int64_t> bounds{first};
  for (int64_t i = first; i < last;) {
    int64_t j = i + 1;
    while (j < last && offsets[j + 1] - offsets[i] <= budget) ++j;
    bounds.push_back(j);
    i = j;
  }
  return bounds;
}

// max(x[0:n]), n >= 1, in fp32: 16 independent maxima so that the compiler keeps them in vector registers.
template <typename scalar_t>
inline float row_max(const scalar_t* __restrict x, int64_t n) {
  constexpr int W = 16;
  float m[W];
  for (int k = 0; k < W; ++k) m[k] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    for (int k = 0; k < W; ++k) {
      const float v = load_float(x, i + k);
      m[k] = v > m[k] ? v : m[k];
    }
  }
  float r = -std::numeric_limits<float>::infinity();
  for (int k = 0; k < W; ++k) r = std::max(r, m[k]);
  for (; i < n; ++i) r = std::max(r, load_float(x, i));
  return r;
}

// One query's scores against the documents of a tile: sim [rows, ld] holds its rows' dot products with the
// tile's tokens, document d spanning columns seg[d]:seg[d + 1]. out[d] = scale * sum_r max_c sim[r, c].
template <typename scalar_t>
void fold_query(const scalar_t* sim, int64_t ld, int64_t rows, const int64_t* seg, int64_t num_docs, float scale,
                float* out) {
  for (int64_t d = 0; d < num_docs; ++d) out[d] = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* row = sim + r * ld;
    for (int64_t d = 0; d < num_docs; ++d) out[d] += row_max(row + seg[d], seg[d + 1] - seg[d]);
  }
  for (int64_t d = 0; d < num_docs; ++d) out[d] *= scale;
}

// fold_query on the transposed layout: sim [cols, rows] (column r: the query's row r), document d spanning rows
// seg[d]:seg[d + 1]; best [rows] is scratch. Same sums in the same order as fold_query.
template <typename scalar_t>
void fold_query_transposed(const scalar_t* sim, int64_t rows, const int64_t* seg, int64_t num_docs, float scale,
                           float* out, float* __restrict best) {
  for (int64_t d = 0; d < num_docs; ++d) {
    std::fill(best, best + rows, -std::numeric_limits<float>::infinity());
    for (int64_t c = seg[d]; c < seg[d + 1]; ++c) {
      const scalar_t* __restrict x = sim + c * rows;
      for (int64_t r = 0; r < rows; ++r) {
        const float v = load_float(x, r);
        best[r] = v > best[r] ? v : best[r];
      }
    }
    float sum = 0.f;
    for (int64_t r = 0; r < rows; ++r) sum += best[r];
    out[d] = sum * scale;
  }
}

// A thread's GEMM output buffer, grown on demand and reused across work items.
at::Tensor& thread_buffer(std::vector<at::Tensor>& buffers, int64_t rows, int64_t cols, const at::TensorOptions& opt) {
  at::Tensor& buf = buffers[at::get_thread_num()];
  if (!buf.defined() || buf.numel() < rows * cols) buf = at::empty({rows * cols}, opt);
  return buf;
}

// Scores documents [d0, d1) against every query into out [Q, ldo] (column j holds document d0 + j).
void score_documents(const PackedQueries& pq, const at::Tensor& docs, const std::vector<int64_t>& doc_offsets,
                     int64_t d0, int64_t d1, float* out, int64_t ldo) {
  const int64_t Q = static_cast<int64_t>(pq.scale.size());
  if (Q == 0 || d1 <= d0) return;
  const std::vector<int64_t> tiles = group_by_budget(doc_offsets, d0, d1, kTileTokens);
  const std::vector<int64_t> blocks = group_by_budget(pq.offsets, 0, Q, kBlockRows);
  const int64_t num_tiles = static_cast<int64_t>(tiles.size()) - 1, num_blocks = static_cast<int64_t>(blocks.size()) - 1;
  std::vector<at::Tensor> buffers(at::get_num_threads());
  at::parallel_for(0, num_tiles * num_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> seg;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / num_blocks, b = item % num_blocks;
      const int64_t ta = tiles[t], tb = tiles[t + 1], qa = blocks[b], qb = blocks[b + 1];
      // oneDNN JIT-builds a kernel per GEMM shape, so every tile multiplies a fixed window of kTileTokens
      // columns (ending at T for the last ones) and only reads its own documents' columns from it.
      const int64_t c0 = doc_offsets[ta], T = docs.size(0);
      const int64_t cols = std::max(doc_offsets[tb] - c0, std::min(kTileTokens, T)), w0 = std::min(c0, T - cols);
      const int64_t r0 = pq.offsets[qa], rows = pq.offsets[qb] - r0;
      if (rows == 0) {  // queries without a valid token score 0
        for (int64_t q = qa; q < qb; ++q) std::fill(out + q * ldo + ta - d0, out + q * ldo + tb - d0, 0.f);
        continue;
      }
      at::Tensor sim = thread_buffer(buffers, rows, cols, docs.options()).narrow(0, 0, rows * cols).view({rows, cols});
      at::mm_out(sim, pq.tokens.narrow(0, r0, rows), docs.narrow(0, w0, cols).t());
      seg.resize(tb - ta + 1);
      for (int64_t d = ta; d <= tb; ++d) seg[d - ta] = doc_offsets[d] - w0;
      SENTFUSE_DISPATCH_FLOAT_TYPES(sim.scalar_type(), "sentfuse_maxsim_fold_cpu", [&] {
        const scalar_t* s = sim.const_data_ptr<scalar_t>();
        for (int64_t q = qa; q < qb; ++q)
          fold_query(s + (pq.offsets[q] - r0) * cols, cols, pq.offsets[q + 1] - pq.offsets[q], seg.data(), tb - ta,
                     pq.scale[q], out + q * ldo + ta - d0);
      });
    }
  });
}

struct Prepared {
  PackedQueries queries;
  at::Tensor docs;  // contiguous
  std::vector<int64_t> offsets;
};

Prepared prepare(const char* op, const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                 const at::Tensor& docs, const at::Tensor& cu_seqlens, MaxSimScore score) {
  Prepared p{pack_queries(queries, query_mask, score), docs.contiguous(), host_offsets(op, cu_seqlens, docs.size(0))};
  check_maxsim_finite(op, p.queries.tokens, p.docs);
  return p;
}

void check_scores_finite(const char* op, const at::Tensor& scores) {
  if (scores.numel() > 0 && !at::isfinite(scores).all().item<bool>())
    fail_non_finite(op, "queries or docs (a dot product overflowed fp32)");
}

at::Tensor maxsim_cpu(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask, const at::Tensor& docs,
                      const at::Tensor& cu_seqlens, c10::string_view score) {
  constexpr const char* op = "maxsim";
  const MaxSimArgs args = check_maxsim_args(op, queries, query_mask, docs, cu_seqlens, score);
  const Prepared p = prepare(op, queries, query_mask, docs, cu_seqlens, args.score);
  at::Tensor out = at::empty({queries.size(0), args.num_docs}, queries.options().dtype(at::kFloat));
  score_documents(p.queries, p.docs, p.offsets, 0, args.num_docs, out.mutable_data_ptr<float>(), args.num_docs);
  check_scores_finite(op, out);
  return out;
}

// Offers document `id` with `score` to a query's best list, kept sorted best first with ties to the lower index,
// at most k long. Documents arrive in increasing index order, so an equal score never displaces a kept one.
void push_topk(std::vector<std::pair<float, int64_t>>& best, float score, int64_t id, int64_t k) {
  const auto better = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  if (static_cast<int64_t>(best.size()) == k && !(score > best.back().first)) return;
  best.emplace_back(score, id);
  std::inplace_merge(best.begin(), best.end() - 1, best.end(), better);
  if (static_cast<int64_t>(best.size()) > k) best.pop_back();
}

// A thread's reused memory for score_candidates.
struct CandidateBuffers {
  std::vector<at::Tensor> sim, gathered, best;
  explicit CandidateBuffers(int threads) : sim(threads), gathered(threads), best(threads) {}
};

// Query q against documents ids[0:C] into out[0:C], in groups of ~kTileTokens candidate tokens gathered per GEMM.
// The gathered tokens are the GEMM's tall left operand (the query's few rows the right one): that keeps the
// BLAS from repacking the large operand for a handful of rows.
void score_candidates(const Prepared& p, int64_t q, const int64_t* ids, int64_t C, float* out, CandidateBuffers& buf) {
  const int64_t r0 = p.queries.offsets[q], rows = p.queries.offsets[q + 1] - r0, D = p.docs.size(1);
  if (rows == 0) {  // a query without a valid token scores 0
    std::fill(out, out + C, 0.f);
    return;
  }
  float* best = thread_buffer(buf.best, 1, rows, p.docs.options().dtype(at::kFloat)).mutable_data_ptr<float>();
  std::vector<int64_t> seg, rows_of;
  for (int64_t c = 0; c < C;) {  // one group: candidates [c, e)
    seg.assign(1, 0);
    rows_of.clear();
    int64_t e = c;
    while (e < C && (e == c || seg.back() + p.offsets[ids[e] + 1] - p.offsets[ids[e]] <= kTileTokens)) {
      const int64_t d = ids[e++];
      for (int64_t t = p.offsets[d]; t < p.offsets[d + 1]; ++t) rows_of.push_back(t);
      seg.push_back(static_cast<int64_t>(rows_of.size()));
    }
    const int64_t cols = seg.back();
    at::Tensor gathered = thread_buffer(buf.gathered, cols, D, p.docs.options()).narrow(0, 0, cols * D).view({cols, D});
    at::index_select_out(gathered, p.docs, 0, at::from_blob(rows_of.data(), {cols}, at::TensorOptions().dtype(at::kLong)));
    at::Tensor sim = thread_buffer(buf.sim, cols, rows, p.docs.options()).narrow(0, 0, cols * rows).view({cols, rows});
    at::mm_out(sim, gathered, p.queries.tokens.narrow(0, r0, rows).t());
    SENTFUSE_DISPATCH_FLOAT_TYPES(sim.scalar_type(), "sentfuse_maxsim_candidates_cpu", [&] {
      fold_query_transposed(sim.const_data_ptr<scalar_t>(), rows, seg.data(), e - c, p.queries.scale[q], out + c, best);
    });
    c = e;
  }
}

// maxsim_topk through the bf16 scan (cpu/maxsim_bf16.h): approximate scores with their bounds a round of
// documents at a time, then each query's candidates rescored exactly as maxsim_candidates scores them.
void topk_bf16_rescore(const char* op, const Prepared& p, int64_t N, int64_t k, float* out_scores, int64_t* out_ids) {
  const int64_t Q = static_cast<int64_t>(p.queries.scale.size()), round = std::min(N, kTopkDocs);
  const MaxSimBf16Scan scan(p.queries.tokens, p.queries.offsets, p.queries.scale);
  std::vector<float> approx(Q * round);
  std::vector<MaxSimDocTerms> terms(round);
  std::vector<MaxSimCandidates> candidates(Q, MaxSimCandidates(k));
  for (int64_t d0 = 0; d0 < N; d0 += round) {
    const int64_t n = std::min(round, N - d0);
    scan.score(p.docs, p.offsets, group_by_budget(p.offsets, d0, d0 + n, kTileTokens), approx.data(), round,
               terms.data());
    at::parallel_for(0, Q, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q)
        for (int64_t j = 0; j < n; ++j)
          candidates[q].offer(d0 + j, approx[q * round + j], scan.error_bound(q, terms[j]));
    });
  }
  CandidateBuffers buffers(at::get_num_threads());
  std::atomic<bool> finite{true};
  at::parallel_for(0, Q, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const std::vector<int64_t> ids = candidates[q].survivors();
      std::vector<float> exact(ids.size());
      score_candidates(p, q, ids.data(), static_cast<int64_t>(ids.size()), exact.data(), buffers);
      std::vector<std::pair<float, int64_t>> best;
      for (size_t c = 0; c < ids.size(); ++c) {
        finite = finite && std::isfinite(exact[c]);
        push_topk(best, exact[c], ids[c], k);
      }
      for (int64_t j = 0; j < k; ++j) std::tie(out_scores[q * k + j], out_ids[q * k + j]) = best[j];
    }
  });
  if (!finite) fail_non_finite(op, "queries or docs (a dot product overflowed fp32)");
}

std::tuple<at::Tensor, at::Tensor> maxsim_topk_cpu(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                                                   const at::Tensor& docs, const at::Tensor& cu_seqlens, int64_t k,
                                                   c10::string_view score, bool bf16_rescore) {
  constexpr const char* op = "maxsim_topk";
  const MaxSimArgs args = check_maxsim_args(op, queries, query_mask, docs, cu_seqlens, score);
  check_maxsim_k(k);
  const int64_t Q = queries.size(0), N = args.num_docs, k_out = std::min(k, N);
  const Prepared p = prepare(op, queries, query_mask, docs, cu_seqlens, args.score);
  at::Tensor out_scores = at::empty({Q, k_out}, queries.options().dtype(at::kFloat));
  at::Tensor out_ids = at::empty({Q, k_out}, queries.options().dtype(at::kLong));
  if (Q == 0 || k_out == 0) return {out_scores, out_ids};
  // The scan needs the AMX tiles and pays off for fp32 inputs only (16-bit inputs already take bf16/fp16 GEMMs).
  if (bf16_rescore && docs.scalar_type() == at::kFloat && maxsim_bf16_available()) {
    topk_bf16_rescore(op, p, N, k_out, out_scores.mutable_data_ptr<float>(), out_ids.mutable_data_ptr<int64_t>());
    return {out_scores, out_ids};
  }

  const int64_t round = std::min(N, kTopkDocs);
  at::Tensor block = at::empty({Q, round}, queries.options().dtype(at::kFloat));
  std::vector<std::vector<std::pair<float, int64_t>>> best(Q);
  for (int64_t d0 = 0; d0 < N; d0 += round) {
    const int64_t n = std::min(round, N - d0);
    float* s = block.mutable_data_ptr<float>();
    score_documents(p.queries, p.docs, p.offsets, d0, d0 + n, s, round);
    check_scores_finite(op, block.narrow(1, 0, n));
    at::parallel_for(0, Q, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q)
        for (int64_t j = 0; j < n; ++j) push_topk(best[q], s[q * round + j], d0 + j, k_out);
    });
  }
  float* so = out_scores.mutable_data_ptr<float>();
  int64_t* io = out_ids.mutable_data_ptr<int64_t>();
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t j = 0; j < k_out; ++j) std::tie(so[q * k_out + j], io[q * k_out + j]) = best[q][j];
  return {out_scores, out_ids};
}

// Query q against its own candidates[q, :], in groups of ~kTileTokens candidate tokens gathered per GEMM.
at::Tensor maxsim_candidates_cpu(const at::Tensor& queries, const std::optional<at::Tensor>& query_mask,
                                 const at::Tensor& docs, const at::Tensor& cu_seqlens, const at::Tensor& candidates,
                                 c10::string_view score) {
  constexpr const char* op = "maxsim_candidates";
  const MaxSimArgs args = check_maxsim_args(op, queries, query_mask, docs, cu_seqlens, score);
  check_maxsim_candidates(candidates, queries, args.num_docs);
  const int64_t Q = queries.size(0), C = candidates.size(1);
  at::Tensor out = at::empty({Q, C}, queries.options().dtype(at::kFloat));
  const Prepared p = prepare(op, queries, query_mask, docs, cu_seqlens, args.score);
  if (out.numel() == 0) return out;
  const at::Tensor cand = candidates.contiguous();
  const int64_t* ids = cand.const_data_ptr<int64_t>();
  float* o = out.mutable_data_ptr<float>();
  CandidateBuffers buffers(at::get_num_threads());
  at::parallel_for(0, Q, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) score_candidates(p, q, ids + q * C, C, o + q * C, buffers);
  });
  check_scores_finite(op, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) {
  m.impl("maxsim", &maxsim_cpu);
  m.impl("maxsim_topk", &maxsim_topk_cpu);
  m.impl("maxsim_candidates", &maxsim_candidates_cpu);
}

}  // namespace sentfuse
