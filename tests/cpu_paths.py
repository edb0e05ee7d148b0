"""What the tests of a CPU path choice share: the CPU feature sets (flags, environment value, whether the bf16
path is chosen) and a spy that records the bf16_rescore argument each call of an op receives."""

from __future__ import annotations

import types

import pytest
import torch

from sentfuse import cpu_features

VECTOR_BF16 = {"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16", "avx512_vnni"}
FEATURE_SETS = pytest.mark.parametrize(
    "flags,env,chosen",
    [({"avx2", "fma"}, "", False),  # AVX2 only: fp32
     (VECTOR_BF16, "", True),  # bf16 dot products in the vector units (Zen 4): the vector blocks
     ({"avx512f", "avx512_bf16"}, "", False),  # without the AVX-512 subsets the blocks use: fp32
     ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}, "", True),  # AMX: the bf16 path
     ({"avx512f", "amx_bf16", "amx_tile"}, "fp32", False),  # forced either way
     ({"avx2"}, "bf16", True)],
    ids=["avx2", "avx512-bf16", "avx512-bf16-partial", "amx", "amx-forced-fp32", "avx2-forced-bf16"],
)


def spy_on_path(monkeypatch, flags: set[str], env_name: str, env: str, op_name: str) -> list[bool]:
    """Pretends the CPU has `flags` and sets env_name to env; returns the list that collects the bf16_rescore
    argument of every later call of torch.ops.sentfuse.<op_name>."""
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setenv(env_name, env)
    monkeypatch.delenv(cpu_features.BLOCKS_ENV, raising=False)
    monkeypatch.delenv(cpu_features.AMX_ENV, raising=False)
    seen: list[bool] = []
    real = getattr(torch.ops.sentfuse, op_name).default
    spy = types.SimpleNamespace(default=lambda *a, **kw: seen.append(kw["bf16_rescore"]) or real(*a, **kw))
    monkeypatch.setattr(torch.ops.sentfuse, op_name, spy)
    return seen
