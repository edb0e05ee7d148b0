"""Switching an Encoder between inference (its normal state) and training, and what training touches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from torch import nn

from ..model.backbone import repack_linears, unpack_linears
from ..model.static import StaticBackbone

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


def trainable_modules(model: Encoder) -> nn.ModuleList:
    """The backbone and the Dense layers of the head: every parameter training updates."""
    return nn.ModuleList([model._model, *(m for m in model._head.post if isinstance(m, nn.Module))])


@contextmanager
def training_mode(model: Encoder) -> Iterator[nn.ModuleList]:
    """Inside: plain nn.Linear layers (the inference path prepacks weights, which training changes), dropout
    on. After: eval mode, layers packed again from the trained weights, encode's cached pipeline rebuilt."""
    modules = trainable_modules(model)
    unpack_linears(model._model)
    table = getattr(model._model, "table", None) if isinstance(model._model, StaticBackbone) else None
    if table is not None:  # a static model's embedding table is its only weight: frozen for inference only
        table.requires_grad_(True)
    modules.train()
    try:
        yield modules
    finally:
        modules.eval()
        if table is not None:
            table.requires_grad_(False)
        model._model = repack_linears(model._model)
        model._pipeline = None


@contextmanager
def inference_mode(model: Encoder) -> Iterator[None]:
    """Dropout off for an evaluation in the middle of training, the previous mode restored after."""
    modules = trainable_modules(model)
    was_training = model._model.training
    modules.eval()
    try:
        yield
    finally:
        modules.train(was_training)
