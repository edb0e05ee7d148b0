"""Dropout for training, by sentfuse's dropout op: the mask is a hash of (seed, element index).

torch's CPU dropout draws a Bernoulli mask (bernoulli_, 14% of a training step once), keeps it for the
backward pass and multiplies twice each way. The op draws nothing and stores nothing: each element's keep bit
is a counter-based hash of one seed and its index, so the forward is one pass over x, and the backward is the
same op on the gradient with the same seed (a few bytes saved per call, not a mask). It also adds the
residual that follows every dropout of a BERT layer in the same pass. Seeds come from torch's default (CPU)
generator, so torch.manual_seed (the trainer's seed) makes a run repeat exactly. An element is kept when its
32 hash bits clear round(p * 2**32): the keep probability is 1 - p within 2**-33.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _ops

_SEED_RANGE = 2**63  # seeds are drawn from [-2**63, 2**63): any int64


def draw_seed() -> int:
    """A seed from torch's default generator."""
    return int(torch.randint(-_SEED_RANGE, _SEED_RANGE - 1, (), dtype=torch.int64))


def _has_kernel(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and _ops.WITH_CUDA)


def dropout(x: torch.Tensor, p: float, training: bool, residual: torch.Tensor | None = None) -> torch.Tensor:
    """F.dropout(x, p, training) in distribution (each element zeroed with probability p, the rest scaled by
    1 / (1 - p)), plus residual when given (x's type promoted with residual's, as x + residual is)."""
    if not training or p == 0.0:
        return x if residual is None else x + residual
    if not _has_kernel(x.device) or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        out = F.dropout(x, p, training=True)
        return out if residual is None else out + residual
    return _ops.dropout(x, p, draw_seed(), residual)
