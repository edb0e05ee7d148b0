"""What every model type on the encode pipeline shares: its device, tokenizer and run options, the call of its
transformers model, the Pipeline it keeps between calls, and where a call runs (this process or a pool's
workers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .._checks import parse_device, parse_device_list, positive_int
from .pipeline import Pipeline
from .run import RunOptions

if TYPE_CHECKING:
    from .pool import EncoderPool


def placement(model: Any, pool: Any, device: Any, chunk_size: Any) -> tuple[bool, list[str] | None]:
    """(whether a call runs in worker processes, the devices of a pool for this call only) from its pool, device
    and chunk_size arguments; a single device moves model there first."""
    positive_int(chunk_size, "chunk_size")
    if pool is not None:
        from .pool import EncoderPool

        if device is not None:
            raise ValueError("give either pool or device, not both: the pool's workers already have their devices")
        if not isinstance(pool, EncoderPool):
            raise TypeError(f"pool must be a pool from start_multi_process_pool, got {type(pool).__name__}")
        return True, None
    if isinstance(device, Sequence) and not isinstance(device, str):
        return True, parse_device_list(device, "device")
    target = parse_device(device)
    if target is not None and target != model.device:
        model.to(target)
    return False, None


class PoolMethods:
    """sentence-transformers' pool methods, for a model with worker_description (see encode/pool.py)."""

    def start_multi_process_pool(self, target_devices: Sequence[str] | None = None) -> EncoderPool:
        """Worker processes, each with a copy of this model on one device; pass the pool to encode / predict
        (pool=pool), stop it with stop_multi_process_pool (or use it in a with block)."""
        from .pool import start_multi_process_pool

        return start_multi_process_pool(self, None if target_devices is None else list(target_devices))

    @staticmethod
    def stop_multi_process_pool(pool: EncoderPool) -> None:
        """Stop a pool's worker processes."""
        pool.close()

    def _in_pool(self, pool: EncoderPool | None, devices: list[str] | None, run: Callable[[EncoderPool], Any]) -> Any:
        """run(pool) with the caller's pool, or with a pool on devices started for this call and stopped after."""
        if pool is not None:
            return run(pool)
        from .pool import start_multi_process_pool

        with start_multi_process_pool(self, devices) as own_pool:
            return run(own_pool)


class PreparedCopies:
    """copy.deepcopy and pickle of a model holding a prepared backbone in _model: what _rebuilt_on_copy names
    (pipelines: a native tokenizer, threads) starts afresh in the copy, rebuilt on first use, and the backbone,
    whose stand-in layers come back as the layers they stood for (StandIn.__reduce_ex__), is prepared again."""

    def _rebuilt_on_copy(self) -> dict[str, Any]:
        return {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, **self._rebuilt_on_copy()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from ..model.backbone import prepare_backbone

        self.__dict__.update(state)
        prepare_backbone(self._model)  # a no-op on a model already prepared (one shared by two owners)


class PipelineOwner(PreparedCopies):
    """Mixed into Encoder, CrossEncoder and each route of a SparseEncoder (sparse/heads.py): each holds a model in
    _model (a transformers model, with the names its forward takes in _forward_args), its tokenizer in
    _tokenizer, its head in _head, its RunOptions in _run_options and a Pipeline (or None, rebuilt on next use)
    in _pipeline; _forward(features) gives what its head takes."""

    special_tokens = True  # False: inputs are tokenized without the tokenizer's special tokens (a static bag)

    def _rebuilt_on_copy(self) -> dict[str, Any]:
        return {"_pipeline": None, "_limited_pipelines": None}

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_seq_length(self) -> int:
        """The token limit: longer inputs are truncated."""
        return self._tokenizer.model_max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self._tokenizer.model_max_length = positive_int(value, "max_seq_length", allow_none=False)
        self._token_limit_changed()

    def _token_limit_changed(self) -> None:
        """Drops what was built for the old token limit."""
        self._pipeline = None  # the pipeline's tokenizer copy truncates at the old limit

    @property
    def run_options(self) -> RunOptions:
        """How the model runs on CUDA: CUDA graphs or eager, and the attention kernel (see encode.run)."""
        return self._run_options

    @run_options.setter
    def run_options(self, value: RunOptions) -> None:
        if not isinstance(value, RunOptions):
            raise TypeError(f"run_options must be a sentfuse.encode.run.RunOptions, got {type(value).__name__}")
        self._run_options = value
        self._pipeline = None

    def _run_model(self, features: dict[str, torch.Tensor]) -> Any:
        """The transformers model's output for a batch of padded token ids, given the features its forward takes."""
        return self._model(**{k: v for k, v in features.items() if k in self._forward_args}, return_dict=True)

    def _own_pipeline(self, pairs: bool = False, max_length: int | None = None) -> Pipeline:
        """The Pipeline of this model, made on first use (again after a change of device, dtype or options); for
        a call's own token limit (max_length other than max_seq_length), one made for it, kept while the model's
        own pipeline stays valid."""
        if self._pipeline is None:
            self._pipeline = self._new_pipeline(pairs, None)
        base = self._pipeline
        if max_length is None or max_length == base.max_length:
            return base
        kept = getattr(self, "_limited_pipelines", None)
        if kept is None or kept[0] is not base:  # made for an older pipeline (device, dtype or options since)
            kept = self._limited_pipelines = (base, {})
        if max_length not in kept[1]:
            kept[1][max_length] = self._new_pipeline(pairs, max_length)
        return kept[1][max_length]

    def _new_pipeline(self, pairs: bool, max_length: int | None) -> Pipeline:
        return Pipeline(self._tokenizer, lambda features: self._forward(features), self._head, self.device,
                        self._model.dtype, self._run_options, pairs, self.special_tokens, max_length)
