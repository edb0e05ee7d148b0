// 16-bit tensors widened to fp32 on the CPU (load_float.h's loads, in parallel chunks). Into a reused buffer where
// it can be: widening a 100k x 384 bf16 corpus into fresh memory took 75-88 ms on the 2-core Zen 4 (ATen's copy or
// this one alike), most of it the kernel's page faults on the new 150 MB, 6-8x the fp32 tiles' whole scan.
#pragma once

#include <ATen/core/Tensor.h>

namespace sentfuse {

// x [..] fp32 / fp16 / bf16 -> contiguous fp32 with x's shape (x itself when it already is).
at::Tensor widen_to_float(const at::Tensor& x);

// x [..] fp16 / bf16 into out, contiguous fp32 with x's number of values; returns out viewed with x's shape.
at::Tensor widen_into(const at::Tensor& x, const at::Tensor& out);

}  // namespace sentfuse
