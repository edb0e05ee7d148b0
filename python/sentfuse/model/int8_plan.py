"""How the int8-dynamic compute mode multiplies each linear layer, decided once at load from one calibration forward.

int8 with one activation scale per tensor loses most where a few input channels are far larger than the rest.
Measured on all-MiniLM-L6-v2 (min cosine to float32 over 300 SQuAD questions, each kind of product int8 alone):
QKV 0.9981, FFN1 0.9970, FFN2 0.9962, attention output 0.9999; all of them 0.991. Two remedies, per layer:

- A product fed by a LayerNorm (QKV, FFN1) gets SmoothQuant's per-input-channel factors s = amax_x^a / amax_w^(1-a):
  the int8 weight is W·diag(s) and the input is divided by s before its per-tensor quantization, so the outlier
  channels no longer set the scale (QKV 0.9996, FFN1 0.9994). BERT puts LayerNorm after the residual add, so the
  LayerNorm's output is also the next residual and the factors cannot be folded into its weights: the division
  happens inside the input's quantization pass instead (sentfuse's smooth_quantize), at no extra pass.
- A product fed by an activation (FFN2, whose GELU input is heavy-tailed; smoothing made it worse: 0.988) runs
  the bf16-mixed mode's bfloat16 product where the CPU has one, else int8 with per-row input scales (0.9989;
  oneDNN's int8 kernels take one input scale, so backbone.Int8Weight applies the rows' scales after them).
Together: 0.998 (bench_encode --compute-modes gives the full figures; on an AVX2 CPU, 7-bit weights and FFN2 per-row
int8: 0.9966). BERT's query, key and value share their input and run as one int8 product (backbone._int8_qkv,
smoothed for the stacked weight from the same calibration maxima, kept in LayerPlan.input_amax). A block computing
activation(linear(x)) (BERT's intermediate; found in the same forward) then runs the activation in the int8 product's
epilogue (backbone.Int8Activated).

The activation maxima come from the model itself on seeded random tokens of its own vocabulary, not from a data
set: an installed package has no shipped text, and the outlier channels are the model's (random-token
calibration measured 0.9982 against 0.9992 with 400 STS-B train sentences). The same forward tells which module
produced each linear layer's input (by tensor identity), so the plan needs no knowledge of the model's classes.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

# SmoothQuant's migration strength: 0.5 and 0.75 measured alike on MiniLM (0.9982 / 0.9985); 0.5 moves less of the
# activations' range into the weights, which keeps the per-channel weight scales tame on other models too.
ALPHA = 0.5
# The calibration forward: rows x tokens of random ids, seeded so a model's plan is the same on every load.
CALIBRATION_SHAPE = (8, 32)
SEED = 0
# Random ids are drawn from above the vocabulary's first ids, where BERT-family vocabularies keep special and
# unused tokens.
FIRST_ID_SHARE = 0.1


# Modules that hand on their input in inference (a copy or the tensor itself): never a linear layer's producer.
PASS_THROUGH = (nn.Dropout, nn.Identity)


class Int8Role(enum.Enum):
    """How one linear layer multiplies in the int8-dynamic mode."""

    SMOOTHED = "int8, smoothed input"  # fed by a LayerNorm
    PLAIN = "int8"  # fed by anything else measured benign (attention's context)
    # fed by an activation function: bfloat16, or int8 with per-row input scales where the CPU has no bf16 product
    ACTIVATED = "bfloat16 or per-row int8"


@dataclass(frozen=True)
class LayerPlan:
    role: Int8Role
    smooth: torch.Tensor | None = None  # [in_features] float32 factors, SMOOTHED only
    input_amax: torch.Tensor | None = None  # [in_features]: the input's largest magnitude per channel, SMOOTHED only


def smoothing_factors(act_amax: torch.Tensor, weight: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors for a linear layer: amax_x^alpha / amax_w^(1 - alpha), where
    act_amax [in] is the input's largest magnitude per channel and weight [out, in]; channels that were never
    non-zero keep factor 1."""
    w_amax = weight.detach().abs().amax(dim=0).float()
    a_amax = act_amax.float()
    factors = a_amax.pow(alpha) / w_amax.pow(1 - alpha)
    usable = (a_amax > 0) & (w_amax > 0) & torch.isfinite(factors)
    return torch.where(usable, factors, torch.ones_like(factors))


