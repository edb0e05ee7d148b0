"""`sentfuse encode --multi-vector` (texts -> a multi-vector index folder) and `sentfuse search --embeddings INDEX`
(queries scored by MaxSim against that index), for MultiVectorEncoder (ColBERT-style) models."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .._checks import plural
from ..cli.records import texts_digest
from .encoder import MultiVectorEncoder
from .index import MultiVectorIndex


def add_multi_vector_arguments(parser: argparse.ArgumentParser) -> None:
    """The option `sentfuse encode` takes for multi-vector models."""
    parser.add_argument("--multi-vector", action="store_true",
                        help="the model is a MultiVectorEncoder (ColBERT-style): -o names a folder that receives a "
                             "multi-vector index (float16 token vectors + offsets + manifest) for sentfuse search")


def _load(model: str, args: argparse.Namespace) -> MultiVectorEncoder:
    return MultiVectorEncoder(model, device=args.device, dtype=args.dtype)


def _prompt(encoder: MultiVectorEncoder, prompt_name: str | None) -> str | None:
    if prompt_name is not None and prompt_name not in encoder.prompts:
        raise ValueError(f"--prompt-name {prompt_name!r} is not one of this model's prompts: {', '.join(encoder.prompts)}")
    return encoder.prompts[prompt_name] if prompt_name is not None else None


def run_multi_vector_encode(args: argparse.Namespace, name: str, texts: list[str]) -> int:
    """`sentfuse encode --multi-vector`: what the CLI runs once it has read the input texts (from name)."""
    if args.model is None:
        raise ValueError("--multi-vector needs --model: a sentence-transformers MultiVectorEncoder folder")
    unused = [option for option, value in (("--normalize", args.normalize), ("--max-seq-length", args.max_seq_length),
                                           ("--max-batch-tokens", args.max_batch_tokens), ("--sparse", args.sparse),
                                           ("--ray", args.ray is not None))
              if value] + (["--precision"] if args.precision != "float32" else [])
    if unused:
        raise ValueError(f"--multi-vector does not take {', '.join(unused)} (the model's folder sets its lengths and "
                         "normalization; the index stores float16)")
    output = Path(args.output)
    if output.suffix == ".npy":
        raise ValueError(f"-o {output}: --multi-vector writes an index folder, not a .npy file; name a folder")
    start = time.perf_counter()
    encoder = _load(args.model, args)
    loaded = time.perf_counter()
    index = encoder.write_index(texts, output, prompt=_prompt(encoder, args.prompt_name),
                                batch_size=args.batch_size or 32, show_progress_bar=not args.no_progress,
                                source={"input": name, "items": len(texts), "texts_sha256": texts_digest(texts)})
    seconds = time.perf_counter() - loaded
    print(f"indexed {plural(len(texts), 'text')} ({index.manifest['tokens']} token vectors of dim "
          f"{index.manifest['dim']}) in {seconds:.2f} s (model load {loaded - start:.2f} s) -> {output}",
          file=sys.stderr)
    return 0


def index_search(args: argparse.Namespace, texts: list[str]) -> Callable[[int], list[list[dict]]]:
    """For `sentfuse search --embeddings INDEX`: top_k -> each query's hits in the index, after checking that the
    index was built from these texts by this model (--model, else the model the manifest names)."""
    if args.reencode:
        raise ValueError(f"--embeddings {args.embeddings} is a multi-vector index; rebuild it with sentfuse encode "
                         "--multi-vector rather than --reencode")
    index = MultiVectorIndex(args.embeddings)
    if index.manifest.get("source", {}).get("texts_sha256") != texts_digest(texts):
        source = index.manifest.get("source", {})
        raise ValueError(f"--embeddings {args.embeddings} was built from other texts ({source.get('input')}, "
                         f"{source.get('items')} items) than --corpus {args.corpus}; rebuild it with sentfuse encode "
                         "--multi-vector")
    encoder = _load(args.model or index.manifest["model"], args)
    index.check_model(encoder)
    return lambda top_k: encoder.search(args.queries, index, top_k=top_k, batch_size=args.batch_size or 32)
