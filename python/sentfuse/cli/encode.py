"""`sentfuse encode`: texts -> a .npy file of embeddings, row i for item i."""

from __future__ import annotations

import argparse
import sys
import time

from .._checks import check_calibration_rows
from ..distributed.cli import LOCAL as RAY_LOCAL
from ..encode.quantize import PRECISIONS
from ..multi_vector.cli import add_multi_vector_arguments, run_multi_vector_encode
from ..sparse.output import add_sparse_arguments, run_sparse_encode
from .args import add_backbone_options, add_input_options, add_model_options, plural, positive
from .errors import CommandError
from .inputs import read_items
from .model import load_encoder
from .outputs import check_output, write_embeddings
from .records import CHECKPOINT_DTYPE, build_record, record_path

DESCRIPTION = """\
Embed one text per input item and save the embeddings as a .npy array, row i for item i.

Input formats:
  text   one item per line (the default; also for stdin). Lines end at \\n or \\r\\n; a lone \\r is
         part of the text. Blank lines are kept and embedded as empty strings, so row i of the
         output is always line i + 1 of the input; a final line break does not add an item.
  jsonl  one JSON object per line (files ending in .jsonl, or --format jsonl); the item is the
         string in --field (default "text"). Blank lines are skipped; rows follow the records.
A UTF-8 byte-order mark at the start is ignored. An input with no items is an error.

Output: an existing OUT.npy is replaced, atomically (if the run fails, the old file is left as it
was). OUT.npy.json beside it records what the embeddings were built from (a hash of the texts, the
model, the options), so that `sentfuse search --embeddings OUT.npy` can check they still fit.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    encode = commands.add_parser("encode", help="embed texts into a .npy file", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    encode.add_argument("input", metavar="INPUT", help="text or .jsonl file, or - for stdin")
    encode.add_argument("-o", "--output", required=True, metavar="OUT.npy",
                        help="where to save the embeddings (replaced if it exists)")
    add_input_options(encode)
    add_model_options(encode)
    encode.add_argument("--normalize", action="store_true", help="scale embeddings to unit length")
    encode.add_argument("--precision", choices=PRECISIONS, default="float32", help="output precision")
    encode.add_argument("--prompt-name", default=None, help="prompt from the model's config to prepend")
    add_backbone_options(encode)
    encode.add_argument("--max-batch-tokens", type=positive, default=None,
                        help="most padded tokens per forward pass (default: by device)")
    add_sparse_arguments(encode)
    add_multi_vector_arguments(encode)
    encode.add_argument("--ray", nargs="?", const=RAY_LOCAL, default=None, metavar="ADDRESS",
                        help="encode on a Ray cluster (no ADDRESS: a local Ray for this run): INPUT is a file or a "
                        "quoted glob of Parquet/JSON lines/text shards, -o an output folder (sentfuse[ray])")
    encode.set_defaults(run=run)


def prompt_text(encoder, prompt_name: str | None) -> str:
    """The prompt encode prepends: --prompt-name's, else the model's default prompt, else none."""
    name = prompt_name if prompt_name is not None else encoder.default_prompt_name
    if name is None:
        return ""
    if name not in encoder.prompts:
        raise CommandError(f"--prompt-name {name!r} is not one of this model's prompts: {', '.join(encoder.prompts)}")
    return encoder.prompts[name]


def run(args: argparse.Namespace) -> int:
    if args.max_active_dims is not None and not args.sparse:
        raise CommandError("--max-active-dims applies to sparse vectors only: add --sparse (for a SparseEncoder "
                           "model), or leave it out")
    if args.multi_vector:
        items = read_items(args.input, args.format, args.field)
        return run_multi_vector_encode(args, items.name, items.texts)
    if args.ray is not None:
        from ..distributed.cli import run_encode as run_encode_on_ray

        return run_encode_on_ray(args)
    if args.sparse:
        return run_sparse_encode(args, read_items(args.input, args.format, args.field).texts)
    output = check_output(args.output, "-o")
    items = read_items(args.input, args.format, args.field)
    try:
        check_calibration_rows(len(items.texts), args.precision, "items", "give more input lines", "--precision")
    except ValueError as e:
        raise CommandError(str(e)) from None

    start = time.perf_counter()
    encoder = load_encoder(args, max_seq_length=args.max_seq_length, dtype=args.dtype)
    prompt = prompt_text(encoder, args.prompt_name)
    loaded = time.perf_counter()
    embeddings = encoder.encode(
        items.texts, prompt=prompt, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
        show_progress_bar=not args.no_progress, precision=args.precision, normalize_embeddings=args.normalize,
    )
    seconds = time.perf_counter() - loaded
    record = build_record(encoder, items.name, items.texts, prompt=prompt, dtype=args.dtype or CHECKPOINT_DTYPE,
                          normalize=args.normalize, precision=args.precision)
    replaced = write_embeddings(output, embeddings, record, "-o")
    rate = len(items.texts) / seconds if seconds > 0 else float("inf")
    print(
        f"encoded {plural(len(items.texts), 'text')}, dim {embeddings.shape[1]} ({embeddings.dtype}), in {seconds:.2f} s "
        f"({rate:.1f} sentences/s; model load {loaded - start:.2f} s) -> {output}"
        f"{' (replaced the previous file)' if replaced else ''}, record in {record_path(output).name}",
        file=sys.stderr,
    )
    return 0
