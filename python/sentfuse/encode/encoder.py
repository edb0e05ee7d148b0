"""Encoder: sentence-transformers-compatible sentence embeddings, pooled and normalized by sentfuse's ops."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._checks import check_calibration_rows, check_sentences, device_or_default, parse_device, parse_dtype, positive_int
from ..model.backbone import prepare_backbone, warn_if_emulated
from ..model.modules import (
    SIMILARITY_FN_NAMES,
    ModelFolder,
    ModelFolderError,
    StaticEmbeddingModule,
    check_prompt_name,
    check_similarity_fn_name,
    choose_prompt,
    load_model_folder,
    merge_prompts,
)
from ..model.card import ModelCardData
from ..model.compute import load_dtype
from ..model.options import parse_load_options, renamed_keywords
from ..model.pretrained import add_lowercasing, load_pretrained, set_token_limit
from ..model.resolve import ST_ORGANIZATION, resolve_model_path
from ..model.static import BAG_POOLING, StaticBackbone, load_static
from .bag import BagPipeline
from .finish import finish_sentence_embeddings, finish_token_embeddings
from .owner import PipelineOwner
from .pipeline import EncodeRequest, Pipeline
from .pooling import SentenceHead
from .quantize import check_precision
from .run import RunOptions
from .st_compat import SentenceTransformerMethods
from ..train.fit import FitMixin
from ..search.topk import semantic_search
from ..search.similarity import SIMILARITY_FUNCTIONS, as_embeddings, cos_sim, dot_score, similarity_name

if TYPE_CHECKING:
    from .pool import EncoderPool

logger = logging.getLogger(__name__)

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings")
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # encode_document's candidates, in ST's order


class Encoder(PipelineOwner, SentenceTransformerMethods, FitMixin):
    """Sentence embeddings from a sentence-transformers or Hugging Face model folder.

    Arguments and results follow sentence-transformers' SentenceTransformer. The backbone runs in
    transformers; pooling, L2 normalization and their fusion run in sentfuse's kernels.

    model_name_or_path: a sentence-transformers folder (modules.json), a plain Hugging Face model folder
        (mean pooling), a Hugging Face Hub name (downloaded into the Hugging Face cache unless
        local_files_only, as sentence-transformers does), or None for the bundled all-MiniLM-L6-v2.
    device: where the model runs; default CUDA when available, else CPU.
    dtype: float32, float16, bfloat16 (or float64) for the backbone; default as transformers loads the checkpoint.
    max_seq_length: token limit (longer inputs are truncated); default from the folder.
    truncate_dim: keep only the first truncate_dim features of each sentence embedding.
    prompts, default_prompt_name: as in sentence-transformers; they take precedence over the folder's.
    trust_remote_code, token, model_kwargs, processor_kwargs, config_kwargs, use_kernels, kernel_config,
        backend: sentence-transformers' loading keywords, handled as it does (see sentfuse.model.options);
        model_kwargs' dtype / torch_dtype and a one-device device_map become dtype and device, and backend
        must be "torch". tokenizer_kwargs and use_auth_token are accepted as deprecated spellings.
    model_card_data: kept as the attribute of that name (sentfuse writes no model card).
    """

    model_type = "SentenceTransformer"
    default_huggingface_organization = ST_ORGANIZATION
    SUPPORTED_SIMILARITY_FN_NAMES = SIMILARITY_FN_NAMES
    model_card_data_class = ModelCardData

    @renamed_keywords(tokenizer_kwargs="processor_kwargs", use_auth_token="token")
    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_seq_length: int | None = None,
        truncate_dim: int | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
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
        self.truncate_dim = positive_int(truncate_dim, "truncate_dim")
        if similarity_fn_name is not None:
            similarity_fn_name = check_similarity_fn_name(similarity_name(similarity_fn_name), SIMILARITY_FN_NAMES)
        self.model_card_data = model_card_data if model_card_data is not None else ModelCardData(local_files_only)

        folder = load_model_folder(
            resolve_model_path(model_name_or_path, local_files_only, cache_folder, revision, options.token)
        )
        self.model_path = folder.path
        self._module_list = folder.modules  # model[i]; the Dense modules are the ones the head runs
        self._load_options = options
        self._dtype_arg = options.dtype
        if self.truncate_dim is None:
            self.truncate_dim = folder.truncate_dim  # as sentence-transformers: the caller's, else the folder's

        self.prompts: dict[str, str] = merge_prompts(prompts, folder.prompts)
        self.default_prompt_name = default_prompt_name if default_prompt_name is not None else folder.default_prompt_name
        if self.default_prompt_name is not None:
            check_prompt_name(self.default_prompt_name, self.prompts, "default_prompt_name")
        self._similarity_fn_name = similarity_fn_name or folder.similarity_fn_name

        self._load(folder, target, options.dtype, max_seq_length)

    def _load(self, folder: ModelFolder, device: torch.device, dtype: torch.dtype | None, max_seq_length: int | None):
        self._prompt_lengths: dict[str, int] = {}
        self._run_options = RunOptions.from_env()
        self._pipeline: Pipeline | BagPipeline | None = None
        if isinstance(folder.transformer, StaticEmbeddingModule):
            self._load_static(folder, device, dtype, max_seq_length)
            return
        backbone = folder.transformer
        tokenizer, model = load_pretrained(backbone.path, dtype, self._load_options)

        set_token_limit(tokenizer, model.config, max_seq_length, backbone.max_seq_length)
        if backbone.do_lower_case:
            add_lowercasing(tokenizer)

        self._tokenizer = tokenizer
        self._model = prepare_backbone(model.eval().to(device))
        warn_if_emulated(device, self._model.dtype)
        self._forward_args = set(inspect.signature(model.forward).parameters)
        self._head = SentenceHead(folder.modules[1:], self._hidden_size(model.config), device, model.dtype, str(folder.path))
        self._dim = self._head.dim

    def _load_static(self, folder: ModelFolder, device: torch.device, dtype: torch.dtype | None,
                     max_seq_length: int | None) -> None:
        """A static-embedding folder: its table is the backbone and its bag the pooling (model.static)."""
        # A compute mode only changes how matrix products run: a static table has none, so it loads float32.
        self._tokenizer, self._model = load_static(folder.transformer, device, load_dtype(dtype), max_seq_length)
        modules = [BAG_POOLING, *folder.modules[1:]]
        self._head = SentenceHead(modules, self._model.dim, device, self._model.dtype, str(folder.path))
        self._dim = self._head.dim

    @staticmethod
    def _hidden_size(config: Any) -> int:
        for cfg in (config, getattr(config, "text_config", None)):
            size = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)
            if isinstance(size, int):
                return size
        raise ModelFolderError(f"cannot tell the hidden size of {type(config).__name__}")

    # --- properties -------------------------------------------------------------------------------

    def _token_limit_changed(self) -> None:
        super()._token_limit_changed()
        self._prompt_lengths.clear()  # a prompt's token count is capped by the limit

    @property
    def similarity_fn_name(self) -> str:
        return self._similarity_fn_name or "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str) -> None:
        self._similarity_fn_name = check_similarity_fn_name(similarity_name(value), SIMILARITY_FN_NAMES)

    def get_embedding_dimension(self) -> int:
        """Width of the sentence embeddings encode returns (after truncate_dim)."""
        return min(self._dim, self.truncate_dim) if self.truncate_dim else self._dim

    def get_sentence_embedding_dimension(self) -> int:
        """The same as get_embedding_dimension, under sentence-transformers' older name."""
        return self.get_embedding_dimension()

    def worker_kwargs(self) -> dict[str, Any]:
        """Encoder(**worker_kwargs(), device=...) rebuilds this encoder in another process (the pool's workers)."""
        return {
            "model_name_or_path": str(self.model_path),
            "dtype": self._dtype_arg,
            "max_seq_length": self.max_seq_length,
            "truncate_dim": self.truncate_dim,
            "prompts": dict(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "similarity_fn_name": self._similarity_fn_name,
            **self._load_options.constructor_kwargs(),
        }

    def worker_description(self) -> dict[str, Any]:
        """What a worker pool needs: factory(**kwargs, device=...) rebuilds this encoder in another process;
        encode's parameter names; the embedding width with and without truncate_dim."""
        return {
            "factory": type(self),
            "kwargs": self.worker_kwargs(),
            "encode_parameters": tuple(inspect.signature(type(self).encode).parameters),
            "dim": self.get_embedding_dimension(),
            "model_dim": self._dim,
        }

    def to(self, *args: Any, **kwargs: Any) -> Encoder:
        """Move and / or cast the model in place, with torch.nn.Module.to's arguments: to("cuda"),
        to(torch.float16), to("cpu", torch.float64), to(device=..., dtype=...)."""
        try:
            device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        except (TypeError, RuntimeError) as e:
            raise TypeError(f"to() takes a device and / or a floating dtype, as torch.nn.Module.to does: {e}") from None
        if dtype is not None:
            if not dtype.is_floating_point:
                raise TypeError(f"to() casts to floating dtypes only, got {dtype}")
            self._cast(dtype)
        if device is not None:
            target = parse_device(device)
            self._model.to(target)
            self._head.to(target)
            self._pipeline = None
        return self

    def __repr__(self) -> str:
        return (
            f"Encoder({str(self.model_path)!r}, pooling={'+'.join(self._head.pooling.modes)}, dim={self._dim}, "
            f"max_seq_length={self.max_seq_length}, device={self.device})"
        )

    # --- encoding ---------------------------------------------------------------------------------

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        return choose_prompt(self.prompts, self.default_prompt_name, prompt, prompt_name)

    def _prompt_length(self, prompt: str) -> int:
        """Tokens the prompt contributes at the start of a text: its tokenization minus a trailing special token."""
        if prompt not in self._prompt_lengths:
            ids = self._tokenize_unpadded([prompt])["input_ids"][0]
            n = len(ids)
            if n and ids[-1] in set(self._tokenizer.all_special_ids):
                n -= 1
            self._prompt_lengths[prompt] = n
        return self._prompt_lengths[prompt]

    def _tokenize_unpadded(self, texts: list[str]) -> dict[str, list[list[int]]]:
        return self._tokenizer(texts, padding=False, truncation="longest_first", max_length=self.max_seq_length)

    def _forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The backbone's last hidden state [B, L, H] for a batch of padded token ids on its device."""
        return self._run_model(features).last_hidden_state

    def _encode_pipeline(self) -> Pipeline | BagPipeline:
        if self._pipeline is None and isinstance(self._model, StaticBackbone):
            self._pipeline = BagPipeline(self._tokenizer, self._model, self._head, self.device, self._run_options)
        return self._own_pipeline()

    def _check_encode_args(
        self, output_value, precision, convert_to_numpy, convert_to_tensor, normalize_embeddings, show_progress_bar,
        n_texts: int,
    ) -> bool:
        """Raise on a bad flag; return whether to show a progress bar."""
        if output_value not in OUTPUT_VALUES and output_value is not None:
            raise ValueError(f"output_value must be one of {', '.join(OUTPUT_VALUES)} or None, got {output_value!r}")
        check_precision(precision)
        if output_value is None and precision != "float32":
            raise ValueError("output_value=None returns every output unquantized; precision must be 'float32'")
        for name, value in (
            ("convert_to_numpy", convert_to_numpy),
            ("convert_to_tensor", convert_to_tensor),
            ("normalize_embeddings", normalize_embeddings),
        ):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        if show_progress_bar is not None and not isinstance(show_progress_bar, (bool, np.bool_)):
            raise TypeError(f"show_progress_bar must be a bool or None, got {type(show_progress_bar).__name__}")
        if output_value == "sentence_embedding" and n_texts:  # nothing to quantize: an empty result, as there
            check_calibration_rows(n_texts, precision, "sentences",
                                   "encode more at once or quantize later with calibration embeddings")
        if show_progress_bar is None:
            return logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        return bool(show_progress_bar)

    @renamed_keywords(sentences="inputs")
    @torch.inference_mode()
    def encode(
        self,
        inputs: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | Sequence[str] | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: EncoderPool | None = None,
        chunk_size: int | None = None,
        max_batch_tokens: int | None = None,
        output_dtype: str | torch.dtype | None = "float32",
    ) -> np.ndarray | torch.Tensor | list:
        """Embed inputs (texts; `sentences=` is accepted too), with sentence-transformers' arguments and
        result types.

        A str gives one embedding [D]; a list gives [N, D] (numpy by default, one tensor with
        convert_to_tensor, a list of [D] tensors with convert_to_numpy=False). output_value
        "token_embeddings" gives a list of [n_tokens, H] tensors, padding removed; None gives, per text, a
        dict of every output (input_ids, attention_mask, token_embeddings cut to the text's tokens,
        sentence_embedding). precision int8, uint8, binary or ubinary quantizes as sentence-transformers'
        quantize_embeddings does, calibrating int8/uint8 ranges on the embeddings of this call.

        Texts are tokenized once (in a background thread, ahead of the model), sorted by token count
        and batched so that each batch holds at most batch_size texts and at most max_batch_tokens
        padded tokens; defaults depend on the device (see sentfuse.encode.plan). Results come back in
        input order. Sentence embeddings are returned as output_dtype (float32 by default; None keeps
        the backbone's dtype). device may be a list of devices, or pool a pool from
        start_multi_process_pool: the texts are then split into chunks of chunk_size across worker
        processes.
        """
        # Long for its signature and docstring (sentence-transformers' arguments); the body checks the
        # arguments and hands over to a pool or to the pipeline.
        single, texts = check_sentences(inputs)
        precision = "float32" if precision is None else precision  # sentence-transformers' evaluators pass None
        progress = self._check_encode_args(
            output_value, precision, convert_to_numpy, convert_to_tensor, normalize_embeddings, show_progress_bar,
            len(texts),
        )
        batch_size = positive_int(batch_size, "batch_size")
        max_batch_tokens = positive_int(max_batch_tokens, "max_batch_tokens")
        truncate_dim = positive_int(truncate_dim, "truncate_dim") or self.truncate_dim
        out_dtype = parse_dtype(output_dtype, "output_dtype")
        convert_to_numpy = convert_to_numpy and not convert_to_tensor
        devices = None
        if pool is not None or (isinstance(device, Sequence) and not isinstance(device, str)):
            devices = self._check_pool_args(pool, device, output_value)
        else:
            positive_int(chunk_size, "chunk_size")
            target = parse_device(device)
            if target is not None and target != self.device:
                self.to(target)
        resolved_prompt = self._resolve_prompt(prompt, prompt_name)

        if output_value is None:
            outputs = self._encode_all_outputs(texts, resolved_prompt, batch_size, truncate_dim)
            return outputs[0] if single else outputs
        tokens = output_value == "token_embeddings"
        if pool is not None or devices is not None:  # devices: a pool for this call only
            embeddings = self._encode_in_pool(
                texts, pool, devices, chunk_size, progress,
                prompt=resolved_prompt, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                normalize_embeddings=normalize_embeddings, truncate_dim=truncate_dim,
                output_value=output_value if tokens else None,
            )
            if tokens:
                return finish_token_embeddings(embeddings, single, precision)
            if out_dtype is not None and out_dtype != torch.float32:
                embeddings = embeddings.to(out_dtype)
            if not convert_to_numpy and not convert_to_tensor:
                embeddings = embeddings.to(self.device)
            return finish_sentence_embeddings(embeddings, single, precision, convert_to_numpy, convert_to_tensor)

        include_prompt = not resolved_prompt or self._head.pooling.include_prompt
        result = self._encode_pipeline().encode(EncodeRequest(
            texts=[resolved_prompt + t for t in texts] if resolved_prompt else texts,
            skip_tokens=0 if include_prompt else self._prompt_length(resolved_prompt),
            batch_size=batch_size, max_batch_tokens=max_batch_tokens,
            token_embeddings=tokens,
            dim=self._dim if truncate_dim is None else min(truncate_dim, self._dim),
            normalize=normalize_embeddings, out_dtype=out_dtype, progress=progress,
        ))
        if tokens:
            return finish_token_embeddings(result, single, precision)
        return finish_sentence_embeddings(result, single, precision, convert_to_numpy, convert_to_tensor)

    # --- several processes ------------------------------------------------------------------------

    def _check_pool_args(self, pool: Any, device: Any, output_value: str | None) -> list[str] | None:
        if output_value is None:
            raise ValueError("output_value=None is not available with a pool or a list of devices; encode in this "
                             "process, or ask the pool for 'sentence_embedding' or 'token_embeddings'")
        if pool is not None:
            if device is not None:
                raise ValueError("give either pool or device, not both: the pool's workers already have their devices")
            from .pool import EncoderPool

            if not isinstance(pool, EncoderPool):
                raise TypeError(f"pool must be an EncoderPool from start_multi_process_pool, got {type(pool).__name__}")
            return None
        devices = list(device)
        if not devices or not all(isinstance(d, (str, torch.device)) for d in devices):
            raise ValueError(f"device must be a device or a non-empty list of devices, got {device!r}")
        return [str(d) for d in devices]

    def _encode_in_pool(self, texts, pool, devices, chunk_size, show_progress_bar, **encode_kwargs):
        """float32 [N, D] embeddings (or a list of [n_tokens, H] token embeddings) from the pool's workers, or
        from a pool started for devices and stopped after."""
        from .pool import encode_multi_process, start_multi_process_pool

        kwargs = {k: v for k, v in encode_kwargs.items() if v is not None}
        if pool is not None:
            result = encode_multi_process(pool, texts, chunk_size=chunk_size, show_progress_bar=show_progress_bar, **kwargs)
        else:
            with start_multi_process_pool(self, devices) as own_pool:
                result = encode_multi_process(
                    own_pool, texts, chunk_size=chunk_size, show_progress_bar=show_progress_bar, **kwargs
                )
        if isinstance(result, list):
            return [torch.from_numpy(rows) for rows in result]
        return torch.from_numpy(np.ascontiguousarray(result, dtype=np.float32))

    def start_multi_process_pool(self, target_devices: Sequence[str] | None = None) -> EncoderPool:
        """Worker processes, each with a copy of this encoder on one device (sentence-transformers' name).

        Pass the pool to encode(..., pool=pool); stop it with stop_multi_process_pool (or use it in a with block).
        """
        from .pool import start_multi_process_pool

        return start_multi_process_pool(self, None if target_devices is None else list(target_devices))

    @staticmethod
    def stop_multi_process_pool(pool: EncoderPool) -> None:
        """Stop a pool's worker processes."""
        from .pool import stop_multi_process_pool

        stop_multi_process_pool(pool)

    def encode_multi_process(
        self,
        sentences: Sequence[str],
        pool: EncoderPool,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        show_progress_bar: bool | None = None,
        precision: str = "float32",
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
    ) -> np.ndarray:
        """encode(sentences, pool=pool, ...) as a numpy array, under sentence-transformers' older name."""
        return self.encode(
            sentences, pool=pool, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size, chunk_size=chunk_size,
            show_progress_bar=show_progress_bar, precision=precision, normalize_embeddings=normalize_embeddings,
            truncate_dim=truncate_dim,
        )

    @renamed_keywords(sentences="inputs")
    def encode_query(self, inputs: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
                     **kwargs: Any):
        """encode with the model's "query" prompt unless a prompt or prompt_name is given."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    @renamed_keywords(sentences="inputs")
    def encode_document(self, inputs: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
                        **kwargs: Any):
        """encode with the model's "document" (else "passage", else "corpus") prompt unless one is given."""
        if prompt_name is None and prompt is None:
            prompt_name = next((name for name in DOCUMENT_PROMPT_NAMES if name in self.prompts), None)
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """[N, M] scores between every row of embeddings1 and of embeddings2 under similarity_fn_name."""
        a = as_embeddings(embeddings1, "embeddings1")
        b = as_embeddings(embeddings2, "embeddings2")
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"embeddings1 has {a.shape[1]} features but embeddings2 has {b.shape[1]}")
        return SIMILARITY_FUNCTIONS[self.similarity_fn_name](a.float(), b.float())

    def search(
        self,
        queries: str | Sequence[str],
        corpus_embeddings: Any,
        top_k: int = 10,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        **search_kwargs: Any,
    ) -> list[dict[str, int | float]] | list[list[dict[str, int | float]]]:
        """Encode queries (as encode_query does) and return their semantic_search hits in corpus_embeddings.

        Scores follow similarity_fn_name (cosine or dot). A single query string gives its list of
        hits; a list of queries gives one list per query. search_kwargs go to semantic_search
        (exclude_self, min_score, corpus_chunk_size, ...).
        """
        if self.similarity_fn_name not in ("cosine", "dot"):
            raise ValueError(f"search ranks by cosine or dot; this model's similarity_fn_name is "
                             f"{self.similarity_fn_name!r}")
        query_embeddings = self.encode_query(
            queries, prompt_name=prompt_name, prompt=prompt, batch_size=batch_size, convert_to_tensor=True
        )
        score_function = dot_score if self.similarity_fn_name == "dot" else cos_sim
        hits = semantic_search(query_embeddings, corpus_embeddings, top_k=top_k, score_function=score_function,
                               **search_kwargs)
        return hits[0] if isinstance(queries, str) else hits


# encode_query and encode_document take encode's arguments and pass them on: their signatures say so.
for _method in (Encoder.encode_query, Encoder.encode_document):
    _method.__signature__ = inspect.signature(Encoder.encode)
