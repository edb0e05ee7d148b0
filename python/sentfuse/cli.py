"""The sentfuse command: `sentfuse encode` (texts -> .npy embeddings), `sentfuse search`, `sentfuse mine`
(near-duplicate pairs), `sentfuse cluster` (communities), `sentfuse info`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .distributed.cli import LOCAL as RAY_LOCAL, split_ray_argv
from .encode.quantize import PRECISIONS

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


def _cosine(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [-1, 1], got {value!r}") from None
    if not -1.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity in [-1, 1], got {value!r}")
    return number


def _add_mining_arguments(command: argparse.ArgumentParser) -> None:
    """The options `mine` and `cluster` share: input format, model and output form."""
    command.add_argument("--format", choices=("auto", "text", "jsonl"), default="auto", help="input format")
    command.add_argument("--field", default=None, help='JSON field holding the text (jsonl only; default "text")')
    command.add_argument("--model", default=None, help="model folder or cached hub name (default: all-MiniLM-L6-v2)")
    command.add_argument("--batch-size", type=_positive, default=None, help="most texts per forward pass (default: by device)")
    command.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    command.add_argument("--json", action="store_true", help="print JSON instead of text")
    command.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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
    encode.add_argument("--batch-size", type=_positive, default=None, help="most texts per forward pass (default: by device)")
    encode.add_argument("--normalize", action="store_true", help="scale embeddings to unit length")
    encode.add_argument("--precision", choices=PRECISIONS, default="float32", help="output precision")
    encode.add_argument("--prompt-name", default=None, help="prompt from the model's config to prepend")
    encode.add_argument("--max-seq-length", type=_positive, default=None, help="truncate texts to this many tokens")
    encode.add_argument(
        "--max-batch-tokens", type=_positive, default=None, help="most padded tokens per forward pass (default: by device)"
    )
    encode.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="backbone dtype (default: as the checkpoint); embeddings are saved as float32")
    encode.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    encode.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    encode.add_argument("--ray", nargs="?", const=RAY_LOCAL, default=None, metavar="ADDRESS",
                        help="encode on a Ray cluster (no ADDRESS: a local Ray for this run): INPUT is a file or a "
                        "quoted glob of Parquet/JSON lines/text shards, -o an output folder (sentfuse[ray])")

    search = commands.add_parser(
        "search", help="rank the lines of a corpus file against queries",
        description="Embed a corpus (one text per line, or .jsonl with --field) and print each query's best "
        "matches. With --embeddings, corpus embeddings are read from that .npy file, or written there the "
        "first time so that later searches skip encoding.",
    )
    search.add_argument("queries", nargs="+", metavar="QUERY", help="query texts")
    search.add_argument("--corpus", required=True, help="text or .jsonl file, one corpus item per line/record")
    search.add_argument("--field", default=None, help='JSON field holding the text (jsonl only; default "text")')
    search.add_argument("--embeddings", default=None, metavar="FILE.npy", help="cached corpus embeddings")
    search.add_argument("-k", "--top-k", type=_positive, default=5, help="hits per query (default 5)")
    search.add_argument("--model", default=None, help="model folder or cached hub name (default: all-MiniLM-L6-v2)")
    search.add_argument("--batch-size", type=_positive, default=None, help="most texts per forward pass (default: by device)")
    search.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    mine = commands.add_parser(
        "mine", help="find near-duplicate pairs among the lines of a file",
        description="Embed every item of a text or .jsonl file and print the pairs scoring at least --threshold "
        "(cosine), best first, with both texts side by side. Each item's --top-k most similar items are the "
        "candidates, as in sentence-transformers' paraphrase_mining.",
    )
    mine.add_argument("input", metavar="FILE", help="text or .jsonl file, or - for stdin")
    mine.add_argument("--threshold", type=_cosine, default=0.9, help="lowest cosine similarity reported (default 0.9)")
    mine.add_argument("-k", "--top-k", type=_positive, default=100, help="candidates per item (default 100)")
    _add_mining_arguments(mine)

    cluster = commands.add_parser(
        "cluster", help="group the lines of a file into communities of similar texts",
        description="Embed every item of a text or .jsonl file and print its communities, largest first: groups "
        "of at least --min-size items whose cosine similarity to the group's first item is at least "
        "--threshold (sentence-transformers' community_detection).",
    )
    cluster.add_argument("input", metavar="FILE", help="text or .jsonl file, or - for stdin")
    cluster.add_argument(
        "--threshold", type=_cosine, default=0.75, help="cosine similarity to the center (default 0.75)"
    )
    cluster.add_argument("--min-size", type=_positive, default=10, help="smallest community reported (default 10)")
    _add_mining_arguments(cluster)

    commands.add_parser("info", help="show the build, torch version and devices")
    return parser


def run_encode(args: argparse.Namespace) -> int:
    if args.ray is not None:
        from .distributed.cli import run_encode as run_encode_on_ray

        return run_encode_on_ray(args)
    import numpy as np

    from .encode.encoder import Encoder

    output = Path(args.output)
    if output.suffix != ".npy":
        raise InputError(f"output {args.output} must end in .npy")
    texts = read_items(args.input, args.format, args.field)
    if args.precision in ("int8", "uint8") and len(texts) == 1:
        raise InputError(f"--precision {args.precision} calibrates on the input and needs at least 2 items")

    start = time.perf_counter()
    encoder = Encoder(args.model, device=args.device, dtype=args.dtype, max_seq_length=args.max_seq_length)
    loaded = time.perf_counter()
    embeddings = encoder.encode(
        texts,
        prompt_name=args.prompt_name,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
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


def run_search(args: argparse.Namespace) -> int:
    import numpy as np

    from .encode.encoder import Encoder

    corpus = read_items(args.corpus, "auto", args.field)
    if not corpus:
        raise InputError(f"corpus {args.corpus} has no items")
    cache = Path(args.embeddings) if args.embeddings else None
    if cache is not None and cache.suffix != ".npy":
        raise InputError(f"--embeddings {args.embeddings} must end in .npy")
    encoder = Encoder(args.model, device=args.device)
    if cache is not None and cache.exists():
        corpus_embeddings = np.load(cache, mmap_mode="r")
        if corpus_embeddings.shape != (len(corpus), encoder.get_sentence_embedding_dimension()):
            raise InputError(
                f"--embeddings {cache} holds {corpus_embeddings.shape} but the corpus has {len(corpus)} items of "
                f"dimension {encoder.get_sentence_embedding_dimension()}: delete it to re-encode"
            )
    else:
        corpus_embeddings = encoder.encode_document(
            corpus, batch_size=args.batch_size, show_progress_bar=not args.no_progress
        )
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, corpus_embeddings)
    hits = encoder.search(args.queries, corpus_embeddings, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        results = [
            {"query": query, "hits": [dict(hit, text=corpus[hit["corpus_id"]]) for hit in query_hits]}
            for query, query_hits in zip(args.queries, hits)
        ]
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return 0
    for query, query_hits in zip(args.queries, hits):
        print(f"query: {query}")
        for rank, hit in enumerate(query_hits, start=1):
            print(f"  {rank:>2}. {hit['score']:.4f}  [{hit['corpus_id']}] {corpus[hit['corpus_id']]}")
    return 0


def _embed_items(args: argparse.Namespace) -> tuple[list[str], object]:
    """The input's texts and their unit-length embeddings (None when the input has no items)."""
    from .encode.encoder import Encoder

    texts = read_items(args.input, args.format, args.field)
    if not texts:
        return texts, None
    encoder = Encoder(args.model, device=args.device)
    return texts, encoder.encode(
        texts, batch_size=args.batch_size, show_progress_bar=not args.no_progress, normalize_embeddings=True,
        convert_to_tensor=True,
    )


