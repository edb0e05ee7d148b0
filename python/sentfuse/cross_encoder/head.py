"""What predict does to the cross-encoder's logits (the pipeline's OutputHead gives them as float32): the
activation and the softmax over labels, as sentence-transformers' CrossEncoder does."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ..model.modules import torch_activation

logger = logging.getLogger(__name__)


def default_activation(num_labels: int, paths: list[str], where: str, trust_remote_code: bool = False) -> nn.Module:
    """The activation a folder names (the first torch.nn class among paths), else sentence-transformers'
    default: Sigmoid for one label, Identity for several. A class outside torch is an error with
    trust_remote_code (sentence-transformers would import and run it; sentfuse never runs a folder's code), and
    the default otherwise, as sentence-transformers falls back."""
    for path in paths:
        activation = torch_activation(path, where)
        if activation is not None:
            return activation
        if trust_remote_code:
            raise NotImplementedError(
                f"{where}: activation_fn {path!r} is not a torch.nn class; sentence-transformers would import it "
                "(trust_remote_code=True), sentfuse builds only torch.nn activations: pass activation_fn= yourself")
        logger.warning("%s: activation_fn %r is not a torch.nn class; sentfuse builds only those, so it uses "
                       "the default activation instead", where, path)
    return nn.Sigmoid() if num_labels == 1 else nn.Identity()


def activation_path(activation: Callable) -> str | None:
    """The dotted class path a saved folder records for an activation, or None for a plain function (which
    cannot be rebuilt from a name; loading then uses the default, as sentence-transformers warns)."""
    if inspect.isroutine(activation) or isinstance(activation, partial) or not isinstance(activation, nn.Module):
        logger.warning("activation_fn %r is not a torch.nn.Module: the saved folder keeps the default activation; "
                       "use a module such as torch.nn.Identity() to save it", activation)
        return None
    cls = type(activation)
    return f"{cls.__module__}.{cls.__qualname__}"


def scores_from_logits(logits: torch.Tensor, activation: Callable | None, apply_softmax: bool) -> torch.Tensor:
    """[N] scores for one label, else [N, labels]: the activation on the logits [N, labels], then a softmax
    over the labels when apply_softmax (in sentence-transformers' order)."""
    scores = activation(logits) if activation is not None else logits
    if logits.shape[1] == 1 and scores.ndim > 1:
        scores = scores.squeeze(-1)
    if apply_softmax and scores.ndim > 1:
        scores = torch.softmax(scores, dim=1)
    return scores
