"""The SparseEncoder methods scripts call besides encode, mixed into SparseEncoder: pairwise scores and
intersections, saving, worker pools (the Encoder's pool machinery, encode/pool.py), and
sentence-transformers' remaining accessors. Each behaves as sentence-transformers' method of the same name.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .._checks import device_or_default
from ..encode.owner import PoolMethods
from ..model.modules import ST_CONFIG, TRANSFORMER_CONFIG_FILES
from ..model.save import replace_folder_entries
from .folder import DISTANCE_NORMS, SpladeRoute
from .vectors import as_dense_rows

logger = logging.getLogger(__name__)


class SparseEncoderMethods(PoolMethods):
    """similarity_pairwise, intersection, save / save_pretrained, worker pools (start / stop_multi_process_pool
    from PoolMethods) and the small accessors, for SparseEncoder."""

    # --- accessors ------------------------------------------------------------------------------------

    @staticmethod
    def get_device_name() -> str:
        """The device a model goes to when none is given: "cuda" where torch sees one, else "cpu"."""
        return str(device_or_default(None))

    def get_sentence_embedding_dimension(self) -> int:
        """get_embedding_dimension, under sentence-transformers' older name."""
        return self.get_embedding_dimension()

    @property
    def transformers_model(self) -> Any:
        """The default route's Hugging Face masked-LM backbone (its vocabulary projection runs in splade_pool),
        or None for an inference-free (static) route."""
        return self._route(None).transformers_model

    def set_pooling_include_prompt(self, include_prompt: bool) -> None:
        """SPLADE pooling takes every token, prompt included, in sentfuse as in sentence-transformers (whose
        setting only reaches a dense Pooling module, which SPLADE models do not have)."""
        if not isinstance(include_prompt, bool):
            raise TypeError(f"include_prompt must be a bool, got {type(include_prompt).__name__}")
        if not include_prompt:
            logger.warning("set_pooling_include_prompt(False) has no effect on a SPLADE model: SpladePooling pools "
                           "every token, prompt included (as in sentence-transformers)")

    # --- using the vectors ----------------------------------------------------------------------------

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """[N] fp32 scores of embeddings1[i] against embeddings2[i] under similarity_fn_name (as similarity);
        sparse or dense tensors, lists of them, or numpy arrays."""
        a, b = as_dense_rows(embeddings1, "embeddings1"), as_dense_rows(embeddings2, "embeddings2")
        if a.shape != b.shape:
            raise ValueError(f"embeddings1 {tuple(a.shape)} and embeddings2 {tuple(b.shape)} must have the same shape")
        b = b.to(a.device)
        if self.similarity_fn_name in DISTANCE_NORMS:
            return -(a - b).norm(p=DISTANCE_NORMS[self.similarity_fn_name], dim=1)
        scores = (a * b).sum(dim=1)
        if self.similarity_fn_name == "cosine":
            scores = torch.nan_to_num(scores / (a.norm(dim=1) * b.norm(dim=1)), nan=0.0)
        return scores

    @staticmethod
    def intersection(embeddings_1: torch.Tensor, embeddings_2: torch.Tensor) -> torch.Tensor:
        """The dimensions embeddings_1 [V] shares with embeddings_2 ([V] or [N, V]), weighted by the product of
        both weights: a sparse tensor of embeddings_2's shape holding only the positive products (what
        decode shows as the tokens two texts match on)."""
        if not isinstance(embeddings_1, torch.Tensor) or embeddings_1.dim() != 1:
            raise ValueError(f"embeddings_1 must be one vector [V], got {getattr(embeddings_1, 'shape', embeddings_1)}")
        if not isinstance(embeddings_2, torch.Tensor) or embeddings_2.dim() not in (1, 2):
            raise ValueError(f"embeddings_2 must be [V] or [N, V], got {getattr(embeddings_2, 'shape', embeddings_2)}")
        if embeddings_1.shape[-1] != embeddings_2.shape[-1]:
            raise ValueError(f"embeddings_1 has {embeddings_1.shape[-1]} dimensions but embeddings_2 has "
                             f"{embeddings_2.shape[-1]}")
        dense_1 = embeddings_1.to_dense() if embeddings_1.is_sparse else embeddings_1
        dense_2 = embeddings_2.to_dense() if embeddings_2.is_sparse else embeddings_2
        product = dense_1.to(dense_2.device) * dense_2
        return (product * (product > 0)).to_sparse()

    # --- saving ---------------------------------------------------------------------------------------

    def save(
        self,
        path: str | os.PathLike,
        model_name: str | None = None,
        create_model_card: bool = True,
        train_datasets: list[str] | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write the model to folder `path` in sentence-transformers' SparseEncoder layout, which both sentfuse
        and sentence-transformers load: the source folder's modules and weights as they are (sentfuse never
        changes weights; dtype is chosen when loading), with this encoder's prompts, similarity function,
        max_active_dims and max_seq_length. The other arguments are accepted for compatibility: no model card
        is written."""
        source = Path(self.model_path)

        def fill(out: Path) -> None:
            shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
            self._write_settings(out)

        replace_folder_entries(path, fill)

    save_pretrained = save  # sentence-transformers' Hugging Face name for save, same parameters

    def _write_settings(self, out: Path) -> None:
        """This encoder's settings over the copied folder's config files."""
        config_path = out / ST_CONFIG
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        config.update({
            "model_type": "SparseEncoder",
            "prompts": dict(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self.similarity_fn_name,
            "max_active_dims": self.max_active_dims,
        })
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name, route in self._folder.routes.items():
            if not isinstance(route, SpladeRoute):
                continue
            folder = out / route.path.relative_to(self.model_path)
            config_file = next((folder / n for n in TRANSFORMER_CONFIG_FILES if (folder / n).is_file()),
                               folder / TRANSFORMER_CONFIG_FILES[0])
            backbone = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
            backbone["max_seq_length"] = self._heads[name].tokenizer.model_max_length
            config_file.write_text(json.dumps(backbone, indent=2) + "\n", encoding="utf-8")

    # --- several processes ----------------------------------------------------------------------------

    def worker_description(self) -> dict[str, Any]:
        """What a worker pool needs (see Encoder.worker_description): factory(**kwargs, device=...) rebuilds this
        encoder in another process."""
        kwargs = {
            "model_name_or_path": str(self.model_path),
            **self._settings,
            "prompts": dict(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self.similarity_fn_name,
            "max_active_dims": self.max_active_dims,
            **self._load_options.constructor_kwargs(),
        }
        dim = self.get_embedding_dimension()
        return {"factory": type(self), "kwargs": kwargs, "dim": dim, "model_dim": dim,
                "encode_parameters": tuple(inspect.signature(type(self).encode).parameters)}

    def _encode_in_pool(self, texts: list[str], pool: Any, devices: list[str] | None, chunk_size: int | None,
                        show_progress_bar: bool, **encode_kwargs: Any) -> torch.Tensor:
        """Sparse COO [N, V] float32 vectors (on the CPU) from the pool's workers, or from a pool started for
        devices and stopped after."""
        from ..encode.pool import encode_multi_process

        kwargs = {k: v for k, v in encode_kwargs.items() if v is not None}
        result = self._in_pool(pool, devices, lambda p: encode_multi_process(
            p, texts, chunk_size=chunk_size, show_progress_bar=show_progress_bar, **kwargs))
        return result if isinstance(result, torch.Tensor) else torch.from_numpy(result).to_sparse()
