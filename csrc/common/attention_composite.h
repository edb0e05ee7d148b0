// packed_attention as ATen ops (at::scaled_dot_product_attention with the lengths' key-padding mask): the CUDA
// implementation, and the CPU one wherever the AMX kernel does not apply (another dtype, head size or CPU).
#pragma once

#include <ATen/core/Tensor.h>

#include "common/checks.h"

namespace sentfuse {

// qkv [rows, width, 3 * heads * head_size], lengths [rows] (checked: check_packed_attention_args) ->
// [rows, width, heads * head_size] in args.out_dtype, zeros at the padded queries.
at::Tensor packed_attention_composite(const at::Tensor& qkv, const at::Tensor& lengths, double scale,
                                      const PackedAttentionArgs& args);

}  // namespace sentfuse
