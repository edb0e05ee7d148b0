"""SentenceTransformerTrainer: transformers.Trainer driving a sentfuse Encoder.

transformers does the optimizer, schedule, gradient accumulation, bf16 autocast (through accelerate),
logging, checkpoint rotation and resuming; this class supplies what is particular to sentence
embeddings: the datasets' column conventions, the loss over embedded columns, batch samplers,
evaluators, checkpoints as model folders and a stop with the batch named when the loss turns NaN.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import DistributedType
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback

from ..model.backbone import cpu_has_native
from .args import SentenceTransformerTrainingArguments
from .checkpoint import load_weights
from .clipping import clip_grad_norm
from .data import TextPairCollator, dataset_columns
from .mode import inference_mode, trainable_modules, training_mode
from .samplers import BatchSamplers, NoDuplicatesBatchSampler, ShuffledBatchSampler

if TYPE_CHECKING:
    from ..encode.encoder import Encoder


logger = logging.getLogger(__name__)


def _drop_emulated_bf16(args: SentenceTransformerTrainingArguments) -> None:
    """bf16=True on a CPU where oneDNN has no bf16 matrix kernels (those need AVX-512) trains in float32 instead,
    with a warning: there torch multiplies bf16 matrices element by element, ~25x slower than float32 (2-core
    AVX2 EPYC, CoSENT on STS-B: 1.5 against 37 samples/s), and float32 is the more accurate of the two."""
    if args.bf16 and args.device.type == "cpu" and not cpu_has_native(torch.bfloat16):
        logger.warning("bf16=True: oneDNN has no bf16 matrix kernels for this CPU (they need AVX-512), so torch's "
                       "bf16 products run ~25x slower than float32 here; training in float32 instead")
        args.bf16 = False
        args.mixed_precision = "no"  # what accelerate reads; TrainingArguments set it from bf16


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped (checkpoints saved before this step are intact)."""


class _TrainModule(nn.Module):
    """The encoder's trainable layers and the loss as one nn.Module, which is what Trainer optimizes."""

    def __init__(self, encoder: Encoder, loss: nn.Module) -> None:
        super().__init__()
        self.layers = trainable_modules(encoder)
        self.loss = loss

    def forward(self, columns, labels=None, texts=None) -> torch.Tensor:
        loss = self.loss(columns, labels)
        # A loss may return named terms (GlobalOrthogonalRegularizationLoss): their sum is what trains.
        return torch.stack(list(loss.values())).sum() if isinstance(loss, dict) else loss


