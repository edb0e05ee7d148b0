"""The `device` fixture every op test file uses: CPU always, CUDA where a GPU is visible."""

from __future__ import annotations

import pytest
import torch

from sentfuse import _ops

HAS_CUDA = torch.cuda.is_available() and _ops.WITH_CUDA
_NO_CUDA_REASON = (
    "no CUDA GPU visible" if not torch.cuda.is_available() else "sentfuse was built without CUDA kernels"
)
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason=_NO_CUDA_REASON)
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
