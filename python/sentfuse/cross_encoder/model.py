"""CrossEncoder: sentence-transformers' CrossEncoder (predict, rank) on sentfuse's encode pipeline.

Pairs go through the same machinery as Encoder's texts (encode/pipeline.py): tokenized together on every
core ahead of the model, batched by pair length within a padded-token budget, run eagerly on CPU or as
replayed CUDA graphs per shape on CUDA. The only part that differs is the head (head.py): the classifier's
logits instead of pooled sentence embeddings.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._checks import (
    check_pairs,
    device_or_default,
    parse_device,
    positive_int,
)
from ..encode.owner import PipelineOwner, PoolMethods, placement
from ..encode.pipeline import EncodeRequest, OutputHead, Pipeline
from ..encode.run import RunOptions
from ..model.backbone import backbone_state_dict, prepare_backbone, warn_if_emulated
from ..model.card import ModelCardData
from ..model.options import (
    NO_EFFECT_PREDICT,
    NO_EFFECT_RANK,
    RENAMED_CROSS_ENCODER_INIT,
    RENAMED_PREDICT,
    check_extra_keywords,
    parse_load_options,
    processing_token_limit,
    renamed_keywords,
)
from ..model.modules import ModelFolderError, check_prompt_name, choose_prompt, merge_prompts
from ..model.pretrained import add_lowercasing, load_pretrained, set_token_limit
from ..model.resolve import resolve_model_path
from .folder import CrossEncoderFolder, load_cross_encoder_folder
from .head import activation_path, default_activation, scores_from_logits
from .save import save_cross_encoder

if TYPE_CHECKING:
    from ..encode.pool import EncoderPool

logger = logging.getLogger(__name__)

CLASSIFIER_CLASS = "AutoModelForSequenceClassification"


class CrossEncoder(PipelineOwner, PoolMethods):
    """Scores for (text, text) pairs from a sentence-transformers CrossEncoder folder or a Hugging Face
    sequence-classification folder, with sentence-transformers 6.3's constructor, predict and rank.

    Keywords beyond sentence-transformers': dtype (float32, float16 or bfloat16 for the model; scores are
    float32 either way) and max_seq_length (the token limit; max_length is its older name). The loading
    keywords (trust_remote_code, token, model_kwargs, processor_kwargs, config_kwargs, use_kernels,
    kernel_config, backend, modules) are parsed as Encoder parses them (sentfuse.model.options); num_labels
    and classifier_dropout join config_kwargs; what sentfuse cannot honour (modules, other backends,
    keep_in_fp32_modules) raises an error naming it. Deprecated spellings (model_name, automodel_args,
    tokenizer_args, tokenizer_kwargs, config_args, cache_dir, default_activation_function) are accepted with
    a warning. local_files_only defaults to True: sentfuse never downloads unless asked.
    """

    @renamed_keywords(**RENAMED_CROSS_ENCODER_INIT)
    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        *,
        modules: Any = None,
        device: str | torch.device | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = True,
        token: bool | str | None = None,
        model_kwargs: dict | None = None,
        processor_kwargs: dict | None = None,
        config_kwargs: dict | None = None,
        use_kernels: bool = False,
        kernel_config: Any = None,
        model_card_data: Any = None,
        backend: str = "torch",
        num_labels: int | None = None,
        max_length: int | None = None,
        activation_fn: Callable | None = None,
        keep_in_fp32_modules: list[str] | None = None,
        dtype: str | torch.dtype | None = None,
        max_seq_length: int | None = None,
        classifier_dropout: float | None = None,
    ) -> None:
        # Long for sentence-transformers' keywords; they are checked in parse_load_options.
        options, device = parse_load_options(
            device=device, dtype=dtype, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs,
            config_kwargs=config_kwargs, token=token, trust_remote_code=trust_remote_code, backend=backend,
            use_kernels=use_kernels, kernel_config=kernel_config, modules=modules,
        )
        if keep_in_fp32_modules not in (None, []):
            raise ValueError(f"keep_in_fp32_modules={keep_in_fp32_modules!r} is not supported: sentfuse runs every "
                             "layer in the model's dtype (pass dtype='float32' instead)")
        if model_name_or_path is None:
            raise ValueError("model_name_or_path is required: a CrossEncoder folder, a Hugging Face "
                             "sequence-classification folder, or a hub name in the local cache")
        tokenizer_kwargs, config = dict(options.tokenizer_kwargs), dict(options.config_kwargs)
        limit = self._token_limit(max_seq_length, max_length, tokenizer_kwargs.pop("model_max_length", None))
        if classifier_dropout is not None:  # training only: no effect at inference, kept for save
            logger.warning("CrossEncoder: classifier_dropout is deprecated; use config_kwargs={'classifier_dropout': "
                           "%r}", classifier_dropout)
            config["classifier_dropout"] = classifier_dropout
        if num_labels is not None:
            config["num_labels"] = positive_int(num_labels, "num_labels")
        self.model_card_data = model_card_data if model_card_data is not None else ModelCardData(local_files_only)

        folder = load_cross_encoder_folder(
            resolve_model_path(model_name_or_path, local_files_only, cache_folder, revision, options.token))
        if not folder.has_classifier and "num_labels" not in config:
            config["num_labels"] = 1  # a new classifier on a bare backbone scores relevance, as in sentence-transformers
        self._load_options = replace(options, tokenizer_kwargs=tokenizer_kwargs, config_kwargs=config)
        self.model_path = folder.path
        self._folder = folder
        self.prompts: dict[str, str] = merge_prompts(prompts, folder.prompts, always=())
        self.default_prompt_name = default_prompt_name if default_prompt_name is not None else \
            folder.default_prompt_name
        if self.default_prompt_name is not None:
            check_prompt_name(self.default_prompt_name, self.prompts, "default_prompt_name")
        self._load(folder, device_or_default(device), limit)
        self.activation_fn: Callable = activation_fn or default_activation(
            self.num_labels, folder.activation_paths, str(folder.path), options.trust_remote_code)

    @staticmethod
    def _token_limit(max_seq_length: Any, max_length: Any, model_max_length: Any) -> int | None:
        """The one token limit asked for under any of its names (two different ones are an error)."""
        named = {"max_seq_length": max_seq_length, "max_length": max_length,
                 "processor_kwargs['model_max_length']": model_max_length}
        given = {name: positive_int(value, name) for name, value in named.items() if value is not None}
        if len(set(given.values())) > 1:
            raise ValueError(f"conflicting token limits: {given}; give one")
        return next(iter(given.values()), None)

    def _load(self, folder: CrossEncoderFolder, device: torch.device, limit: int | None) -> None:
        try:
            tokenizer, model = load_pretrained(folder.transformer.path, self._load_options.dtype, self._load_options,
                                               CLASSIFIER_CLASS)
        except RuntimeError as e:  # a classifier of another size than num_labels asks for, say
            raise ModelFolderError(f"cannot load the classifier in {folder.transformer.path}: {e}") from e
        if getattr(tokenizer, "chat_template", None) and not folder.transformer.modality_pinned:
            # sentence-transformers renders each pair through the template (query and document roles) there.
            raise NotImplementedError(
                f"the tokenizer of {folder.transformer.path} has a chat template (from the folder or "
                "processor_kwargs), through which sentence-transformers would render each pair; sentfuse scores "
                "plain (query, document) pairs only, so it does not load this folder rather than score it "
                "differently")
        set_token_limit(tokenizer, model.config, limit, folder.transformer.max_seq_length)
        if folder.transformer.do_lower_case:
            add_lowercasing(tokenizer)
        self._tokenizer = tokenizer
        self._model = prepare_backbone(model.eval().to(device))
        warn_if_emulated(device, self._model.dtype)
        self._forward_args = set(inspect.signature(model.forward).parameters)
        self._head = OutputHead(model.config.num_labels)  # the classifier's logits
        self._run_options = RunOptions.from_env()
        self._pipeline: Pipeline | None = None

    # --- properties -------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The transformers sequence-classification model (prepared for inference)."""
        return self._model

    @property
    def config(self) -> Any:
        return self._model.config

    @property
    def num_labels(self) -> int:
        return self._model.config.num_labels

    @property
    def max_length(self) -> int:
        warnings.warn("max_length was renamed to max_seq_length", DeprecationWarning, stacklevel=2)
        return self.max_seq_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        warnings.warn("max_length was renamed to max_seq_length", DeprecationWarning, stacklevel=2)
        self.max_seq_length = value

    @property
    def default_activation_function(self) -> Callable:
        warnings.warn("default_activation_function was renamed to activation_fn", DeprecationWarning, stacklevel=2)
        return self.activation_fn

    def to(self, device: str | torch.device) -> CrossEncoder:
        self._model.to(parse_device(device))
        self._pipeline = None
        return self

    def eval(self) -> CrossEncoder:
        """The model is always in inference mode; kept for scripts that call it."""
        return self

    def __repr__(self) -> str:
        return (f"CrossEncoder({str(self.model_path)!r}, num_labels={self.num_labels}, "
                f"max_seq_length={self.max_seq_length}, device={self.device})")

    # --- scoring ----------------------------------------------------------------------------------

    def _forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The classifier's logits [B, num_labels] for a batch of padded pairs on the model's device."""
        return self._run_model(features).logits

    @torch.inference_mode()
    def _logits(self, pairs: list[tuple[str, str]], prompt: str | None, batch_size: int | None,
                max_batch_tokens: int | None, progress: bool, max_length: int | None = None) -> torch.Tensor:
        """float32 logits [N, num_labels] on the model's device; the prompt goes before each pair's first text;
        pairs truncated at max_length tokens (default: max_seq_length)."""
        if prompt:
            pairs = [(prompt + first, second) for first, second in pairs]
        return self._own_pipeline(pairs=True, max_length=max_length).encode(EncodeRequest(
            texts=pairs, skip_tokens=0, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
            token_embeddings=False, dim=self.num_labels, normalize=False, out_dtype=torch.float32, progress=progress,
        ))

    def _pooled_logits(self, pairs, pool, devices, chunk_size, progress, **kwargs) -> torch.Tensor:
        """float32 logits [N, num_labels] on the CPU from the pool's workers (or a pool for devices, stopped after)."""
        from ..encode.pool import map_chunks

        rows = self._in_pool(pool, devices, lambda p: map_chunks(p, pairs, chunk_size, progress, kwargs, unit="pair"))
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

    @staticmethod
    def is_singular_input(inputs: Any) -> bool:
        """Whether inputs is one pair rather than a list of them, as predict tells them apart (sentence-transformers'
        method of that name)."""
        if isinstance(inputs, np.ndarray):
            return inputs.size > 0 and inputs.ndim < 2
        if isinstance(inputs, (list, tuple)):
            return len(inputs) > 0 and not isinstance(inputs[0], (list, tuple))
        return True

    @staticmethod
    def _flag(value: Any, name: str, allow_none: bool = False) -> bool | None:
        if value is None and allow_none:
            return None
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool{' or None' if allow_none else ''}, got {type(value).__name__}")
        return bool(value)

    @renamed_keywords(**RENAMED_PREDICT)
    def predict(
        self,
        inputs: Any = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        apply_softmax: bool | None = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | Sequence[str] | None = None,
        pool: EncoderPool | None = None,
        chunk_size: int | None = None,
        max_batch_tokens: int | None = None,
        processing_kwargs: dict[str, Any] | None = None,
        **extra: Any,
    ) -> np.ndarray | torch.Tensor | list:
        """Scores of (text, text) pairs, with sentence-transformers' arguments and result types.

        One pair gives one score; a list gives [N] (one label) or [N, num_labels] scores: numpy by default,
        one tensor with convert_to_tensor, a list of tensors with convert_to_numpy=False. The logits pass
        through activation_fn (default: the model's activation_fn: Sigmoid for one label unless the folder
        names another, else Identity), then a softmax over labels with apply_softmax. Pairs are batched by
        token count, at most batch_size pairs and max_batch_tokens padded tokens a batch (defaults by
        device, see sentfuse.encode.plan). device may be a list of devices, or pool a pool from
        start_multi_process_pool: the pairs are then split into chunks of chunk_size across processes.
        processing_kwargs={"text": {"max_length": n}} truncates this call's pairs at n tokens instead.
        """
        # Long for its signature and docstring (sentence-transformers' arguments); the body checks them
        # and hands over to a pool or to the pipeline.
        check_extra_keywords(extra, NO_EFFECT_PREDICT, "CrossEncoder.predict")
        max_length = processing_token_limit(processing_kwargs, "CrossEncoder.predict")
        single, pairs = check_pairs(inputs)
        progress = self._flag(show_progress_bar, "show_progress_bar", allow_none=True)
        if progress is None:
            progress = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        convert_to_numpy = self._flag(convert_to_numpy, "convert_to_numpy")
        convert_to_tensor = self._flag(convert_to_tensor, "convert_to_tensor")
        apply_softmax = bool(self._flag(apply_softmax, "apply_softmax", allow_none=True))
        if activation_fn is not None and not callable(activation_fn):
            raise TypeError(f"activation_fn must be callable, got {type(activation_fn).__name__}")
        batch_size = positive_int(batch_size, "batch_size")
        max_batch_tokens = positive_int(max_batch_tokens, "max_batch_tokens")
        pooled, devices = placement(self, pool, device, chunk_size)
        resolved = choose_prompt(self.prompts, self.default_prompt_name, prompt, prompt_name)

        if not pairs:
            scores = torch.tensor([], device="cpu" if pooled else self.device)
        else:
            if pooled:
                logits = self._pooled_logits(pairs, pool, devices, chunk_size, progress, prompt=resolved,
                                             batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                             max_length=max_length)
            else:
                logits = self._logits(pairs, resolved, batch_size, max_batch_tokens, progress, max_length)
            with torch.inference_mode():
                scores = scores_from_logits(logits, activation_fn or self.activation_fn, apply_softmax)
        if convert_to_tensor:
            out: Any = scores
        elif convert_to_numpy:
            out = scores.cpu().numpy() if len(scores) else np.array([])
        else:
            out = list(scores)
        return out[0] if single else out

    @renamed_keywords(activation_fct="activation_fn")
    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        device: str | torch.device | Sequence[str] | None = None,
        pool: EncoderPool | None = None,
        chunk_size: int | None = None,
        max_batch_tokens: int | None = None,
        **extra: Any,
    ) -> list[dict[str, int | float | str]]:
        """documents ranked by their score against query, best first (ties keep input order), as
        [{"corpus_id", "score"(, "text" with return_documents)}]; the top_k best only when given. Only for
        single-label models; the other arguments are predict's."""
        check_extra_keywords(extra, NO_EFFECT_RANK, "CrossEncoder.rank")
        if self.num_labels != 1:
            raise ValueError(f"rank needs a model with one label; this one has num_labels={self.num_labels}: "
                             "use predict with (query, document) pairs instead")
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if isinstance(documents, (str, bytes)) or documents is None or not isinstance(documents, Sequence):
            raise TypeError(f"documents must be a list of str, got {type(documents).__name__}")
        for i, document in enumerate(documents):
            if not isinstance(document, str):
                raise TypeError(f"documents[{i}] is {type(document).__name__}, expected str")
        top_k = positive_int(top_k, "top_k")
        return_documents = self._flag(return_documents, "return_documents")
        scores = self.predict([(query, d) for d in documents], prompt_name=prompt_name, prompt=prompt,
                              batch_size=batch_size, show_progress_bar=show_progress_bar, activation_fn=activation_fn,
                              convert_to_tensor=True, device=device, pool=pool, chunk_size=chunk_size,
                              max_batch_tokens=max_batch_tokens).tolist()
        order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)  # stable: ties keep input order
        hits = [{"corpus_id": i, "score": scores[i]} | ({"text": documents[i]} if return_documents else {})
                for i in order]
        return hits[:top_k]

    # --- several processes ------------------------------------------------------------------------

    def worker_description(self) -> dict[str, Any]:
        """What a worker pool needs: factory(**kwargs, device=...) rebuilds this model in another process, and
        its encode(pairs, prompt=..., batch_size=..., max_batch_tokens=..., max_length=...) returns float32 logits."""
        from .workers import PairScorer

        kwargs = {"model_name_or_path": str(self.model_path), "dtype": self._load_options.dtype,
                  "max_seq_length": self.max_seq_length, **self._load_options.constructor_kwargs()}
        return {"factory": PairScorer, "kwargs": kwargs,
                "encode_parameters": ("prompt", "batch_size", "max_batch_tokens", "max_length"),
                "dim": self.num_labels, "model_dim": self.num_labels}

    # --- saving -----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, model_name: str | None = None, create_model_card: bool = True,
             train_datasets: list[str] | None = None, safe_serialization: bool = True) -> None:
        """Write the model to folder `path` in sentence-transformers 6's CrossEncoder layout, which both
        libraries load. Its weights, max_seq_length, dtype, prompts and activation_fn are the model's now. The
        other arguments are accepted for compatibility: no model card is written, weights are always safetensors."""
        save_cross_encoder(path, self._folder, self._tokenizer, self._model.dtype, {
            "prompts": dict(self.prompts),
            "default_prompt_name": self.default_prompt_name,
            "activation_fn": activation_path(self.activation_fn),
        }, self._load_options, backbone_state_dict(self._model))

    def save_pretrained(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """save, under its Hugging Face name."""
        self.save(path, **kwargs)
