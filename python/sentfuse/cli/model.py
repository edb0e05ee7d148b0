"""Loading the model a command runs, with the checks that need the model's own configuration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import CommandError

# These models number positions after the padding index, so pad_token_id + 1 positions of the
# table are never used by a token (as in transformers' create_position_ids_from_input_ids).
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "data2vec-text")


def position_limit(config: dict[str, Any]) -> int | None:
    """The most tokens a backbone with this config.json can take, or None when the config does not say."""
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        return None
    if config.get("model_type") in POSITIONS_AFTER_PADDING:
        pad = config.get("pad_token_id")
        positions -= (pad if isinstance(pad, int) else 1) + 1
    return positions


def _check_max_seq_length(encoder: Any, requested: int) -> None:
    from ..model.modules import load_model_folder

    config_path = load_model_folder(encoder.model_path).transformer.path / "config.json"
    limit = position_limit(json.loads(config_path.read_text(encoding="utf-8")))
    if limit is not None and requested > limit:
        raise CommandError(
            f"--max-seq-length {requested} is more than this model takes: {limit} tokens "
            f"(max_position_embeddings in {config_path})"
        )


def load_encoder(args: argparse.Namespace, max_seq_length: int | None = None, dtype: str | None = None) -> Any:
    """The Encoder for args.model and args.device, its --max-seq-length checked against the model's positions."""
    from ..encode.encoder import Encoder
    from ..model.modules import ModelFolderError, is_sparse_folder

    try:
        encoder = Encoder(args.model, device=args.device, dtype=dtype, max_seq_length=max_seq_length)
    except ModelFolderError as e:
        if args.model is None or not is_sparse_folder(Path(args.model).expanduser()):
            raise
        use = ("pass --sparse" if args.command == "encode" else
               f"sentfuse {args.command} runs dense models; sentfuse encode --sparse encodes sparse vectors")
        raise CommandError(f"--model {args.model} is a SparseEncoder (SPLADE) model: {use}") from e
    if max_seq_length is not None:
        _check_max_seq_length(encoder, max_seq_length)
    return encoder
