"""What every model type on the encode pipeline exposes the same way: its device, tokenizer and run options."""

from __future__ import annotations

from typing import Any

import torch

from .run import RunOptions


class PipelineOwner:
    """Mixed into Encoder and CrossEncoder: each holds a transformers model in _model, its tokenizer in _tokenizer,
    its RunOptions in _run_options and a Pipeline (or None, rebuilt on next use) in _pipeline."""

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
