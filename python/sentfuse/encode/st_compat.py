"""The SentenceTransformer methods scripts call besides encode, mixed into Encoder.

Kept apart from the encode path: each method here only reads or casts the state Encoder loads
(tokenizer, backbone, Dense stages, prompts) and behaves as sentence-transformers' method of the
same name does.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..model.backbone import backbone_state_dict
from ..model.modules import DenseModule, load_model_folder
from ..model.save import save_model_folder
from ..search.similarity import PAIRWISE_SIMILARITY_FUNCTIONS


class SentenceTransformerMethods:
    """tokenize, half / float, save / save_pretrained, similarity_pairwise and eval, for Encoder."""

    def tokenize(self, texts: list[str] | list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Padded token ids and attention mask [N, L] of texts (or of (text, text) pairs), truncated to
        max_seq_length, as the model reads them."""
        texts = list(texts)
        pairs = bool(texts) and all(isinstance(t, (tuple, list)) and len(t) == 2 for t in texts)
        columns = list(zip(*texts)) if pairs else [texts]
        return dict(self._tokenizer(
            *[list(c) for c in columns], padding=True, truncation="longest_first", max_length=self.max_seq_length,
            return_tensors="pt",
        ))

    def _cast(self, dtype: torch.dtype) -> Any:
        self._model.to(dtype)
        self._head.to(dtype=dtype)
        self._pipeline = None  # built for the old dtype
        self._dtype_arg = dtype  # pool workers rebuild the encoder in this dtype
        return self

    def half(self) -> Any:
        """Run the backbone and Dense layers in float16 (in place; returns the encoder)."""
        return self._cast(torch.float16)

    def float(self) -> Any:
        """Run the backbone and Dense layers in float32 (in place; returns the encoder)."""
        return self._cast(torch.float32)

    def eval(self) -> Any:
        """The encoder is always in inference mode; kept for scripts that call it."""
        return self

    def save(
        self,
        path: str | os.PathLike,
        model_name: str | None = None,
        create_model_card: bool = True,
        train_datasets: list[str] | None = None,
        safe_serialization: bool = True,
    ) -> None:
        """Write the model to folder `path` in sentence-transformers' layout (modules.json, the backbone and
        tokenizer, Pooling / Dense / Normalize folders, prompts and similarity function), which both
        sentfuse and sentence-transformers load. Its max_seq_length and dtype are the encoder's now.
        The other arguments are accepted for compatibility: no model card is written, weights are
        always safetensors."""
        save_model_folder(
            path, self._live_folder(), self._tokenizer, self._model.dtype,
            {
                "prompts": dict(self.prompts),
                "default_prompt_name": self.default_prompt_name,
                "similarity_fn_name": self.similarity_fn_name,
            },
            backbone_state_dict(self._model),
        )

    def _live_folder(self) -> Any:
        """The model folder's description with the Dense layers this encoder runs (fine-tuning changes them)."""
        folder = load_model_folder(self.model_path)
        live = iter([m for m in self._head.post if isinstance(m, DenseModule)])
        folder.modules = [next(live) if isinstance(m, DenseModule) else m for m in folder.modules]
        return folder

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """save, under its Hugging Face name."""
        self.save(path, **kwargs)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """[N] scores of embeddings1[i] against embeddings2[i] under similarity_fn_name."""
        return PAIRWISE_SIMILARITY_FUNCTIONS[self.similarity_fn_name](embeddings1, embeddings2)
