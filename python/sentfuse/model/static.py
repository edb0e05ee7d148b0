"""The static-embedding backbone: a token-embedding table whose rows are averaged over each text's tokens.

sentence-transformers' StaticEmbedding tokenizes with its tokenizer.json as saved (no special tokens, the
file's truncation, no padding) and averages the ids' rows in an embedding bag; a text without tokens
gives zeros. The bag here sums and divides by the token count, which gives bitwise the bag's mean-mode
result and runs faster on CPU (benchmarks/bench_static.py times both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .modules import ModelFolderError, PoolingModule, StaticEmbeddingModule
from .pretrained import backend_copy

# The bag told as a Pooling module: the mean of every token's row, a prompt's tokens included. The sentence
# head then runs a static folder's Dense and Normalize modules as it runs any other folder's.
BAG_POOLING = PoolingModule(modes=("mean",), include_prompt=True)


class StaticBackbone(nn.Module):
    """The table, on a device and in a dtype like any backbone; forward takes packed ids, no padding."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)  # [vocab, dim]

    @property
    def dtype(self) -> torch.dtype:
        return self.table.dtype

    @property
    def dim(self) -> int:
        return self.table.shape[1]

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """[N, dim] means of the rows of ids [T]; text i's ids are ids[offsets[i] : offsets[i + 1]] (offsets [N + 1])."""
        counts = (offsets[1:] - offsets[:-1]).clamp_(min=1).to(self.dtype)
        return F.embedding_bag(ids, self.table, offsets[:-1], mode="sum").div_(counts[:, None])


def static_tokenizer(module: StaticEmbeddingModule) -> Any:
    """The module's tokenizer.json behind Hugging Face's fast-tokenizer front. The file's truncation becomes
    model_max_length and truncation_side (unbounded where it has none): the front resets the backend's own."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = module.path / "tokenizer.json"
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise ModelFolderError(f"{path} cannot be read as a tokenizer ({e})") from None
    vocab = backend.get_vocab_size(with_added_tokens=True)
    if vocab > len(module.table):
        raise ModelFolderError(f"{module.path}: the tokenizer has {vocab} tokens but the embedding table only "
                               f"{len(module.table)} rows")
    truncation = backend.truncation
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    if truncation:
        tokenizer.model_max_length = truncation["max_length"]
        tokenizer.truncation_side = truncation["direction"]
    return tokenizer


def load_static(module: StaticEmbeddingModule, device: torch.device, dtype: torch.dtype | None,
                max_seq_length: int | None) -> tuple[Any, StaticBackbone]:
    """(tokenizer, backbone) of a static-embedding folder; dtype None keeps the table's, max_seq_length None
    the tokenizer file's truncation."""
    tokenizer = static_tokenizer(module)
    if max_seq_length is not None:
        tokenizer.model_max_length = max_seq_length
    table = module.table if dtype is None else module.table.to(dtype)
    return tokenizer, StaticBackbone(table).to(device)


def save_static(out: Path, module: StaticEmbeddingModule, tokenizer: Any, dtype: torch.dtype) -> int:
    """The table at dtype and the tokenizer (truncating at its current max length) into out, as
    sentence-transformers' StaticEmbedding saves them; returns the table's width."""
    from safetensors.torch import save_file

    save_file({"embedding.weight": module.table.to(dtype).contiguous()}, str(out / "model.safetensors"))
    backend_copy(tokenizer, tokenizer.model_max_length).save(str(out / "tokenizer.json"))
    return module.table.shape[1]
