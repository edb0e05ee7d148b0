"""The multi-vector head: what turns a text's backbone token rows into its scored token vectors (Dense
projections, the MultiVectorMask's skiplist / allowlist, L2 normalization, truncate_dim), and the query
expansion that ColBERT folders apply to queries before the backbone."""

from __future__ import annotations

from typing import Any

import torch

from ..model.modules import DenseModule, ModelFolderError, NormalizeModule
from .folder import QueryExpansion, TokenMask


class MultiVectorHead:
    """modules: a folder's head in order. dim: the width of the token vectors it returns."""

    def __init__(self, modules: list, hidden: int, device: torch.device, dtype: torch.dtype) -> None:
        self.modules = modules
        self.dim = hidden
        for m in modules:
            if isinstance(m, DenseModule):
                m.to(device=device, dtype=dtype)
                self.dim = m.out_features
        self.masks = [m for m in modules if isinstance(m, TokenMask)]
        self._skip_ids: torch.Tensor | None = None

    def resolve(self, tokenizer: Any) -> None:
        """Skiplist words as token ids; words that are not one vocabulary token are left out, as
        sentence-transformers does (they would otherwise drop every [UNK])."""
        ids = []
        for mask in self.masks:
            for word in mask.skiplist_words:
                token_id = tokenizer.convert_tokens_to_ids(word)
                if token_id != tokenizer.unk_token_id or word == tokenizer.unk_token:
                    ids.append(token_id)
        self._skip_ids = torch.tensor(ids, dtype=torch.long) if ids else None

    def needs_ids(self, task: str | None) -> bool:
        """Whether the keep mask for task depends on token ids."""
        return any(self._drops(m, task) or (task != "query" and m.keep_only_token_ids) for m in self.masks)

    def _drops(self, mask: TokenMask, task: str | None) -> bool:
        return self._skip_ids is not None and (task or "document") in mask.skiplist_tasks

    def keep(self, ids: torch.Tensor, task: str | None) -> torch.Tensor:
        """bool of ids' shape: which tokens (of one text [n] or a batch [B, W]) are scored."""
        keep = torch.ones_like(ids, dtype=torch.bool)
        for mask in self.masks:
            if self._drops(mask, task):
                keep &= ~torch.isin(ids, self._skip_ids.to(ids.device))
            if task != "query" and mask.keep_only_token_ids:
                keep &= torch.isin(ids, torch.tensor(mask.keep_only_token_ids, dtype=torch.long, device=ids.device))
        return keep

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n, H] token rows -> [n, dim]: the Dense and Normalize modules in folder order."""
        for m in self.modules:
            if isinstance(m, DenseModule):
                tokens = m(tokens)
            elif isinstance(m, NormalizeModule):
                tokens = torch.nn.functional.normalize(tokens, p=2.0, dim=-1)
        return tokens


def check_expansion_token(tokenizer: Any, expansion: QueryExpansion, where: Any) -> None:
    """The expansion token must be one the tokenizer has (else every expansion position would be [UNK]); with
    none named, the tokenizer needs a mask or an end-of-sequence token to fall back on."""
    if expansion.token is None:
        if tokenizer.mask_token_id is None and tokenizer.eos_token_id is None:
            raise ModelFolderError(f"{where}: query_expansion names no token and the tokenizer has neither a mask "
                                   "nor an end-of-sequence token to expand with; name one ('token')")
        return
    token_id = tokenizer.convert_tokens_to_ids(expansion.token)
    if token_id is None or (token_id == tokenizer.unk_token_id and expansion.token != tokenizer.unk_token):
        raise ModelFolderError(f"{where}: query_expansion token {expansion.token!r} is not in the tokenizer's "
                               "vocabulary")


def expand_queries(tokenizer: Any, texts: list[str], expansion: QueryExpansion, max_length: int) -> dict[str, torch.Tensor]:
    """Token ids of a batch of queries with ColBERT expansion: pads within the first expansion.length positions
    become the expansion token; "scored" marks the real and expansion positions, and attention_mask covers the
    expansion positions only when expansion.attend."""
    fixed = expansion.strategy == "fixed"
    enc = tokenizer(texts, padding="max_length" if fixed else True, truncation="longest_first",
                    max_length=expansion.length if fixed else max(max_length, expansion.length), return_tensors="pt")
    features = dict(enc)
    width = features["input_ids"].shape[1]
    if width < expansion.length:  # "min": a batch of short queries still reaches the floor
        pad = expansion.length - width
        features = {k: torch.nn.functional.pad(v, (0, pad), value=0) for k, v in features.items()}
    mask = features["attention_mask"]
    positions = (mask == 0) & (torch.arange(mask.shape[1]) < expansion.length)
    token_id = (tokenizer.convert_tokens_to_ids(expansion.token) if expansion.token is not None
                else tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.eos_token_id)
    if token_id is not None:
        features["input_ids"] = features["input_ids"].masked_fill(positions, token_id)
    features["scored"] = (mask != 0) | positions
    if expansion.attend:
        features["attention_mask"] = mask.masked_fill(positions, 1)
    return features
