// CUDA packed_attention: the ATen composite (at::scaled_dot_product_attention picks its flash or memory-efficient
// kernel), on qkv's device and current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/attention_composite.h"
#include "common/checks.h"

namespace sentfuse {
namespace {

at::Tensor packed_attention_cuda(const at::Tensor& qkv, const at::Tensor& lengths, int64_t heads, double scale,
                                 std::optional<at::ScalarType> out_dtype) {
  const PackedAttentionArgs args = check_packed_attention_args(qkv, lengths, heads, scale, out_dtype);
  const c10::cuda::CUDAGuard guard(qkv.device());
  if (qkv.numel() == 0) return at::zeros({args.rows, args.width, heads * args.head_size}, qkv.options().dtype(args.out_dtype));
  return packed_attention_composite(qkv, lengths, scale, args);
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CUDA, m) { m.impl("packed_attention", &packed_attention_cuda); }

}  // namespace sentfuse
