"""Loading a model folder's Hugging Face backbone and tokenizer, without transformers' progress bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .compute import ComputeMode, load_dtype, mark
from .modules import ModelFolderError
from .options import LoadOptions


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars off inside the block, each restored after.

    transformers draws a "Loading weights" bar on every model load, once per pool worker too; a
    library's load is not the long work a bar is for. (Both switches are process-wide.)
    """
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    transformers_on = hf_logging.is_progress_bar_enabled()
    hub_off = hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if transformers_on:
            hf_logging.enable_progress_bar()
        if hub_off:
            hub_utils.disable_progress_bars()


def load_pretrained(
    folder: Path, dtype: torch.dtype | ComputeMode | None = None, options: LoadOptions | None = None, model_class: str = "AutoModel",
    **config: Any,
) -> tuple[Any, Any]:
    """(tokenizer, model) from a Hugging Face model folder, offline; dtype None keeps the checkpoint's, a compute
    mode loads float32 and marks the model for prepare_backbone (model.compute).

    options carries the constructor's processor / config / model keywords and trust_remote_code
    (model.options); model_class names the transformers Auto class of the model (AutoModel: the bare
    backbone; AutoModelForSequenceClassification: backbone + classifier); config overrides config.json entries."""
    import transformers

    options = options or LoadOptions()
    common = {"local_files_only": True, "trust_remote_code": options.trust_remote_code, "token": options.token}
    stored = load_dtype(dtype)
    model_kwargs = common | ({"dtype": stored} if stored is not None else {}) | options.model_kwargs | config
    try:
        with quiet_progress_bars():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **common | options.tokenizer_kwargs)
            if options.config_kwargs:
                config = transformers.AutoConfig.from_pretrained(str(folder), **common | options.config_kwargs)
                model_kwargs["config"] = config
            model = getattr(transformers, model_class).from_pretrained(str(folder), **model_kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise ModelFolderError(f"cannot load the Hugging Face model in {folder}: {e}") from e
    except TypeError as e:  # an unknown key in the caller's model / processor / config keywords
        raise TypeError(f"cannot load the Hugging Face model in {folder} with model_kwargs={options.model_kwargs}, "
                        f"processor_kwargs={options.tokenizer_kwargs}, config_kwargs={options.config_kwargs}: {e}") from e
    mark(model, dtype)
    return tokenizer, model


# Hugging Face's "no limit" model_max_length is 1e30; a limit this large or more truncates nothing.
UNBOUNDED_LENGTH = int(1e9)


def backend_copy(tokenizer: Any, max_length: int) -> Any:
    """A private copy of a fast tokenizer's Rust backend that never pads and truncates at max_length on the
    tokenizer's truncation side (nothing when max_length is unbounded). Calls through the Hugging Face front
    reset the backend's settings; a copy keeps its own, and threads may share it."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    if max_length < UNBOUNDED_LENGTH:
        backend.enable_truncation(max_length, strategy="longest_first", direction=tokenizer.truncation_side)
    else:
        backend.no_truncation()
    return backend


def set_token_limit(tokenizer: Any, config: Any, *limits: int | None) -> int:
    """Set tokenizer.model_max_length to the first limit given (the caller's, then the folder's); with none,
    as sentence-transformers does, to the tokenizer's own limit capped by the model's position table."""
    limit = next((n for n in limits if n is not None), None)
    if limit is None:
        limit = tokenizer.model_max_length
        max_positions = getattr(config, "max_position_embeddings", -1)
        if isinstance(max_positions, int) and max_positions > 0:
            limit = min(limit, max_positions)
    tokenizer.model_max_length = limit
    return limit


def add_lowercasing(tokenizer: Any) -> None:
    """Lower-case texts in the fast tokenizer's normalizer (a folder's do_lower_case), unless it already does."""
    from tokenizers import normalizers

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    if current is not None and current.normalize_str("A") == "a":
        return
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase()] + ([current] if current else []))