def _calibration_ids(model: nn.Module) -> torch.Tensor | None:
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 2:
        return None
    low = int(vocab * FIRST_ID_SHARE)
    return torch.randint(low, vocab, CALIBRATION_SHAPE, generator=torch.Generator().manual_seed(SEED))


@dataclass(frozen=True)
class Int8Plan:
    layers: dict[nn.Linear, LayerPlan]  # every nn.Linear of the model
    # modules computing activation(linear(x)) and nothing else (BERT's intermediate block): (linear, activation)
    activated: dict[nn.Module, tuple[nn.Linear, nn.Module]]


def plan(model: nn.Module) -> Int8Plan:
    """Each nn.Linear of model and how the int8-dynamic mode multiplies it, and the blocks that only activate a
    linear's output, from one float32 forward on random tokens. A model that cannot run that forward (no
    vocabulary size, other inputs) gets plain int8 everywhere."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    ids = _calibration_ids(model)
    if ids is None:
        return Int8Plan({lin: LayerPlan(Int8Role.PLAIN) for lin in linears}, {})
    producers: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # id(output) -> (module, output kept alive)
    seen: dict[nn.Linear, tuple[torch.Tensor, nn.Module | None]] = {}
    flow: dict[nn.Module, tuple[int, int]] = {}  # module -> (id(input), id(output)), tensors kept alive in `alive`
    alive: list[torch.Tensor] = []

    def record_flow(module: nn.Module, inputs: tuple, output: object) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            flow[module] = (id(inputs[0]), id(output))
            alive.extend((inputs[0], output))

    def record_output(module: nn.Module, inputs: tuple, output: object) -> None:
        passes_through = any(output is x for x in inputs)  # eval-mode dropout, identity: keep the real producer
        if isinstance(output, torch.Tensor) and not passes_through and not isinstance(module, PASS_THROUGH):
            producers.setdefault(id(output), (module, output))  # the innermost module (its hook runs first)

    def record_input(linear: nn.Linear, inputs: tuple) -> None:
        x = inputs[0]
        amax = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)
        before, _ = seen.get(linear, (amax, None))
        producer = producers.get(id(x), (None, None))[0]
        seen[linear] = (torch.maximum(before, amax), producer)

    hooks = [m.register_forward_hook(record_output) for m in model.modules() if type(m) is not nn.Linear]
    hooks += [lin.register_forward_pre_hook(record_input) for lin in linears]
    hooks += [m.register_forward_hook(record_flow) for m in model.modules()]
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except (TypeError, ValueError, RuntimeError) as e:
        logger.debug("int8 calibration forward failed (%s): plain int8 layers", e)
        seen.clear()
    finally:
        for hook in hooks:
            hook.remove()
    layers = {lin: _layer_plan(lin, *seen[lin]) if lin in seen else LayerPlan(Int8Role.PLAIN) for lin in linears}
    return Int8Plan(layers, _activated_blocks(model, flow))


def _activated_blocks(model: nn.Module, flow: dict[nn.Module, tuple[int, int]]) -> dict[nn.Module, tuple]:
    """Modules whose two children are a linear and a parameter-free activation, seen computing act(linear(x))."""
    found = {}
    for block in model.modules():
        children = list(block.children())
        linear = next((c for c in children if type(c) is nn.Linear), None)
        act = next((c for c in children if c is not linear), None)
        if len(children) != 2 or linear is None or any(True for _ in act.parameters()):
            continue
        if all(m in flow for m in (block, linear, act)) and flow[block][0] == flow[linear][0] \
                and flow[act][0] == flow[linear][1] and flow[block][1] == flow[act][1]:
            found[block] = (linear, act)
    return found


def _layer_plan(linear: nn.Linear, act_amax: torch.Tensor, producer: nn.Module | None) -> LayerPlan:
    if isinstance(producer, nn.LayerNorm):
        return LayerPlan(Int8Role.SMOOTHED, smoothing_factors(act_amax, linear.weight), act_amax)
    if producer is not None and not any(True for _ in producer.parameters()):  # a parameter-free activation
        return LayerPlan(Int8Role.ACTIVATED)
    return LayerPlan(Int8Role.PLAIN)
