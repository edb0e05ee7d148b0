"""The SentenceTransformer methods scripts call besides encode, mixed into Encoder.

Kept apart from the encode path: each method here only reads or casts the state Encoder loads
(tokenizer, backbone, Dense stages, prompts) and behaves as sentence-transformers' method of the
same name does. What sentfuse does not offer is listed, with the reason, in the README's "Not supported"
list (tests/test_name_coverage.py holds the two together).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from .._checks import device_or_default, positive_int
from ..model.backbone import backbone_state_dict
from ..model.modules import DenseModule, StaticEmbeddingModule, TransformerModule, load_model_folder
from ..model.save import save_model_folder
from ..model.static import StaticBackbone
from ..search.similarity import PAIRWISE_SIMILARITY_FUNCTIONS

ALL_OUTPUTS_BATCH_SIZE = 32  # encode(output_value=None) runs plain padded batches of this many texts by default


class SentenceTransformerMethods:
    """tokenize, half / float, save / save_pretrained, similarity_pairwise and eval, for Encoder."""

    def tokenize(self, texts: list[str] | list[tuple[str, str]], **kwargs: Any) -> dict[str, torch.Tensor]:
        """Padded token ids and attention mask [N, L] of texts (or of (text, text) pairs), truncated to
        max_seq_length, as the model reads them, kwargs going to the tokenizer call; a static-embedding model's
        packed ids and offsets."""
        texts = list(texts)
        if isinstance(self._model, StaticBackbone):
            return self._tokenize_packed(texts)
        pairs = bool(texts) and all(isinstance(t, (tuple, list)) and len(t) == 2 for t in texts)
        columns = list(zip(*texts)) if pairs else [texts]
        options = {"padding": True, "truncation": "longest_first", "max_length": self.max_seq_length,
                   "return_tensors": "pt"} | kwargs
        return dict(self._tokenizer(*[list(c) for c in columns], **options))

    def _tokenize_packed(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """A static-embedding model's input as sentence-transformers' StaticEmbedding gives it: every text's
        ids without special tokens, one after another [T], and where each text starts [N]."""
        # encode's bag pipeline holds the same tokenizer (no special tokens, max_seq_length), built once, not per
        # call (a fresh one copies the Rust tokenizer and the native WordPiece's vocabulary).
        chunk = self._encode_pipeline().chunk_tokenizer(texts)
        return {"input_ids": torch.from_numpy(chunk.ids), "offsets": torch.from_numpy(chunk.offsets[:-1])}

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
                "truncate_dim": self.truncate_dim,
            },
            backbone_state_dict(self._model),
        )

    def _live_folder(self) -> Any:
        """The model folder's description with the Dense layers (and a static model's table) this encoder runs
        (fine-tuning changes them)."""
        folder = load_model_folder(self.model_path)
        live = iter([m for m in self._head.post if isinstance(m, DenseModule)])
        folder.modules = [next(live) if isinstance(m, DenseModule) else m for m in folder.modules]
        if isinstance(folder.modules[0], StaticEmbeddingModule):  # and the table it runs (fine-tuned, say)
            folder.modules[0] = replace(folder.modules[0], table=self._model.table.detach().cpu())
        return folder

    save_pretrained = save  # sentence-transformers' Hugging Face name for save, same parameters

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """[N] scores of embeddings1[i] against embeddings2[i] under similarity_fn_name."""
        return PAIRWISE_SIMILARITY_FUNCTIONS[self.similarity_fn_name](embeddings1, embeddings2)

    # --- sentence-transformers' BaseModel surface ------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's dtype."""
        return self._model.dtype

    @property
    def transformers_model(self) -> Any:
        """The Hugging Face backbone (prepared for inference: pooler dropped, linear layers repacked on CPU)."""
        return self._model

    @property
    def config(self) -> Any:
        """The backbone's Hugging Face config."""
        return self._model.config

    @property
    def processor(self) -> Any:
        """The tokenizer (sentence-transformers' name for a model's input processor)."""
        return self._tokenizer

    @property
    def modalities(self) -> list[str]:
        return ["text"]

    def supports(self, modality: str | tuple[str, ...]) -> bool:
        """Whether the model reads this input modality (sentfuse's models read text)."""
        return modality == "text"

    @staticmethod
    def get_backend() -> str:
        return "torch"

    @staticmethod
    def get_model_kwargs() -> list[str]:
        """Extra keywords encode passes to the modules: none (sentfuse's modules take no task or adapter keywords)."""
        return []

    @staticmethod
    def get_device_name() -> str:
        """The device a model goes to when none is given: "cuda" where torch sees one, else "cpu"."""
        return str(device_or_default(None))

    def get_max_seq_length(self) -> int:
        return self.max_seq_length

    @staticmethod
    def is_singular_input(inputs: Any) -> bool:
        """Whether encode treats inputs as one text (and returns one embedding)."""
        return isinstance(inputs, str)

    def set_pooling_include_prompt(self, include_prompt: bool) -> None:
        """Whether pooling averages over the prompt's tokens too (instruction models leave them out)."""
        if not isinstance(include_prompt, bool):
            raise TypeError(f"include_prompt must be a bool, got {type(include_prompt).__name__}")
        self._head.pooling.include_prompt = include_prompt

    def cpu(self) -> Any:
        return self.to("cpu")

    def cuda(self, device: int | torch.device | None = None) -> Any:
        return self.to("cuda" if device is None else torch.device("cuda", device) if isinstance(device, int) else device)

    @contextmanager
    def truncate_embeddings(self, truncate_dim: int | None) -> Iterator[None]:
        """Inside the block, encode returns sentence embeddings cut to their first truncate_dim features."""
        saved = self.truncate_dim
        self.truncate_dim = positive_int(truncate_dim, "truncate_dim")
        try:
            yield
        finally:
            self.truncate_dim = saved

    @contextmanager
    def truncate_sentence_embeddings(self, truncate_dim: int | None) -> Iterator[None]:
        """truncate_embeddings, under its older name."""
        with self.truncate_embeddings(truncate_dim):
            yield

    def evaluate(self, evaluator: Any, output_path: str | None = None) -> dict[str, float] | float:
        """Run a sentence-transformers evaluator on this model (it calls encode / similarity); its results go to
        output_path (created if missing) when given, and into model_card_data."""
        if output_path is not None:
            os.makedirs(output_path, exist_ok=True)
        return evaluator(self, output_path)

    @staticmethod
    def load(input_path: str) -> Any:
        """Encoder(input_path), under sentence-transformers' deprecated name."""
        from .encoder import Encoder

        return Encoder(input_path)

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The model's input tensors for texts: tokenize of each text with prompt in front, and their modality
        ("text", as sentence-transformers 6 marks its features)."""
        return {**self.tokenize([prompt + text for text in inputs] if prompt else list(inputs), **kwargs),
                "modality": "text"}

    @torch.inference_mode()
    def forward(self, input: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        """sentence-transformers' forward: the features of tokenize / preprocess with token_embeddings [B, L, H]
        and sentence_embedding [B, D] added (prompt tokens are left out of pooling by a "prompt_length"
        entry, as sentence-transformers' Pooling reads it)."""
        if kwargs:
            raise TypeError(f"forward takes no model keywords (get_model_kwargs() is empty), got {sorted(kwargs)}")
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in input.items()}
        hidden = self._forward(features)
        skip = 0 if self._head.pooling.include_prompt else int(features.get("prompt_length", 0))
        sentence = self._head(hidden, features["attention_mask"], skip)
        return {**features, "token_embeddings": hidden, "sentence_embedding": sentence}

    def _encode_all_outputs(self, texts: list[str], prompt: str | None, batch_size: int | None,
                            truncate_dim: int | None) -> list[dict[str, Any]]:
        """encode(output_value=None): per text, forward's outputs for it alone: per-token entries cut to the
        text's own tokens, sentence_embedding cut to truncate_dim."""
        step = batch_size or ALL_OUTPUTS_BATCH_SIZE
        rows: list[dict[str, Any]] = []
        for start in range(0, len(texts), step):
            features = self.preprocess(texts[start : start + step], prompt)
            if prompt:
                features["prompt_length"] = self._prompt_length(prompt)
            out = self.forward(features)
            mask = out["attention_mask"].bool()
            for i, valid in enumerate(mask):
                row = {}
                for name, value in out.items():
                    if isinstance(value, torch.Tensor) and value.shape[:2] == mask.shape:
                        row[name] = value[i][valid]
                    elif isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == len(mask):
                        row[name] = value[i]
                    else:
                        row[name] = value
                row["sentence_embedding"] = row["sentence_embedding"][:truncate_dim]
                rows.append(row)
        return rows

    # --- modules, as model[i] and len(model) -------------------------------------------------------

    def __len__(self) -> int:
        return len(self._module_list)

    def __getitem__(self, index: int) -> Any:
        """The index-th module: model[0] the backbone (auto_model, tokenizer, max_seq_length), then Pooling,
        Dense (torch modules, live) and Normalize as sentfuse reads them from the folder."""
        module = self._module_list[index]
        return BackboneModule(self) if isinstance(module, TransformerModule) else module

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))


class BackboneModule:
    """model[0]: the Transformer module's attributes scripts read, backed by the running encoder."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder

    @property
    def auto_model(self) -> Any:
        return self._encoder.transformers_model

    model = auto_model

    @property
    def tokenizer(self) -> Any:
        return self._encoder.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self._encoder.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self._encoder.max_seq_length = value

    def __repr__(self) -> str:
        return f"Transformer({type(self.auto_model).__name__}, max_seq_length={self.max_seq_length})"
