"""What this CPU offers the kernels, read once at run time: the one place that decides the CPU's default paths.

`cpu_flags()` reads the x86 feature flags Linux reports (/proc/cpuinfo); elsewhere it is empty and every
default stays on the fp32 path. Tests monkeypatch `cpu_flags` to pin the choice per feature set.
"""

from __future__ import annotations

import functools
import os

# bf16 matrix units: Intel AMX. AVX512-BF16 alone (vector dot products) is not counted: there the bf16 GEMM
# is ~2x fp32 at best and the fp32 path stays.
BF16_MATRIX_FLAGS = frozenset({"amx_bf16", "amx_tile"})
# SENTFUSE_CPU_TOPK=bf16 | fp32 forces cosine_topk's default path on CPU (the bf16_rescore argument wins).
TOPK_ENV = "SENTFUSE_CPU_TOPK"
# Whether AMX CPUs take the bf16 path by default. On: there the scan runs on sentfuse's own AMX micro-kernel
# (csrc/cpu/amx_tiles.cpp): 2.6-3.9x the fp32 tiles with 2 threads on the 2-core AMX Xeon, shared at load 15
# (benchmarks/results/cpu-xeon-amx/topk_amx_ab.txt). threshold_pairs takes the AMX blocks on every AMX CPU
# (no max_pairs), decided in C++ (amx::available(); SENTFUSE_CPU_AMX=off turns both off).
BF16_DEFAULT_ON_AMX = True


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16)."""
    return BF16_MATRIX_FLAGS <= cpu_flags()


# Below this many queries AMX CPUs keep the fp32 tiles: a 32-query score block then runs mostly empty and
# packing the corpus to bf16 costs more than the fp32 pass (2-core AMX Xeon, 100k and 1M rows: 1 query 0.5-0.8x
# the fp32 tiles at k = 100 and on 1M rows; 16 queries 1.2-4.3x; benchmarks/results/cpu-xeon-amx/topk_amx_ab_aligned.txt).
BF16_MIN_QUERIES = 16


def topk_bf16_default(queries: int | None = None) -> bool:
    """cosine_topk's CPU path when bf16_rescore is None: bf16 tiles + fp32 rescoring on bf16 matrix units
    (when BF16_DEFAULT_ON_AMX and, if given, at least BF16_MIN_QUERIES queries), else fp32 tiles;
    SENTFUSE_CPU_TOPK=bf16|fp32 overrides."""
    forced = os.environ.get(TOPK_ENV, "").strip().lower()
    if forced in ("bf16", "fp32"):
        return forced == "bf16"
    if forced:
        raise ValueError(f"{TOPK_ENV} must be 'bf16' or 'fp32', got {forced!r}")
    enough = queries is None or queries >= BF16_MIN_QUERIES
    return BF16_DEFAULT_ON_AMX and has_bf16_matrix_units() and enough


# SENTFUSE_CPU_MAXSIM=bf16 | fp32 forces maxsim_topk's default path on CPU (the bf16_rescore argument wins).
MAXSIM_ENV = "SENTFUSE_CPU_MAXSIM"


def maxsim_bf16_default() -> bool:
    """maxsim_topk's CPU path for float32 inputs when bf16_rescore is None: bf16 tiles on the AMX units with a
    provable bound + exact fp32 rescoring of the candidates where the CPU has bf16 matrix units (about 3x less
    CPU time than the fp32 tiles on the 2-core AMX Xeon, 1,000 SQuAD-length documents), else fp32 tiles; SENTFUSE_CPU_MAXSIM=bf16|fp32 overrides (bf16 on a
    CPU without AMX still runs the fp32 tiles: the scan needs the tile registers)."""
    forced = os.environ.get(MAXSIM_ENV, "").strip().lower()
    if forced in ("bf16", "fp32"):
        return forced == "bf16"
    if forced:
        raise ValueError(f"{MAXSIM_ENV} must be 'bf16' or 'fp32', got {forced!r}")
    return has_bf16_matrix_units()


# The flags that decide a kernel path or a dtype's speed, in the order `sentfuse info` prints them.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def describe() -> str:
    """One line for `sentfuse info` and the benchmarks: the relevant flags found and the top-k path chosen."""
    found = [f for f in REPORTED_FLAGS if f in cpu_flags()] or ["none of " + " ".join(REPORTED_FLAGS)]
    path = "bf16 tiles + fp32 rescore" if topk_bf16_default() else "fp32 tiles"
    units = "bf16 matrix units (AMX)" if has_bf16_matrix_units() else "no bf16 matrix units"
    return f"{' '.join(found)}; {units}; cosine_topk CPU default: {path}"


# SENTFUSE_CPU_AMX=off turns sentfuse's own AMX kernels off (csrc/cpu/amx_tiles.cpp reads it once per process).
AMX_ENV = "SENTFUSE_CPU_AMX"


def amx_kernels() -> bool:
    """Whether threshold_pairs, the bf16 top-k scan and packed_attention run sentfuse's AMX kernels: AMX-BF16
    present and SENTFUSE_CPU_AMX not 'off' (the C++ side also needs the OS to grant the tile state, as Linux does)."""
    return has_bf16_matrix_units() and os.environ.get(AMX_ENV, "").strip().lower() != "off"
