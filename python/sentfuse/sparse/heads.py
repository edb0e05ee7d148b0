"""The routes of a sparse model on the encode pipeline (encode/pipeline.py): a SPLADE backbone whose vocabulary
head runs fused in splade_pool, or a SparseStaticEmbedding's token weights. Each route is a PipelineOwner
(tokenize -> plan -> run -> head -> finish); the heads here are what the sparse model type adds."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import _ops
from ..encode.owner import PipelineOwner
from ..encode.pipeline import EncodeRequest, OutputHead
from ..encode.run import RunOptions
from ..model.backbone import cpu_has_native, prepare_backbone
from ..model.modules import ModelFolderError
from ..model.options import LoadOptions
from ..model.pretrained import add_lowercasing, load_pretrained, set_token_limit
from .folder import SpladeRoute, StaticRoute
from .vectors import SparseRows


class SpladeHead:
    """Pipeline head: a masked-LM's vocabulary projection, activation and pooling, run in splade_pool tile by
    tile, so the [batch, tokens, vocab] logits are never materialized."""

    in_graph = False  # splade_pool reads each row's token count on the host: no CUDA graph can hold it

    def __init__(self, decoder: nn.Linear, activation: str, pooling: str, where: str) -> None:
        self.weight = decoder.weight.detach()  # [V, H]
        self.bias = None if decoder.bias is None else decoder.bias.detach()  # [V]
        self.activation, self.pooling, self.where = activation, pooling, where
        self.dtype = self.weight.dtype  # the model's, kept when a move to another device undoes the widening
        self._widen_on_cpu()

    def _widen_on_cpu(self) -> None:
        """A half-precision projection on a CPU without instructions for its products multiplies in float32:
        torch emulates 16-bit matrix products there, and the vocabulary projection is most of a SPLADE model's
        work (bf16 encode 2.7x slower than float32 on an AVX2 EPYC before this). Inputs are widened to match."""
        if self.weight.device.type == "cpu" and not cpu_has_native(self.weight.dtype):
            self.weight = self.weight.float()
            self.bias = None if self.bias is None else self.bias.float()

    @property
    def dim(self) -> int:
        return self.weight.shape[0]

    def to(self, device: torch.device) -> None:
        self.weight = self.weight.to(device, self.dtype)
        self.bias = None if self.bias is None else self.bias.to(device, self.dtype)
        self._widen_on_cpu()

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, skip_tokens: int) -> torch.Tensor:
        """[B, V] fp32 SPLADE vectors from the head's transform output hidden [B, L, H] and mask [B, L]."""
        if hidden.shape[-1] != self.weight.shape[1]:
            raise ModelFolderError(f"{self.where}: the masked-LM head gives {hidden.shape[-1]} features, but its "
                                   f"vocabulary projection expects {self.weight.shape[1]}")
        hidden = hidden.to(self.weight.dtype)  # a half backbone's output where _widen_on_cpu widened the projection
        return _ops.splade_pool(hidden, mask, self.weight, self.bias, self.activation, self.pooling)

    def finish(self, x: torch.Tensor, dim: int, normalize: bool) -> torch.Tensor:
        return x


class StaticBag(nn.Module):
    """SparseStaticEmbedding as the route's model: weight[token] for every distinct valid token of a text."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [V] fp32

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, V] vectors from ids and mask [B, L]."""
        present = torch.zeros(input_ids.shape[0], self.weight.shape[0], device=input_ids.device)
        present.scatter_reduce_(1, input_ids, (attention_mask != 0).float(), reduce="amax")
        return present * self.weight


def _detach_module(root: nn.Module, target: nn.Module) -> None:
    """Replace `target` inside `root` by an identity, so root's forward returns target's input."""
    for module in root.modules():
        for name, child in module.named_children():
            if child is target:
                setattr(module, name, nn.Identity())
                return
    raise ModelFolderError(f"{type(root).__name__}: its output embeddings are not one of its submodules")


class RouteModel(PipelineOwner):
    """One route: its tokenizer, model (_model, run by _forward) and head on the encode pipeline."""

    _forward: Callable[[dict[str, torch.Tensor]], Any]

    def _start(self, tokenizer: Any, model: nn.Module, head: Any) -> None:
        self._tokenizer, self._model, self._head = tokenizer, model, head
        self._run_options = RunOptions.from_env()
        self._pipeline = None

    @property
    def vocab_size(self) -> int:
        return self._head.dim

    @property
    def transformers_model(self) -> nn.Module | None:
        """The Hugging Face backbone, None for a route without one."""
        return None

    def to(self, device: torch.device) -> None:
        self._model.to(device)
        self._pipeline = None

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, V] fp32 vectors for a batch of padded token ids on the route's device."""
        return self._head(self._forward(features), features["attention_mask"], 0)

    def encode(self, texts: list[str], batch_size: int | None, max_batch_tokens: int | None,
               max_active_dims: int | None, progress: bool) -> SparseRows:
        """The texts' vectors, each cut to its max_active_dims largest weights, batched by the pipeline."""
        rows = SparseRows(len(texts), self.vocab_size, self.device)
        if texts:
            self._own_pipeline().collect(
                EncodeRequest(texts=texts, skip_tokens=0, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                              token_embeddings=False, dim=self.vocab_size, normalize=False, out_dtype=torch.float32,
                              progress=progress),
                lambda positions, x: rows.add(positions, x, max_active_dims))
        return rows


class SpladeModel(RouteModel):
    """A masked-LM backbone run up to its vocabulary projection, then SpladeHead."""

    def __init__(self, route: SpladeRoute, device: torch.device, max_seq_length: int | None,
                 options: LoadOptions) -> None:
        tokenizer, model = load_pretrained(route.path, options.dtype, options, "AutoModelForMaskedLM")
        set_token_limit(tokenizer, model.config, max_seq_length, route.max_seq_length)
        if route.do_lower_case:
            add_lowercasing(tokenizer)
        model = model.eval().to(device)
        decoder = model.get_output_embeddings()
        if not isinstance(decoder, nn.Linear):
            raise ModelFolderError(f"{route.path}: the masked-LM head must end in a Linear vocabulary projection, "
                                   f"got {type(decoder).__name__}")
        head = SpladeHead(decoder, route.activation, route.pooling, str(route.path))
        _detach_module(model, decoder)
        self._forward_args = set(inspect.signature(model.forward).parameters)
        self._start(tokenizer, prepare_backbone(model), head)

    @property
    def transformers_model(self) -> nn.Module:
        return self._model

    def to(self, device: torch.device) -> None:
        super().to(device)
        self._head.to(device)

    def _forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The masked-LM head's transform output [B, L, H] (its decoder was detached)."""
        return self._run_model(features).logits


class StaticModel(RouteModel):
    """SparseStaticEmbedding: a bag of token weights over the text's tokens, without special tokens."""

    special_tokens = False

    def __init__(self, route: StaticRoute, device: torch.device, options: LoadOptions) -> None:
        tokenizer = _load_tokenizer(route.path, options)
        if route.weight.shape[0] < len(tokenizer):
            raise ModelFolderError(f"{route.path}: {route.weight.shape[0]} weights for a tokenizer of "
                                   f"{len(tokenizer)} tokens")
        self._start(tokenizer, StaticBag(route.weight).to(device), OutputHead(route.weight.shape[0]))

    def _forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._model(features["input_ids"], features["attention_mask"])


def _load_tokenizer(path, options: LoadOptions) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=options.trust_remote_code, **options.tokenizer_kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise ModelFolderError(f"cannot load the tokenizer in {path}: {e}") from e
