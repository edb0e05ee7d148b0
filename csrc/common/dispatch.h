// The one dtype switch for every sentfuse kernel: fp32, fp16 and bf16 storage, fp32 arithmetic.
// The argument checks (common/checks.h) reject every other dtype, so no other kernel is ever built.
#pragma once

#include <ATen/Dispatch.h>

#define SENTFUSE_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)                       \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)   \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
