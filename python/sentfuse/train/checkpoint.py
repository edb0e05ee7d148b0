"""Checkpoints are plain model folders (Encoder.save: both sentfuse and sentence-transformers load them);
resuming reads one back into the encoder being trained."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..model.backbone import backbone_state_dict
from ..model.modules import DenseModule, load_model_folder
from ..model.pretrained import load_pretrained

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


def load_weights(model: Encoder, folder: str | Path) -> None:
    """Copy the backbone and Dense weights saved in folder into model (same architecture), in place."""
    saved = load_model_folder(Path(folder))
    _, backbone = load_pretrained(saved.transformer.path)
    target = model._model
    own = backbone_state_dict(target)
    weights = {k: v for k, v in backbone.state_dict().items() if k in own}
    if own.keys() - weights.keys():
        raise ValueError(f"checkpoint {folder} lacks backbone weights {sorted(own.keys() - weights.keys())[:5]}")
    with torch.no_grad():
        for name, value in own.items():
            value.copy_(weights[name])
    live = [m for m in model._head.post if isinstance(m, DenseModule)]
    stored = [m for m in saved.modules if isinstance(m, DenseModule)]
    if len(live) != len(stored):
        raise ValueError(f"checkpoint {folder} has {len(stored)} Dense modules, the model {len(live)}")
    for mine, theirs in zip(live, stored):
        mine.load_state_dict(theirs.state_dict())
