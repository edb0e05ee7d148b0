"""`sentfuse encode --ray [ADDRESS] INPUT -o DIR`: the CLI's encode arguments, run by encode_dataset on Ray.

This module imports Ray only when a run starts, so the CLI can call split_ray_argv on every command line.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from .._checks import plural

LOCAL = "local"  # --ray without an address: a local Ray started for this run
# What `--ray X` takes as a cluster address; anything else is the INPUT that follows a bare --ray.
ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-]+:\d+|\[[0-9a-fA-F:]+\]:\d+)$")


def split_ray_argv(argv: list[str]) -> list[str]:
    """Bind `--ray X` as `--ray=X` when X is an address, else `--ray=local`, so X stays the positional INPUT."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--ray":
            follows = out[i + 1] if i + 1 < len(out) else None
            if follows is not None and ADDRESS.match(follows):
                out[i : i + 2] = [f"--ray={follows}"]
            else:
                out[i] = f"--ray={LOCAL}"
            break
    return out


def _connect(ray: Any, address: str) -> None:
    """ray.init for --ray ADDRESS, a missing cluster told in this command's terms (Ray's own message names
    flags of the `ray` command)."""
    try:
        ray.init(address=None if address == LOCAL else address)
    except ConnectionError as e:
        raise ValueError(
            f"--ray {address}: no Ray cluster found there ({type(e).__name__}). Start one (`ray start --head`) and "
            "give its address, or pass --ray without an address to start a local Ray for this run"
        ) from None


def run_encode(args: argparse.Namespace) -> int:
    """encode_dataset with the encode command's parsed arguments; args.ray is the address or 'local'."""
    if args.sparse:
        raise ValueError("--sparse does not apply with --ray: sharded encoding writes dense embeddings only; "
                         "encode sparse vectors without --ray (sentfuse encode --sparse INPUT -o OUT.npz)")
    if args.device is not None:
        raise ValueError("--device does not apply with --ray: each actor takes one GPU when the cluster has GPUs")
    if args.output.endswith(".npy"):
        raise ValueError(f"with --ray, -o names an output folder of Parquet shards, not a .npy file: {args.output}")
    if args.input == "-":
        raise ValueError("with --ray, INPUT is a file or a quoted glob of files (stdin cannot be sharded)")
    import ray

    from . import EncodeError, encode_dataset

    started = not ray.is_initialized()  # a caller's session (a test, a notebook) is used as it is
    if started:
        _connect(ray, args.ray)
    try:
        result = encode_dataset(
            args.input, args.output, args.model, text_field=args.field or "text", format=args.format,
            precision=args.precision, normalize_embeddings=args.normalize, prompt_name=args.prompt_name,
            dtype=args.dtype, max_seq_length=args.max_seq_length, batch_size=args.batch_size,
            max_batch_tokens=args.max_batch_tokens,
        )
    except EncodeError as e:
        print(f"sentfuse encode: error: {e}", file=sys.stderr)
        return 1
    finally:
        if started:
            ray.shutdown()
    print(f"encoded {plural(len(result.encoded), 'shard')}, {len(result.skipped)} already complete; "
          f"{plural(result.rows, 'row')} "
          f"-> {result.output_dir}/ (manifest.json)", file=sys.stderr)
    return 0
