"""What every model type on the encode pipeline shares: its device, tokenizer and run options, the call of its
transformers model, and the Pipeline it keeps between calls."""

from __future__ import annotations

from typing import Any

import torch

from .pipeline import Pipeline
from .run import RunOptions


class PipelineOwner:
    """Mixed into Encoder and CrossEncoder: each holds a transformers model in _model (and the names its forward
    takes in _forward_args), its tokenizer in _tokenizer, its head in _head, its RunOptions in _run_options and a
    Pipeline (or None, rebuilt on next use) in _pipeline; _forward(features) gives what its head takes."""

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

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

    def _own_pipeline(self, pairs: bool = False) -> Pipeline:
        """The Pipeline of this model, made on first use (again after a change of device, dtype or options)."""
        if self._pipeline is None:
            self._pipeline = Pipeline(self._tokenizer, lambda features: self._forward(features), self._head,
                                      self.device, self._model.dtype, self._run_options, pairs)
        return self._pipeline
