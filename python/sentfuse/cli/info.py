"""`sentfuse info`: the build, torch version, devices, threads and the CPU features that pick kernel paths."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("info", help="show the build, torch version and devices").set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__, _ops, cpu_features

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        devices = f"cpu, cuda ({names})"
    else:
        devices = "cpu (no CUDA device visible)"
    print(f"sentfuse {__version__}")
    print(f"build: {'CPU+CUDA' if _ops.WITH_CUDA else 'CPU'}")
    print(f"torch: {torch.__version__}")
    print(f"devices: {devices}")
    print(f"threads: {torch.get_num_threads()}")
    print(f"cpu features: {cpu_features.describe()}")
    return 0
