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
# (benchmarks/results/cpu-xeon-amx/topk_amx_ab.txt). AVX512-BF16 CPUs without AMX take the vector blocks from
# BF16_MIN_QUERIES_VECTOR queries. threshold_pairs takes the blocks wherever there is a unit (no max_pairs), decided
# in C++ (amx::blocks_available(); SENTFUSE_CPU_BLOCKS=off turns both off, SENTFUSE_CPU_AMX=off the tiles).
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


# bf16 dot products in the vector units (AMD Zen 4 and later, Intel Cooper Lake and later): sentfuse's score
# blocks run on them where there is no AMX, at ~2x the fp32 rate (215 against ~100 GFLOP/s a core on the
# 2-core Zen 4 EPYC; csrc/cpu/amx_tiles.cpp's vector block).
BF16_VECTOR_FLAGS = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"})
# SENTFUSE_CPU_BLOCKS=off | avx512_bf16: no bf16 blocks (the ATen / fp32 paths), or the vector blocks even on
# AMX CPUs. Read once per process on the C++ side (amx_tiles.cpp), as SENTFUSE_CPU_AMX is.
BLOCKS_ENV = "SENTFUSE_CPU_BLOCKS"


def bf16_block_unit() -> str | None:
    """What scores sentfuse's bf16 blocks (the bf16 top-k scan, threshold_pairs, the bf16 MaxSim scan), as
    amx_tiles.cpp's block_unit() decides it: 'amx', 'avx512_bf16' or None."""
    choice = os.environ.get(BLOCKS_ENV, "").strip().lower()
    if choice not in ("", "off", "avx512_bf16"):
        raise ValueError(f"{BLOCKS_ENV} must be 'off' or 'avx512_bf16', got {choice!r}")
    if choice == "off":
        return None
    if choice != "avx512_bf16" and amx_kernels():
        return "amx"
    return "avx512_bf16" if BF16_VECTOR_FLAGS <= cpu_flags() else None


# Below this many queries AMX CPUs keep the fp32 tiles: a 32-query score block then runs mostly empty and
# packing the corpus to bf16 costs more than the fp32 pass (2-core AMX Xeon, 100k and 1M rows: 1 query 0.5-0.8x
# the fp32 tiles at k = 100 and on 1M rows; 16 queries 1.2-4.3x; benchmarks/results/cpu-xeon-amx/topk_amx_ab_aligned.txt).
BF16_MIN_QUERIES = 16
# The vector blocks score 32 queries at a time too, but the fp32 tiles they replace run at half their rate, not
# 1/8: on the 2-core Zen 4 EPYC, 1 query 0.96-1.19x the fp32 tiles (100k and 1M rows), 2 queries 1.37-1.53x,
# 8 queries 1.63-1.65x (medians of 5 alternated runs).
BF16_MIN_QUERIES_VECTOR = 2


def topk_bf16_default(queries: int | None = None) -> bool:
    """cosine_topk's CPU path when bf16_rescore is None: bf16 blocks + fp32 rescoring where the CPU has a unit
    for them (AMX when BF16_DEFAULT_ON_AMX, or AVX512-BF16) and, if given, at least
    BF16_MIN_QUERIES (AMX) / BF16_MIN_QUERIES_VECTOR queries; else fp32 tiles. SENTFUSE_CPU_TOPK=bf16|fp32
    overrides."""
    forced = os.environ.get(TOPK_ENV, "").strip().lower()
    if forced in ("bf16", "fp32"):
        return forced == "bf16"
    if forced:
        raise ValueError(f"{TOPK_ENV} must be 'bf16' or 'fp32', got {forced!r}")
    unit = bf16_block_unit()
    if unit is None or (unit == "amx" and not BF16_DEFAULT_ON_AMX):
        return False
    return queries is None or queries >= (BF16_MIN_QUERIES if unit == "amx" else BF16_MIN_QUERIES_VECTOR)


# SENTFUSE_CPU_MAXSIM=bf16 | fp32 forces maxsim_topk's default path on CPU (the bf16_rescore argument wins).
MAXSIM_ENV = "SENTFUSE_CPU_MAXSIM"


def maxsim_bf16_default() -> bool:
    """maxsim_topk's CPU path for float32 inputs when bf16_rescore is None: bf16 blocks with a provable bound +
    exact fp32 rescoring of the candidates where the CPU has a unit for them (AMX: about 3x less CPU time than
    the fp32 tiles on the 2-core AMX Xeon, 1,000 SQuAD-length documents; or AVX512-BF16), else fp32 tiles;
    SENTFUSE_CPU_MAXSIM=bf16|fp32 overrides (bf16 on a CPU with neither still runs the fp32 tiles)."""
    forced = os.environ.get(MAXSIM_ENV, "").strip().lower()
    if forced in ("bf16", "fp32"):
        return forced == "bf16"
    if forced:
        raise ValueError(f"{MAXSIM_ENV} must be 'bf16' or 'fp32', got {forced!r}")
    return bf16_block_unit() is not None


# The flags that decide a kernel path or a dtype's speed, in the order `sentfuse info` prints them.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def describe() -> str:
    """One line for `sentfuse info` and the benchmarks: the relevant flags found and the top-k path chosen."""
    found = [f for f in REPORTED_FLAGS if f in cpu_flags()] or ["none of " + " ".join(REPORTED_FLAGS)]
    path = "bf16 tiles + fp32 rescore" if topk_bf16_default() else "fp32 tiles"
    units = "bf16 matrix units (AMX)" if has_bf16_matrix_units() else "no bf16 matrix units"
    blocks = {"amx": "AMX tiles", "avx512_bf16": "AVX512-BF16 vectors", None: "none"}[bf16_block_unit()]
    return f"{' '.join(found)}; {units}; bf16 score blocks: {blocks}; cosine_topk CPU default: {path}"


# SENTFUSE_CPU_AMX=off turns sentfuse's own AMX kernels off (csrc/cpu/amx_tiles.cpp reads it once per process).
AMX_ENV = "SENTFUSE_CPU_AMX"


def amx_kernels() -> bool:
    """Whether threshold_pairs, the bf16 top-k scan and packed_attention run sentfuse's AMX kernels: AMX-BF16
    present and SENTFUSE_CPU_AMX not 'off' (the C++ side also needs the OS to grant the tile state, as Linux does)."""
    return has_bf16_matrix_units() and os.environ.get(AMX_ENV, "").strip().lower() != "off"
