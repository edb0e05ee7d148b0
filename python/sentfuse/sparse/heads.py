"""What runs one route of a sparse model: a SPLADE backbone whose vocabulary head is fused into splade_pool,
or a SparseStaticEmbedding's token weights."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .. import _ops
from ..model.backbone import prepare_backbone
from ..model.modules import ModelFolderError
from ..model.options import LoadOptions
from ..model.pretrained import UNBOUNDED_LENGTH, load_pretrained
from .folder import SpladeRoute, StaticRoute


def _load_tokenizer(path, lowercase: bool, options: LoadOptions) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=options.trust_remote_code, **options.tokenizer_kwargs
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelFolderError(f"cannot load the tokenizer in {path}: {e}") from e
    if lowercase:
        _add_lowercasing(tokenizer)
    return tokenizer


def _add_lowercasing(tokenizer: Any) -> None:
    from tokenizers import normalizers

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    if current is None or current.normalize_str("A") != "a":
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([current] if current else []))


def _detach_module(root: nn.Module, target: nn.Module) -> None:
    """Replace `target` inside `root` by an identity, so root's forward returns target's input."""
    for module in root.modules():
        for name, child in module.named_children():
            if child is target:
                setattr(module, name, nn.Identity())
                return
    raise ModelFolderError(f"{type(root).__name__}: its output embeddings are not one of its submodules")


class SpladeHead:
    """A masked-LM backbone run up to its vocabulary projection; the projection, activation and pooling run
    in splade_pool, tile by tile, so the [batch, tokens, vocab] logits are never materialized."""

    def __init__(self, route: SpladeRoute, device: torch.device, dtype: torch.dtype | None,
                 max_seq_length: int | None, options: LoadOptions | None = None) -> None:
        self.route = route
        self.tokenizer, model = load_pretrained(route.path, dtype, options, "AutoModelForMaskedLM")
        if route.do_lower_case:
            _add_lowercasing(self.tokenizer)
        model = model.eval().to(device)
        decoder = model.get_output_embeddings()
        if not isinstance(decoder, nn.Linear):
            raise ModelFolderError(f"{route.path}: the masked-LM head must end in a Linear vocabulary projection, "
                                   f"got {type(decoder).__name__}")
        self.weight = decoder.weight.detach()  # [V, H]
        self.bias = None if decoder.bias is None else decoder.bias.detach()  # [V]
        _detach_module(model, decoder)
        self.model = prepare_backbone(model)
        self._forward_args = set(inspect.signature(model.forward).parameters)

        limit = max_seq_length or route.max_seq_length
        if limit is None:  # as sentence-transformers: the tokenizer's limit, capped by the position table
            limit = self.tokenizer.model_max_length
            positions = getattr(model.config, "max_position_embeddings", -1)
            if isinstance(positions, int) and positions > 0:
                limit = min(limit, positions)
        self.tokenizer.model_max_length = limit

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def to(self, device: torch.device) -> None:
        self.model.to(device)
        self.weight = self.weight.to(device)
        self.bias = None if self.bias is None else self.bias.to(device)

    def tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        return self.tokenizer(texts, padding=False, truncation="longest_first",
                              max_length=self.tokenizer.model_max_length)

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, L] token ids -> [B, V] fp32 SPLADE vectors."""
        inputs = {k: v for k, v in features.items() if k in self._forward_args}
        hidden = self.model(**inputs, return_dict=True).logits  # the head's transform output: [B, L, H]
        if hidden.shape[-1] != self.weight.shape[1]:
            raise ModelFolderError(f"{self.route.path}: the masked-LM head gives {hidden.shape[-1]} features, but its "
                                   f"vocabulary projection expects {self.weight.shape[1]}")
        return _ops.splade_pool(hidden, inputs["attention_mask"], self.weight, self.bias, self.route.activation,
                                self.route.pooling)


class StaticHead:
    """SparseStaticEmbedding: weight[token] for every distinct valid token of a text (no special tokens)."""

    def __init__(self, route: StaticRoute, device: torch.device, options: LoadOptions | None = None) -> None:
        self.route = route
        self.tokenizer = _load_tokenizer(route.path, False, options or LoadOptions())
        self.weight = route.weight.to(device)
        if self.weight.shape[0] < len(self.tokenizer):
            raise ModelFolderError(f"{route.path}: {self.weight.shape[0]} weights for a tokenizer of "
                                   f"{len(self.tokenizer)} tokens")

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def to(self, device: torch.device) -> None:
        self.weight = self.weight.to(device)

    def tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        limit = self.tokenizer.model_max_length
        bounded = limit < UNBOUNDED_LENGTH
        return self.tokenizer(texts, padding=False, truncation=bounded, max_length=limit if bounded else None,
                              add_special_tokens=False)

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = features["input_ids"], features["attention_mask"]
        present = torch.zeros(ids.shape[0], self.vocab_size, device=ids.device)
        present.scatter_reduce_(1, ids, (mask != 0).float(), reduce="amax")
        return present * self.weight
