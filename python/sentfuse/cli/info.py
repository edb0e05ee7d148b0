"""`sentfuse info`: the build, torch version, devices, threads, the CPU features that pick kernel paths and
the CPU compute modes with the units that run them here."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("info", help="show the build, torch version and devices").set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__, _ops, cpu_features
    from ..model import compute

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
    print(f"cpu compute modes (--dtype): {compute.describe(cpu_features.cpu_flags())}")
    return 0
