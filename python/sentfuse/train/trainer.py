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
from .data import DatasetsEndToEnd, MultiDatasetCollator, TextPairCollator, dataset_columns
from .mode import inference_mode, trainable_modules, training_mode
from .samplers import BatchSamplers, MultiDatasetBatchSampler, NoDuplicatesBatchSampler, ShuffledBatchSampler

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

    def forward(self, columns, labels=None, texts=None, dataset_name=None) -> torch.Tensor:
        loss_fn = self.loss
        if isinstance(loss_fn, nn.ModuleDict):  # multi-dataset training: the batch's dataset picks its loss
            if dataset_name is None:  # a single eval dataset: fine where every dataset shares one loss
                shared = {id(m): m for m in loss_fn.values()}
                if len(shared) > 1:
                    raise ValueError("with a loss per training dataset, eval_dataset must be a dict keyed like "
                                     "train_dataset")
                loss_fn = next(iter(shared.values()))
            else:
                loss_fn = loss_fn[dataset_name]
        loss = loss_fn(columns, labels)
        # A loss may return named terms (GlobalOrthogonalRegularizationLoss): their sum is what trains.
        return torch.stack(list(loss.values())).sum() if isinstance(loss, dict) else loss


class LossProgressCallback(ProgressCallback):
    """transformers' progress bar, with the latest logged loss on the bar instead of a printed dict per log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}")
            return
        super().on_log(args, state, control, logs=logs, **kwargs)


def _named(datasets: Any, argument: str) -> dict[str, Any] | None:
    """A dict (or DatasetDict) of datasets by name, checked non-empty; None for a single dataset."""
    if not isinstance(datasets, dict):
        return None
    if not datasets:
        raise ValueError(f"{argument} is an empty dict: give at least one dataset")
    return dict(datasets)


class SentenceTransformerTrainer(Trainer):
    """Trainer(model=Encoder, args, train_dataset, eval_dataset, loss, evaluator, callbacks), as in
    sentence-transformers. Datasets are datasets.Dataset with text columns in the loss's order and an
    optional 'label' / 'score' column. loss defaults to CoSENTLoss for labelled pairs, else
    MultipleNegativesRankingLoss.

    Several datasets train together when train_dataset is a dict (or DatasetDict) of them: each batch comes
    from one dataset (args.multi_dataset_batch_sampler: proportional or round_robin), scored by loss, or by
    loss[name] when loss is a dict with an entry per dataset."""

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
        self.train_datasets = _named(train_dataset, "train_dataset")
        if self.train_datasets is None:
            if isinstance(loss, dict):
                raise ValueError("loss is a dict of losses by dataset name, but train_dataset is a single dataset: "
                                 "give a dict (or DatasetDict) of datasets with the same names")
            self.columns = dataset_columns(train_dataset)
            self.loss = loss if loss is not None else self._default_loss(model, self.columns)
            collator = TextPairCollator(model, self.columns)
        else:
            self.columns = {name: dataset_columns(d, f"train_dataset[{name!r}]")
                            for name, d in self.train_datasets.items()}
            self.loss = nn.ModuleDict(self._losses_by_dataset(model, loss))
            collator = MultiDatasetCollator(model, self.columns)
            train_dataset = DatasetsEndToEnd(self.train_datasets)
        evaluations = _named(eval_dataset, "eval_dataset")
        for name, dataset in (evaluations or {"": eval_dataset}).items():
            if dataset is not None:
                dataset_columns(dataset, f"eval_dataset[{name!r}]" if name else "eval_dataset")
        if evaluations is not None and self.train_datasets is not None and set(evaluations) - set(self.columns):
            raise ValueError(f"eval_dataset has datasets {sorted(set(evaluations) - set(self.columns))} that "
                             f"train_dataset lacks, so no loss is known for them")
        self.evaluator = evaluator
        # Trainer refuses evaluation without an eval_dataset; an evaluator alone is enough here.
        no_rows = [] if evaluator is not None else None
        super().__init__(model=_TrainModule(model, self.loss), args=args, data_collator=collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset if eval_dataset is not None else no_rows,
                         callbacks=callbacks, **kwargs)
        self.remove_callback(ProgressCallback)
        if not args.disable_tqdm:
            self.add_callback(LossProgressCallback)

    @staticmethod
    def _default_loss(model: Encoder, columns: Any) -> nn.Module:
        from ..losses import CoSENTLoss, MultipleNegativesRankingLoss

        return CoSENTLoss(model) if columns.label is not None else MultipleNegativesRankingLoss(model)

    def _losses_by_dataset(self, model: Encoder, loss: Any) -> dict[str, nn.Module]:
        """{dataset name: loss}: loss's entry per dataset (a dict must name them all), the one loss for every
        dataset, or each dataset's default."""
        if isinstance(loss, dict):
            missing = sorted(set(self.columns) - set(loss))
            if missing:
                raise ValueError(f"loss is a dict without an entry for the datasets {missing}")
            return {name: loss[name] for name in self.columns}
        return {name: loss if loss is not None else self._default_loss(model, columns)
                for name, columns in self.columns.items()}

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

    def _batch_sampler(self, dataset: Any, columns: Any) -> ShuffledBatchSampler:
        args = self.args
        kwargs = dict(batch_size=self._train_batch_size, drop_last=args.dataloader_drop_last, seed=args.seed)
        if args.batch_sampler == BatchSamplers.NO_DUPLICATES:
            return NoDuplicatesBatchSampler(dataset, text_columns=columns.texts, **kwargs)
        return ShuffledBatchSampler(dataset, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        args = self.args
        if self.train_datasets is None:
            batches = self._batch_sampler(self.train_dataset, self.columns)
        else:
            batches = MultiDatasetBatchSampler(
                [self._batch_sampler(d, self.columns[name]) for name, d in self.train_datasets.items()],
                self.train_dataset.offsets, args.multi_dataset_batch_sampler, args.seed)
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
            named = _named(dataset, "eval_dataset")
            if named is not None:  # a loss per dataset: eval_{name}_loss each
                for name, part in named.items():
                    if len(part):
                        metrics[f"{metric_key_prefix}_{name}_loss"] = self._mean_loss(part, name)
            elif dataset is not None and len(dataset):
                metrics[f"{metric_key_prefix}_loss"] = self._mean_loss(dataset)
            if self.evaluator is not None:
                found = self.evaluator(self.encoder, epoch=self.state.epoch or 0, steps=self.state.global_step)
                metrics.update({f"{metric_key_prefix}_{k}": v for k, v in found.items()})
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _mean_loss(self, dataset: Any, name: str | None = None) -> float:
        loader = DataLoader(dataset, batch_size=self.args.eval_batch_size,
                            collate_fn=TextPairCollator(self.encoder, dataset_columns(dataset, "eval_dataset")))
        total, batches = 0.0, 0
        for batch in loader:
            with self.compute_loss_context_manager():
                total += float(self.model(**self._prepare_inputs(batch), dataset_name=name))
            batches += 1
        return total / max(batches, 1) if batches else math.nan
