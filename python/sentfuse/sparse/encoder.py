"""SparseEncoder: sentence-transformers' SparseEncoder (SPLADE) vectors, with the vocabulary head fused into
sentfuse's splade_pool kernel."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._checks import check_sentences, device_or_default, parse_device, positive_int
from ..encode.owner import placement
from ..model.card import ModelCardData
from ..model.modules import check_prompt_name, check_similarity_fn_name, choose_prompt, merge_prompts
from ..model.options import RENAMED_ENCODE, RENAMED_INIT, parse_load_options, renamed_keywords
from ..model.resolve import SPARSE_ORGANIZATION, resolve_model_path
from ..search.similarity import similarity_name
from .folder import DISTANCE_NORMS, SIMILARITY_FN_NAMES, SparseFolder, SpladeRoute, load_sparse_folder
from .heads import RouteModel, SpladeModel, StaticModel
from .st_compat import SparseEncoderMethods
from .vectors import SparseRows, as_dense_rows, decode_rows, sparsity_stats

if TYPE_CHECKING:
    from ..encode.pool import EncoderPool

logger = logging.getLogger(__name__)

DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # encode_document's candidates, in ST's order


class SparseEncoder(SparseEncoderMethods):
    """Sparse (SPLADE) embeddings from a sentence-transformers SparseEncoder folder.

    Arguments and results follow sentence-transformers' SparseEncoder. Texts go through the encode pipeline
    that Encoder uses (encode/pipeline.py); the backbone runs in transformers and its vocabulary projection,
    activation and pooling run fused in sentfuse's splade_pool op (the SPLADE head, sparse/heads.py), so
    memory grows with batch x tokens x a vocabulary tile instead of batch x tokens x vocabulary. Router folders
    (different query and document encoders, e.g. inference-free SparseStaticEmbedding queries) are routed
    by task: encode_query uses "query", encode_document "document", encode the default route.

    device: default CUDA when available, else CPU. dtype: float32, float16 or bfloat16 for the backbone
    (vectors are float32 either way). max_active_dims keeps only the largest weights of each vector.
    trust_remote_code, token, model_kwargs, processor_kwargs, config_kwargs, use_kernels, kernel_config,
    backend: sentence-transformers' loading keywords, parsed as Encoder parses them (sentfuse.model.options);
    tokenizer_kwargs and use_auth_token are accepted as deprecated spellings. model_card_data is kept as the
    attribute of that name.
    """

    model_type = "SparseEncoder"
    default_huggingface_organization = SPARSE_ORGANIZATION
    SUPPORTED_SIMILARITY_FN_NAMES = SIMILARITY_FN_NAMES
    model_card_data_class = ModelCardData

    @renamed_keywords(**RENAMED_INIT)
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
        local_files_only: bool = False,
        cache_folder: str | None = None,
        revision: str | None = None,
        *,
        modules: Any = None,
        trust_remote_code: bool = False,
        token: bool | str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        use_kernels: bool = False,
        kernel_config: Any = None,
        model_card_data: Any = None,
        backend: str = "torch",
    ) -> None:
        # Long for sentence-transformers' keywords; they are checked in parse_load_options.
        options, device = parse_load_options(
            device=device, dtype=dtype, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs,
            config_kwargs=config_kwargs, token=token, trust_remote_code=trust_remote_code, backend=backend,
            use_kernels=use_kernels, kernel_config=kernel_config, modules=modules,
        )
        target = device_or_default(device)
        max_seq_length = positive_int(max_seq_length, "max_seq_length")
        self.max_active_dims = positive_int(max_active_dims, "max_active_dims")
        self.model_card_data = model_card_data if model_card_data is not None else ModelCardData(local_files_only)
        folder = load_sparse_folder(
            resolve_model_path(model_name_or_path, local_files_only, cache_folder, revision, options.token,
                               SPARSE_ORGANIZATION)
        )
        self.model_path = folder.path
        self._folder = folder
        self._load_options = options
        self._settings = {"dtype": options.dtype, "max_seq_length": max_seq_length}  # what a pool worker rebuilds
        self.prompts = merge_prompts(prompts, folder.prompts)
        self.default_prompt_name = default_prompt_name or folder.default_prompt_name
        if self.default_prompt_name is not None:
            check_prompt_name(self.default_prompt_name, self.prompts, "default_prompt_name")
        self.similarity_fn_name = similarity_fn_name or folder.similarity_fn_name or "dot"
        if self.max_active_dims is None:
            self.max_active_dims = folder.max_active_dims
        self._heads: dict[str, RouteModel] = {
            name: SpladeModel(route, target, max_seq_length, options) if isinstance(route, SpladeRoute)
            else StaticModel(route, target, options)
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
        self._similarity_fn_name = check_similarity_fn_name(similarity_name(value), SIMILARITY_FN_NAMES)

    @property
    def tokenizer(self) -> Any:
        """The default route's tokenizer (every route shares the vocabulary)."""
        return self._route(None).tokenizer

    @property
    def max_seq_length(self) -> int:
        return self._route(None).tokenizer.model_max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        """The token limit of every route (a Router's query and document routes alike), and of pool workers."""
        value = positive_int(value, "max_seq_length", allow_none=False)
        for head in self._heads.values():
            head.max_seq_length = value
        self._settings["max_seq_length"] = value

    def get_embedding_dimension(self) -> int:
        """The vocabulary size: the width of every vector."""
        return self._route(None).vocab_size

    def to(self, device: str | torch.device) -> SparseEncoder:
        self._device = parse_device(device)
        for head in self._heads.values():
            head.to(self._device)
        return self

    def __repr__(self) -> str:
        return f"SparseEncoder({str(self.model_path)!r}, routes={list(self._heads)}, device={self.device})"

    # --- encoding ---------------------------------------------------------------------------------

    def _route(self, task: str | None) -> RouteModel:
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

    @renamed_keywords(**RENAMED_ENCODE)
    @torch.inference_mode()
    def encode(
        self,
        inputs: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = True,
        convert_to_sparse_tensor: bool = True,
        save_to_cpu: bool = False,
        device: str | torch.device | Sequence[str] | None = None,
        max_active_dims: int | None = None,
        pool: EncoderPool | None = None,
        chunk_size: int | None = None,
        task: str | None = None,
        max_batch_tokens: int | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sparse vectors [N, V] for inputs (texts; `sentences=` is accepted too), with sentence-transformers'
        arguments and result types.

        By default one sparse COO tensor [N, V] (a str gives [V]); convert_to_sparse_tensor=False gives it
        dense; convert_to_tensor=False a list of per-text tensors. max_active_dims (default: the model's)
        keeps each vector's largest weights. Texts are tokenized once, sorted by length and batched with at
        most batch_size texts and max_batch_tokens padded tokens per batch (defaults by device); results come
        back in input order, on the model's device unless save_to_cpu. task picks a Router route. device may
        be a list of devices, or pool a pool from start_multi_process_pool: the texts are then split into
        chunks of chunk_size across worker processes (results on the CPU).
        """
        single, texts = check_sentences(inputs)
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
        pooled, devices = placement(self, pool, device, chunk_size)
        if pooled:
            out = self._encode_in_pool(texts, pool, devices, chunk_size, bool(show_progress_bar), prompt=resolved,
                                       batch_size=batch_size, max_active_dims=max_active_dims, task=task,
                                       max_batch_tokens=max_batch_tokens)
        else:
            texts_in = [resolved + t for t in texts] if resolved else texts
            rows = self._route(task).encode(texts_in, batch_size, max_batch_tokens, max_active_dims,
                                           bool(show_progress_bar))
            out = rows.to_tensor(sparse=True)
        if not convert_to_sparse_tensor:
            out = out.to_dense()
        if save_to_cpu:
            out = out.cpu()
        if not convert_to_tensor or single:
            per_text = SparseRows.split(out) if convert_to_sparse_tensor else list(out.unbind(0))
            return per_text[0] if single else per_text
        return out

    @renamed_keywords(**RENAMED_ENCODE)
    def encode_query(self, inputs: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
                     **kwargs: Any):
        """encode with the "query" route and prompt (unless a prompt or prompt_name is given)."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, task="query", **kwargs)

    @renamed_keywords(**RENAMED_ENCODE)
    def encode_document(self, inputs: str | Sequence[str], prompt_name: str | None = None,
                        prompt: str | None = None, **kwargs: Any):
        """encode with the "document" route and the "document" (else "passage", else "corpus") prompt."""
        if prompt_name is None and prompt is None:
            prompt_name = next((name for name in DOCUMENT_PROMPT_NAMES if name in self.prompts), None)
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, task="document", **kwargs)

    # --- using the vectors ------------------------------------------------------------------------

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """[N, M] fp32 scores between every row of embeddings1 and of embeddings2 under similarity_fn_name (dot,
        cosine, or the negative euclidean / manhattan distance); sparse or dense tensors, lists of them, or numpy
        arrays."""
        a, b = as_dense_rows(embeddings1, "embeddings1"), as_dense_rows(embeddings2, "embeddings2")
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"embeddings1 has {a.shape[1]} dimensions but embeddings2 has {b.shape[1]}")
        if self.similarity_fn_name in DISTANCE_NORMS:
            return -torch.cdist(a, b.to(a.device), p=DISTANCE_NORMS[self.similarity_fn_name])
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


# encode_query and encode_document take encode's arguments (task aside) and pass them on: their signatures say so.
for _method in (SparseEncoder.encode_query, SparseEncoder.encode_document):
    _method.__signature__ = inspect.signature(SparseEncoder.encode)
