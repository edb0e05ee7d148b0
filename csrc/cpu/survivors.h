// The candidates of one query that may still reach its top-k: ids with the upper bounds of their scores, in the
// order offered, pruned against a bar that only rises (cosine_topk's bf16 scan, MaxSim's bf16 scan).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sentfuse {

struct Survivors {
  static constexpr size_t kFirstPrune = 4096;  // no prune before this many candidates

  std::vector<int64_t> ids;
  std::vector<float> upper;
  size_t prune_at = kFirstPrune;

  void push(int64_t id, float upper_bound) {
    ids.push_back(id);
    upper.push_back(upper_bound);
  }

  // Past prune_at candidates, drops those whose upper bound is below bar (their order kept) and re-arms at
  // twice what was kept: each prune then reads at least as many new candidates as kept ones, so pruning stays
  // linear in the candidates offered.
  void prune_if_due(float bar) {
    if (ids.size() <= prune_at) return;
    size_t kept = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
      if (upper[t] < bar) continue;
      ids[kept] = ids[t];
      upper[kept++] = upper[t];
    }
    ids.resize(kept);
    upper.resize(kept);
    prune_at = std::max(kFirstPrune, 2 * kept);
  }
};

}  // namespace sentfuse
