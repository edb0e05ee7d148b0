// CPU packed_attention (semantics: python/sentfuse/reference.py). bf16 inputs with whole tile depths of head size
// run the AMX kernel (cpu/attention_amx.h) where the CPU has AMX; everything else the ATen composite, which is
// what the model ran before this op (the model takes the op only where the AMX kernel applies).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/attention_composite.h"
#include "common/checks.h"

#ifdef SENTFUSE_WITH_AMX
#include "cpu/amx_tiles.h"
#include "cpu/attention_amx.h"
#endif

namespace sentfuse {
namespace {

bool amx_applies(const at::Tensor& qkv, const PackedAttentionArgs& args) {
#ifdef SENTFUSE_WITH_AMX
  return qkv.scalar_type() == at::kBFloat16 && amx::attention_head_size_fits(args.head_size) && amx::available();
#else
  return false;
#endif
}

at::Tensor packed_attention_cpu(const at::Tensor& qkv, const at::Tensor& lengths, int64_t heads, double scale,
                                std::optional<at::ScalarType> out_dtype) {
  const PackedAttentionArgs args = check_packed_attention_args(qkv, lengths, heads, scale, out_dtype);
  if (qkv.numel() == 0) return at::zeros({args.rows, args.width, heads * args.head_size}, qkv.options().dtype(args.out_dtype));
  if (!amx_applies(qkv, args)) return packed_attention_composite(qkv, lengths, scale, args);
#ifdef SENTFUSE_WITH_AMX
  const at::Tensor input = qkv.contiguous();
  const at::Tensor valid = lengths.to(at::kLong).contiguous();
  at::Tensor out = at::empty({args.rows, args.width, heads * args.head_size}, qkv.options().dtype(args.out_dtype));
  amx::attention_bf16(reinterpret_cast<const uint16_t*>(input.const_data_ptr<at::BFloat16>()),
                      valid.const_data_ptr<int64_t>(), args.rows, args.width, heads, args.head_size,
                      static_cast<float>(scale), out.data_ptr(), args.out_dtype == at::kFloat);
  return out;
#endif
  return {};  // not reached: amx_applies is false without AMX
}

}  // namespace

TORCH_LIBRARY_IMPL(sentfuse, CPU, m) { m.impl("packed_attention", &packed_attention_cpu); }

}  // namespace sentfuse
