// A query's running top-k on the CPU, shared by the fp32 scan (cpu/topk.cpp) and the bf16 scan
// (cpu/topk_bf16.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/bounds.h"

namespace sentfuse {

struct Candidate {
  float score;
  int64_t index;
};

// True when a ranks before b: higher score first, then lower index (stable ties).
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// A query's best-k so far: a heap whose root is the worst kept candidate.
class TopK {
 public:
  TopK(Candidate* slots, int64_t k, float floor) : slots_(slots), k_(k), floor_(floor), threshold_(floor) {}

  // Scores must exceed this to matter (the k-th best once full, else the min_score floor).
  float threshold() const { return threshold_; }
  int64_t size() const { return size_; }

  // Candidates arrive in increasing index order, so an equal score never displaces a kept one.
  void push(float score, int64_t index) {
    if (size_ < k_) {
      slots_[size_++] = {score, index};
      std::push_heap(slots_, slots_ + size_, ranks_before);
      if (size_ == k_) threshold_ = std::max(floor_, slots_[0].score);
    } else if (score > slots_[0].score) {
      std::pop_heap(slots_, slots_ + size_, ranks_before);
      slots_[size_ - 1] = {score, index};
      std::push_heap(slots_, slots_ + size_, ranks_before);
      threshold_ = std::max(floor_, slots_[0].score);
    }
  }

 private:
  Candidate* slots_;
  int64_t k_;
  int64_t size_ = 0;
  float floor_;
  float threshold_;
};

// Largest float below x: a strict `s > floor` then keeps every s >= x.
inline float strict_floor(double x) {
  return std::nextafter(fp32_bound(x), -std::numeric_limits<float>::infinity());
}

}  // namespace sentfuse
