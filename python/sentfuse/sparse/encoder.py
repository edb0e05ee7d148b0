"""SparseEncoder: sentence-transformers' SparseEncoder (SPLADE) vectors, with the vocabulary head fused into
sentfuse's splade_pool kernel."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._checks import check_sentences, device_or_default, parse_device, parse_dtype, positive_int
from ..model.modules import check_prompt_name, check_similarity_fn_name, choose_prompt, merge_prompts
from ..model.resolve import resolve_model_path
from .batches import batch_policy, planned_batches
from .folder import SIMILARITY_FN_NAMES, SparseFolder, SpladeRoute, load_sparse_folder
from .heads import SpladeHead, StaticHead
from .vectors import SparseRows, as_dense_rows, decode_rows, sparsity_stats

logger = logging.getLogger(__name__)

DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # encode_document's candidates, in ST's order


class SparseEncoder:
    """Sparse (SPLADE) embeddings from a sentence-transformers SparseEncoder folder.

    Arguments and results follow sentence-transformers' SparseEncoder. The backbone runs in transformers;
    its vocabulary projection, activation and pooling run fused in sentfuse's splade_pool op, so memory grows
    with batch x tokens x a vocabulary tile instead of batch x tokens x vocabulary. Router folders
    (different query and document encoders, e.g. inference-free SparseStaticEmbedding queries) are routed
    by task: encode_query uses "query", encode_document "document", encode the default route.

    device: default CUDA when available, else CPU. dtype: float32, float16 or bfloat16 for the backbone
    (vectors are float32 either way). max_active_dims keeps only the largest weights of each vector.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_seq_length: int | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        max_active_dims: int | None = None,
        local_files_only: bool = True,
        cache_folder: str | None = None,
        revision: str | None = None,
    ) -> None:
        target = device_or_default(device)
        torch_dtype = parse_dtype(dtype)
        max_seq_length = positive_int(max_seq_length, "max_seq_length")
        self.max_active_dims = positive_int(max_active_dims, "max_active_dims")
        folder = load_sparse_folder(resolve_model_path(model_name_or_path, local_files_only, cache_folder, revision))
        self.model_path = folder.path
        self._folder = folder
        self.prompts = merge_prompts(prompts, folder.prompts)
        self.default_prompt_name = default_prompt_name or folder.default_prompt_name
        if self.default_prompt_name is not None:
            check_prompt_name(self.default_prompt_name, self.prompts, "default_prompt_name")
        self.similarity_fn_name = similarity_fn_name or folder.similarity_fn_name or "dot"
        if self.max_active_dims is None:
            self.max_active_dims = folder.max_active_dims
        self._heads = {
            name: SpladeHead(route, target, torch_dtype, max_seq_length) if isinstance(route, SpladeRoute)
            else StaticHead(route, target)
            for name, route in folder.routes.items()
        }
        self._device = target
        if len({head.vocab_size for head in self._heads.values()}) != 1:
            raise ValueError(f"{folder.path}: the routes give vectors of different sizes")

    # --- properties -------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def similarity_fn_name(self) -> str:
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str) -> None:
        self._similarity_fn_name = check_similarity_fn_name(value, SIMILARITY_FN_NAMES)

    @property
    def tokenizer(self) -> Any:
        """The default route's tokenizer (every route shares the vocabulary)."""
        return self._head(None).tokenizer

    @property
    def max_seq_length(self) -> int:
        return self._head(None).tokenizer.model_max_length

    def get_embedding_dimension(self) -> int:
        """The vocabulary size: the width of every vector."""
        return self._head(None).vocab_size

    def to(self, device: str | torch.device) -> SparseEncoder:
        self._device = parse_device(device)
        for head in self._heads.values():
            head.to(self._device)
        return self

    def __repr__(self) -> str:
        return f"SparseEncoder({str(self.model_path)!r}, routes={list(self._heads)}, device={self.device})"

    # --- encoding ---------------------------------------------------------------------------------

    def _head(self, task: str | None) -> SpladeHead | StaticHead:
        """sentence-transformers' Router resolution for text: (task, text), (task, any), (any, text), (any, any),
        the task's own route, then the default route."""
        folder: SparseFolder = self._folder
        for key in ((task, "text"), (task, None), (None, "text"), (None, None)):
            if key in folder.route_mappings:
                return self._heads[folder.route_mappings[key]]
        if task is not None and task in self._heads:
            return self._heads[task]
        if task is not None and len(self._heads) > 1:
            raise ValueError(f"no route for task {task!r}; this model's routes are {list(self._heads)}")
        return self._heads[folder.default_route]

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        return choose_prompt(self.prompts, self.default_prompt_name, prompt, prompt_name)

    def _encode_rows(self, head, texts: list[str], batch_size: int | None, max_batch_tokens: int | None,
                     max_active_dims: int | None,
                     show_progress_bar: bool) -> SparseRows:
        policy = batch_policy(self.device, batch_size, max_batch_tokens, head.tokenizer.model_max_length)
        rows = SparseRows(len(texts), head.vocab_size, self.device)
        if not texts:
            return rows
        with tqdm(total=len(texts), desc="Encoding", unit="text", disable=not show_progress_bar) as bar:
            for positions, features in planned_batches(head.tokenize(texts), head.tokenizer, policy):
                features = {k: v.to(self.device) for k, v in features.items()}
                rows.add(torch.from_numpy(positions).to(self.device), head(features), max_active_dims)
                bar.update(len(positions))
        return rows

    @torch.inference_mode()
    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = True,
        convert_to_sparse_tensor: bool = True,
        save_to_cpu: bool = False,
        max_active_dims: int | None = None,
        task: str | None = None,
        max_batch_tokens: int | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sparse vectors [N, V] for sentences, with sentence-transformers' arguments and result types.

        By default one sparse COO tensor [N, V] (a str gives [V]); convert_to_sparse_tensor=False gives it
        dense; convert_to_tensor=False a list of per-text tensors. max_active_dims (default: the model's)
        keeps each vector's largest weights. Texts are tokenized once, sorted by length and batched with at
        most batch_size texts and max_batch_tokens padded tokens per batch (defaults by device); results come
        back in input order, on the model's device unless save_to_cpu. task picks a Router route.
        """
        single, texts = check_sentences(sentences)
        for name, value in (("convert_to_tensor", convert_to_tensor), ("convert_to_sparse_tensor",
                            convert_to_sparse_tensor), ("save_to_cpu", save_to_cpu)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        batch_size = positive_int(batch_size, "batch_size")
        max_batch_tokens = positive_int(max_batch_tokens, "max_batch_tokens")
        max_active_dims = positive_int(max_active_dims, "max_active_dims") or self.max_active_dims
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        resolved = self._resolve_prompt(prompt, prompt_name)
        texts_in = [resolved + t for t in texts] if resolved else texts
        rows = self._encode_rows(self._head(task), texts_in, batch_size, max_batch_tokens, max_active_dims,
                                 bool(show_progress_bar))
        out = rows.to_tensor(sparse=convert_to_sparse_tensor)
        if save_to_cpu:
            out = out.cpu()
        if not convert_to_tensor or single:
            per_text = rows.split(out) if convert_to_sparse_tensor else list(out.unbind(0))
            return per_text[0] if single else per_text
        return out

    def encode_query(self, sentences: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
                     **kwargs: Any):
        """encode with the "query" route and prompt (unless a prompt or prompt_name is given)."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, task="query", **kwargs)

    def encode_document(self, sentences: str | Sequence[str], prompt_name: str | None = None,
                        prompt: str | None = None, **kwargs: Any):
        """encode with the "document" route and the "document" (else "passage", else "corpus") prompt."""
        if prompt_name is None and prompt is None:
            prompt_name = next((name for name in DOCUMENT_PROMPT_NAMES if name in self.prompts), None)
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, task="document", **kwargs)

    # --- using the vectors ------------------------------------------------------------------------

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """[N, M] fp32 scores between every row of embeddings1 and of embeddings2: dot products (or cosines,
        with similarity_fn_name "cosine"); sparse or dense tensors, lists of them, or numpy arrays."""
        a, b = as_dense_rows(embeddings1, "embeddings1"), as_dense_rows(embeddings2, "embeddings2")
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"embeddings1 has {a.shape[1]} dimensions but embeddings2 has {b.shape[1]}")
        scores = a @ b.to(a.device).T
        if self.similarity_fn_name == "cosine":
            norms = a.norm(dim=1, keepdim=True) * b.to(a.device).norm(dim=1).unsqueeze(0)
            scores = torch.nan_to_num(scores / norms, nan=0.0)
        return scores

    def decode(self, embeddings: torch.Tensor, top_k: int | None = None):
        """(token, weight) pairs of each vector, largest weight first; top_k keeps the first top_k."""
        return decode_rows(embeddings, self.tokenizer, positive_int(top_k, "top_k"))

    @staticmethod
    def sparsity(embeddings: torch.Tensor) -> dict[str, float]:
        """Mean active (non-zero) dimensions per vector and the mean share of zeros."""
        return sparsity_stats(embeddings)