class LossProgressCallback(ProgressCallback):
    """transformers' progress bar, with the latest logged loss on the bar instead of a printed dict per log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")
            return
        super().on_log(args, state, control, logs=logs, **kwargs)


class SentenceTransformerTrainer(Trainer):
    """Trainer(model=Encoder, args, train_dataset, eval_dataset, loss, evaluator, callbacks), as in
    sentence-transformers. Datasets are datasets.Dataset with text columns in the loss's order and an
    optional 'label' / 'score' column. loss defaults to CoSENTLoss for labelled pairs, else
    MultipleNegativesRankingLoss."""

    def __init__(self, model: Encoder, args: SentenceTransformerTrainingArguments | None = None,
                 train_dataset: Any = None, eval_dataset: Any = None, loss: nn.Module | None = None,
                 evaluator: Any = None, callbacks: list | None = None, **kwargs: Any) -> None:
        if args is None:
            args = SentenceTransformerTrainingArguments(output_dir="checkpoints/model")
        if not isinstance(args, SentenceTransformerTrainingArguments):
            raise TypeError(f"args must be SentenceTransformerTrainingArguments, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset is required: a datasets.Dataset of text columns")
        _drop_emulated_bf16(args)
        self.encoder = model
        self.columns = dataset_columns(train_dataset)
        if eval_dataset is not None:
            dataset_columns(eval_dataset, "eval_dataset")
        self.loss = loss if loss is not None else self._default_loss(model)
        self.evaluator = evaluator
        # Trainer refuses evaluation without an eval_dataset; an evaluator alone is enough here.
        no_rows = [] if evaluator is not None else None
        super().__init__(model=_TrainModule(model, self.loss), args=args,
                         data_collator=TextPairCollator(model, self.columns), train_dataset=train_dataset,
                         eval_dataset=eval_dataset if eval_dataset is not None else no_rows, callbacks=callbacks,
                         **kwargs)
        self.remove_callback(ProgressCallback)
        if not args.disable_tqdm:
            self.add_callback(LossProgressCallback)

    def _default_loss(self, model: Encoder) -> nn.Module:
        from ..losses import CoSENTLoss, MultipleNegativesRankingLoss

        return CoSENTLoss(model) if self.columns.label is not None else MultipleNegativesRankingLoss(model)

    # --- training ---------------------------------------------------------------------------------

    def train(self, *args: Any, **kwargs: Any):
        with training_mode(self.encoder):
            return super().train(*args, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        loss = model(**inputs)
        if not torch.isfinite(loss.detach()).all():
            step = self.state.global_step + 1
            # No optimizer step has used this loss yet: the weights are still the last good ones.
            kept = Path(self.args.output_dir) / f"last-good-step-{step - 1}"
            self.encoder.save(kept)
            raise NonFiniteLossError(
                f"the loss is {loss.item()} at step {step}, in the batch whose first texts are {inputs['texts']!r}; "
                f"training stopped and the weights before this step are saved in {kept}")
        return (loss, {}) if return_outputs else loss

    def _clip_grad_norm(self, model: nn.Module):
        """One process, no loss scaling: sentfuse's clipping (clipping.py); anything else: Trainer's."""
        # _has_mixed_mesh_grads is Trainer's own (private) test: where a transformers version lacks it, Trainer clips
        mixed_mesh = getattr(self, "_has_mixed_mesh_grads", lambda _model: True)
        plain = (self.accelerator.distributed_type == DistributedType.NO and self.accelerator.scaler is None
                 and not mixed_mesh(model))
        if not plain:
            return super()._clip_grad_norm(model)
        return clip_grad_norm(model.parameters(), self.args.max_grad_norm)

    def get_train_dataloader(self) -> DataLoader:
        args = self.args
        sampler_kwargs = dict(batch_size=self._train_batch_size, drop_last=args.dataloader_drop_last, seed=args.seed)
        if args.batch_sampler == BatchSamplers.NO_DUPLICATES:
            batches = NoDuplicatesBatchSampler(self.train_dataset, text_columns=self.columns.texts, **sampler_kwargs)
        else:
            batches = ShuffledBatchSampler(self.train_dataset, **sampler_kwargs)
        loader = DataLoader(self.train_dataset, batch_sampler=batches, collate_fn=self.data_collator,
                            num_workers=args.dataloader_num_workers,
                            pin_memory=args.dataloader_pin_memory and torch.cuda.is_available())
        return self.accelerator.prepare(loader)

    # --- checkpoints ------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        self.encoder.save(output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        load_weights(self.encoder, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_weights(self.encoder, self.state.best_model_checkpoint)

    # --- evaluation -------------------------------------------------------------------------------

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
        """The mean loss over eval_dataset (when there is one) and the evaluator's metrics, logged."""
        metrics: dict[str, float] = {}
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        with inference_mode(self.encoder), torch.no_grad():
            if dataset is not None and len(dataset):
                metrics[f"{metric_key_prefix}_loss"] = self._mean_loss(dataset)
            if self.evaluator is not None:
                found = self.evaluator(self.encoder, epoch=self.state.epoch or 0, steps=self.state.global_step)
                metrics.update({f"{metric_key_prefix}_{k}": v for k, v in found.items()})
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _mean_loss(self, dataset: Any) -> float:
        loader = DataLoader(dataset, batch_size=self.args.eval_batch_size,
                            collate_fn=TextPairCollator(self.encoder, dataset_columns(dataset, "eval_dataset")))
        total, batches = 0.0, 0
        for batch in loader:
            with self.compute_loss_context_manager():
                total += float(self.model(**self._prepare_inputs(batch)))
            batches += 1
        return total / max(batches, 1) if batches else math.nan
