"""Beyond one machine: encode, search and mine sharded corpora on a Ray cluster (pip install 'sentfuse[ray]').

encode_dataset writes Parquet embedding shards plus a manifest, exactly once and resumably; search and
threshold_pairs run over those shards and give the single-machine answers on their concatenation.
Ray is imported on first use of these names, so `sentfuse.distributed.cli` loads without it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "EncodeError": "encode", "EncodeResult": "encode", "encode_dataset": "encode",
    "locate": "sharded", "read_pairs": "sharded", "search": "sharded", "threshold_pairs": "sharded",
    "InputError": "shards",
}
__all__ = ["EncodeError", "EncodeResult", "InputError", "encode_dataset", "locate", "read_pairs", "search",
           "threshold_pairs"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        import ray.data  # noqa: F401
    except ImportError as e:  # an optional dependency: say how to get it
        raise ImportError("sentfuse.distributed needs Ray Data: pip install 'sentfuse[ray]'") from e
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
