"""The encode pipeline of a static-embedding model: tokenize -> bag -> head, with no padding and no batches.

The tokenize stage is the transformer pipeline's (every core, chunk by chunk, in input order); each chunk's
packed ids and offsets go straight to the table's bag (model.static), then through the sentence head's
Dense / Normalize stages and encode's truncation and normalization. Tokenizing is nearly all the work, so
nothing is sorted, padded or staged: batch_size and max_batch_tokens, which bound padded model batches,
do not apply.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from ..model.static import StaticBackbone
from .pipeline import EncodeRequest
from .pooling import SentenceHead
from .run import RunOptions
from .tokenize import ChunkTokenizer, cpu_cores, tokenize_chunks


class BagPipeline:
    """encode's machinery for one static-embedding table and head on one device (Pipeline's counterpart)."""

    def __init__(self, tokenizer: Any, backbone: StaticBackbone, head: SentenceHead, device: torch.device,
                 options: RunOptions) -> None:
        self.chunk_tokenizer = ChunkTokenizer(tokenizer, tokenizer.model_max_length, special_tokens=False)
        self.backbone = backbone
        self.head = head
        self.device = device
        self.threads = options.tokenize_threads_for(device, cpu_cores())

    def encode(self, request: EncodeRequest) -> torch.Tensor:
        """[N, dim] sentence embeddings on the device."""
        if request.token_embeddings:
            raise ValueError("output_value 'token_embeddings' is not available for a static-embedding model: "
                             "its table gives one vector per text")
        out = torch.empty((len(request.texts), request.dim), device=self.device,
                          dtype=request.out_dtype or self.backbone.dtype)
        with tqdm(total=len(request.texts), desc="Encoding", unit="sentence", disable=not request.progress) as bar:
            for chunk in tokenize_chunks(request.texts, self.chunk_tokenizer, self.threads):
                ids = torch.from_numpy(chunk.ids).to(self.device)
                offsets = torch.from_numpy(chunk.offsets).to(self.device)
                x = self.head.from_pooled(self.backbone(ids, offsets))
                out[chunk.start : chunk.start + len(chunk)] = self.head.finish(x, request.dim, request.normalize)
                bar.update(len(chunk))
        return out
