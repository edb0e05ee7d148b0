"""The sentfuse command: `sentfuse encode` (texts -> .npy embeddings) and `sentfuse info`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .quantize import PRECISIONS

ENCODE_HELP = """\
Embed one text per input item and save the embeddings as a .npy array, row i for item i.

Input formats:
  text   one item per line (the default; also for stdin). Only the line break is removed. Blank
         lines are kept and embedded as empty strings, so row i of the output is always line i of
         the input; a final line break does not add an item.
  jsonl  one JSON object per line (files ending in .jsonl, or --format jsonl); the item is the
         string in --field (default "text"). Blank lines are skipped; rows follow the records.
"""


class InputError(Exception):
    """Bad input data: reported as one line, without a traceback."""


def _read_lines(stream) -> list[str]:
    return [line.rstrip("\r\n") for line in stream]


def read_items(source: str, fmt: str, field: str | None) -> list[str]:
    """The texts to encode from a file or '-' (stdin), in the given format ('auto' decides by file name)."""
    if fmt == "auto":
        fmt = "jsonl" if source.endswith(".jsonl") else "text"
    if field is not None and fmt != "jsonl":
        raise InputError("--field applies to JSON lines input only (a .jsonl file, or --format jsonl)")
    name = "stdin" if source == "-" else source
    try:
        if source == "-":
            lines = _read_lines(sys.stdin)
        else:
            with open(source, encoding="utf-8") as f:
                lines = _read_lines(f)
    except FileNotFoundError:
        raise InputError(f"input file {source} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"input {source} is a folder, expected a file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"cannot read {name}: {e.strerror or e}") from None
    if fmt == "text":
        return lines

    field = field or "text"
    items = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{name} line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{name} line {lineno}: expected a JSON object, got {type(record).__name__}")
        if field not in record:
            raise InputError(f"{name} line {lineno}: no field {field!r} (fields: {', '.join(record) or 'none'})")
        if not isinstance(record[field], str):
            raise InputError(f"{name} line {lineno}: field {field!r} is {type(record[field]).__name__}, expected str")
        items.append(record[field])
    return items


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentfuse", description="Fast sentence embeddings.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    encode = commands.add_parser(
        "encode", help="embed texts into a .npy file", description=ENCODE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    encode.add_argument("input", metavar="INPUT", help="text or .jsonl file, or - for stdin")
    encode.add_argument("-o", "--output", required=True, metavar="OUT.npy", help="where to save the embeddings")
    encode.add_argument("--model", default=None, help="model folder or cached hub name (default: all-MiniLM-L6-v2)")
    encode.add_argument("--format", choices=("auto", "text", "jsonl"), default="auto", help="input format")
    encode.add_argument("--field", default=None, help='JSON field holding the text (jsonl only; default "text")')
    encode.add_argument("--batch-size", type=_positive, default=32, help="texts per forward pass (default 32)")
    encode.add_argument("--normalize", action="store_true", help="scale embeddings to unit length")
    encode.add_argument("--precision", choices=PRECISIONS, default="float32", help="output precision")
    encode.add_argument("--prompt-name", default=None, help="prompt from the model's config to prepend")
    encode.add_argument("--max-seq-length", type=_positive, default=None, help="truncate texts to this many tokens")
    encode.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    encode.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    commands.add_parser("info", help="show the build, torch version and devices")
    return parser


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from .encoder import Encoder

    output = Path(args.output)
    if output.suffix != ".npy":
        raise InputError(f"output {args.output} must end in .npy")
    texts = read_items(args.input, args.format, args.field)
    if args.precision in ("int8", "uint8") and len(texts) == 1:
        raise InputError(f"--precision {args.precision} calibrates on the input and needs at least 2 items")

    start = time.perf_counter()
    encoder = Encoder(args.model, device=args.device, max_seq_length=args.max_seq_length)
    loaded = time.perf_counter()
    embeddings = encoder.encode(
        texts,
        prompt_name=args.prompt_name,
        batch_size=args.batch_size,
        show_progress_bar=not args.no_progress,
        precision=args.precision,
        normalize_embeddings=args.normalize,
    )
    seconds = time.perf_counter() - loaded
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, embeddings)
    rate = len(texts) / seconds if seconds > 0 else float("inf")
    print(
        f"encoded {len(texts)} texts, dim {embeddings.shape[1]} ({embeddings.dtype}), in {seconds:.2f} s "
        f"({rate:.1f} sentences/s; model load {loaded - start:.2f} s) -> {output}",
        file=sys.stderr,
    )
    return 0


def run_info() -> int:
    import torch

    from . import __version__, _ops

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
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_encode(args) if args.command == "encode" else run_info()
    except (InputError, ValueError, TypeError, OSError) as e:
        print(f"sentfuse {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
