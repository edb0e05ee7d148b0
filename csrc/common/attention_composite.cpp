// packed_attention through ATen (see attention_composite.h).
#include "common/attention_composite.h"

#include <ATen/ATen.h>

namespace sentfuse {

at::Tensor packed_attention_composite(const at::Tensor& qkv, const at::Tensor& lengths, double scale,
                                      const PackedAttentionArgs& args) {
  const int64_t rows = args.rows, width = args.width, heads = args.heads, D = args.head_size;
  // [3, rows, heads, width, D] views of q, k, v: SDPA reads strided heads
  const at::Tensor parts = qkv.view({rows, width, 3, heads, D}).permute({2, 0, 3, 1, 4});
  const at::Tensor positions = at::arange(width, lengths.options().dtype(at::kLong));
  const at::Tensor valid = positions.unsqueeze(0).lt(lengths.to(at::kLong).unsqueeze(1));  // [rows, width]
  const at::Tensor context = at::scaled_dot_product_attention(parts[0], parts[1], parts[2],
                                                              valid.view({rows, 1, 1, width}), 0.0, false, scale);
  // a row without valid keys softmaxes over nothing (NaN): every padded query is zeroed, those rows included
  return context.transpose(1, 2)
      .reshape({rows, width, heads * D})
      .masked_fill(valid.logical_not().unsqueeze(-1), 0)
      .to(args.out_dtype);
}

}  // namespace sentfuse
