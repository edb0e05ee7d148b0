"""The sentfuse command: `sentfuse encode` (texts -> .npy embeddings), `sentfuse search`, `sentfuse mine`
(near-duplicate pairs), `sentfuse cluster` (communities), `sentfuse info`, `sentfuse rerank` (cross-encoder
scores), `sentfuse train` (fine-tuning). One module per command."""

from __future__ import annotations

import argparse
import os
import sys

from ..distributed.cli import split_ray_argv
from . import encode, info, mine, rerank, search, train
from .errors import CommandError

__all__ = ["CommandError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="sentfuse", description="Fast sentence embeddings.")
    parser.add_argument("--version", action="version", version=f"sentfuse {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    encode.add_parser(commands)
    search.add_parser(commands)
    mine.add_parsers(commands)
    info.add_parser(commands)
    rerank.add_parser(commands)
    train.add_parser(commands)
    return parser


def _message(error: Exception) -> str:
    """One line for the user: an OSError by its file and reason rather than its errno."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)


def _silence_stdout() -> None:
    """After the reader of our output went away (`... | head`), let the exit flush go nowhere quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(split_ray_argv(sys.argv[1:] if argv is None else argv))
    try:
        return args.run(args)
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except (CommandError, ValueError, TypeError, OSError) as e:
        print(f"sentfuse {args.command}: error: {_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