def run_mine(args: argparse.Namespace) -> int:
    from .search import paraphrase_mining_embeddings

    texts, embeddings = _embed_items(args)
    pairs = [] if embeddings is None else paraphrase_mining_embeddings(
        embeddings, top_k=args.top_k, max_pairs=2**62, min_score=args.threshold
    )
    if args.json:
        results = [{"score": s, "i": i, "j": j, "text_i": texts[i], "text_j": texts[j]} for s, i, j in pairs]
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for score, i, j in pairs:
            print(f"{score:.4f}  [{i}] {texts[i]}  |  [{j}] {texts[j]}")
    print(f"{len(pairs)} pairs with cosine >= {args.threshold} among {len(texts)} texts", file=sys.stderr)
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    from .search import community_detection

    texts, embeddings = _embed_items(args)
    communities = [] if embeddings is None else community_detection(embeddings, args.threshold, args.min_size)
    if args.json:
        results = [{"size": len(c), "ids": c, "texts": [texts[i] for i in c]} for c in communities]
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for number, community in enumerate(communities, start=1):
            print(f"community {number}: {len(community)} texts")
            for i in community:
                print(f"  [{i}] {texts[i]}")
    clustered = sum(len(c) for c in communities)
    print(
        f"{len(communities)} communities of >= {args.min_size} texts at cosine >= {args.threshold}, "
        f"{clustered} of {len(texts)} texts clustered",
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
    args = build_parser().parse_args(split_ray_argv(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "info":
            return run_info()
        return COMMANDS[args.command](args)
    except (InputError, ValueError, TypeError, OSError) as e:
        print(f"sentfuse {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


COMMANDS = {"encode": run_encode, "search": run_search, "mine": run_mine, "cluster": run_cluster}

if __name__ == "__main__":
    sys.exit(main())
