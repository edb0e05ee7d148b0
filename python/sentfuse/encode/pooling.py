"""Pool stage: token embeddings to sentence embeddings with the folder's Pooling, Dense and Normalize modules."""

from __future__ import annotations

import torch

from .. import _ops
from ..model.modules import DenseModule, ModelFolderError, NormalizeModule, PoolingModule


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels read it: a float64 model (model.to(torch.float64)) is pooled and normalized in float32."""
    return x.float() if x.dtype == torch.float64 else x


class SentenceHead:
    """The modules after the backbone. A Normalize right after single-mode Pooling runs inside the pooling
    kernel; dim is the width of what __call__ returns."""

    def __init__(self, modules: list, hidden: int, device: torch.device, dtype: torch.dtype, where: str) -> None:
        self.pooling: PoolingModule = modules[0]
        post = list(modules[1:])
        for stage in post:
            if isinstance(stage, DenseModule):
                stage.to(device=device, dtype=dtype)
        dim = len(self.pooling.modes) * hidden
        for stage in post:
            if isinstance(stage, DenseModule):
                if stage.in_features != dim:
                    raise ModelFolderError(f"{where}: a Dense module expects {stage.in_features} features but gets {dim}")
                dim = stage.out_features
        self.dim = dim
        self.fuse_normalize = len(self.pooling.modes) == 1 and bool(post) and isinstance(post[0], NormalizeModule)
        self.post = post[1:] if self.fuse_normalize else post
        last = self.post[-1] if self.post else None
        self.ends_normalized = isinstance(last, NormalizeModule) or (last is None and self.fuse_normalize)

    def to(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        for stage in self.post:
            if isinstance(stage, DenseModule):
                stage.to(device=device, dtype=dtype)

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, skip_tokens: int) -> torch.Tensor:
        """[B, dim] sentence embeddings from hidden [B, L, H] and attention_mask [B, L]."""
        pooled = [
            _ops.masked_pool(_kernel_input(hidden), mask, mode, normalize=self.fuse_normalize, skip_tokens=skip_tokens)
            for mode in self.pooling.modes
        ]
        x = (pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)).to(hidden.dtype)
        return self._project(x)

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, dim] sentence embeddings from [B, pooled width] ones pooled elsewhere, not normalized (a
        static model's bag): the fused Normalize, then the stages after it."""
        return self._project(_ops.l2_normalize(pooled) if self.fuse_normalize else pooled)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.post:
            x = _ops.l2_normalize(_kernel_input(x)).to(x.dtype) if isinstance(stage, NormalizeModule) else stage(x)
        return x

    def finish(self, x: torch.Tensor, dim: int, normalize: bool) -> torch.Tensor:
        """x cut to its first dim features, L2-normalized when normalize and not normalized already."""
        if normalize and not (self.ends_normalized and dim == self.dim):
            return _ops.l2_normalize(x, None if dim == self.dim else dim)
        return x if dim == self.dim else x[:, :dim]
