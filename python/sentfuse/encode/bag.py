"""The encode pipeline of a static-embedding model: tokenize -> bag -> head, with no padding and no batches.

The tokenize stage is the transformer pipeline's (every core, chunk by chunk, in input order); the packed
ids of consecutive chunks go to the table's bag (model.static) together, up to BAG_TOKENS at a time, then
through the sentence head's Dense / Normalize stages and encode's truncation and normalization.
Tokenizing is nearly all the work, so nothing is sorted, padded or staged: batch_size and
max_batch_tokens, which bound padded model batches, do not apply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..model.static import StaticBackbone
from .pipeline import EncodeRequest
from .pooling import SentenceHead
from .run import RunOptions
from .tokenize import ChunkTokenizer, TokenChunk, cpu_cores, tokenize_chunks

# Tokens per bag call (8 MB of ids). Few large calls: on a busy machine each parallel region of torch's ops
# waits until all its threads are scheduled, and on the shared 2-core development VM bagging every
# 1,024-text chunk on its own (a few regions each) made encode clearly slower than bagging them together.
BAG_TOKENS = 1 << 20


class BagPipeline:
    """encode's machinery for one static-embedding table and head on one device (Pipeline's counterpart)."""

    def __init__(self, tokenizer: Any, backbone: StaticBackbone, head: SentenceHead, device: torch.device,
                 options: RunOptions) -> None:
        self.chunk_tokenizer = ChunkTokenizer(tokenizer, tokenizer.model_max_length, special_tokens=False)
        self.backbone = backbone
        self.head = head
        self.device = device
        self.threads = options.tokenize_threads_for(device, cpu_cores())

    def _bag(self, chunks: list[TokenChunk], request: EncodeRequest) -> torch.Tensor:
        """[texts of chunks, dim] finished sentence embeddings of consecutive chunks."""
        lengths = np.concatenate([chunk.lengths for chunk in chunks])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = torch.from_numpy(np.concatenate([chunk.ids for chunk in chunks])).to(self.device)
        x = self.head.from_pooled(self.backbone(ids, torch.from_numpy(offsets).to(self.device)))
        return self.head.finish(x, request.dim, request.normalize)

    def encode(self, request: EncodeRequest) -> torch.Tensor:
        """[N, dim] sentence embeddings on the device."""
        if request.token_embeddings:
            raise ValueError("output_value 'token_embeddings' is not available for a static-embedding model: "
                             "its table gives one vector per text")
        parts: list[torch.Tensor] = []
        pending: list[TokenChunk] = []
        with tqdm(total=len(request.texts), desc="Encoding", unit="sentence", disable=not request.progress) as bar:
            for chunk in tokenize_chunks(request.texts, self.chunk_tokenizer, self.threads):
                pending.append(chunk)
                if sum(len(c.ids) for c in pending) >= BAG_TOKENS:
                    parts.append(self._bag(pending, request))
                    pending = []
                bar.update(len(chunk))
            if pending:
                parts.append(self._bag(pending, request))
        dtype = request.out_dtype or self.backbone.dtype
        if not parts:
            return torch.empty((0, request.dim), device=self.device, dtype=dtype)
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(dtype).contiguous()  # truncate_dim cuts a view
