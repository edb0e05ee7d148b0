"""Encoder.fit: sentence-transformers' pre-3.0 training call, run by SentenceTransformerTrainer."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import torch

# sentence-transformers' scheduler names -> transformers' lr_scheduler_type
SCHEDULERS = {
    "constantlr": "constant",
    "warmupconstant": "constant_with_warmup",
    "warmuplinear": "linear",
    "warmupcosine": "cosine",
    "warmupcosinewithhardrestarts": "cosine_with_restarts",
}


def _scheduler(name: str) -> str:
    key = name.lower()
    if key not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)} (any case), got {name!r}")
    return SCHEDULERS[key]


def _evaluation_callback(model: Any, evaluator: Any, callback: Callable[[float, int, int], None] | None,
                         best_path: str | None):
    """After each evaluation: fit's callback(score, epoch, steps) with the evaluator's primary metric, and
    the model saved to best_path when that score is the best so far."""
    from transformers import TrainerCallback

    class ScoreCallback(TrainerCallback):
        best = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            score = (metrics or {}).get(f"eval_{evaluator.primary_metric}")
            if score is None:
                return
            if callback is not None:
                callback(score, int(state.epoch or 0), state.global_step)
            better = self.best is None or (score > self.best if evaluator.greater_is_better else score < self.best)
            if best_path and better:
                self.best = score
                model.save(best_path)

    return ScoreCallback()


class FitMixin:
    """model.fit(train_objectives=[(dataloader, loss)], epochs=..., warmup_steps=..., evaluator=...)."""

    def fit(
        self,
        train_objectives: Iterable[tuple[Any, Any]],
        evaluator: Any = None,
        epochs: int = 1,
        steps_per_epoch: int | None = None,
        scheduler: str = "WarmupLinear",
        warmup_steps: int = 10000,
        optimizer_class: type = torch.optim.AdamW,
        optimizer_params: dict[str, Any] = {"lr": 2e-5},  # noqa: B006  (sentence-transformers' default; copied below)
        weight_decay: float = 0.01,
        evaluation_steps: int = 0,
        output_path: str | None = None,
        save_best_model: bool = True,
        max_grad_norm: float = 1,
        use_amp: bool = False,
        callback: Callable[[float, int, int], None] | None = None,
        show_progress_bar: bool = True,
        checkpoint_path: str | None = None,
        checkpoint_save_steps: int = 500,
        checkpoint_save_total_limit: int = 0,
        resume_from_checkpoint: bool = False,
    ) -> None:
        """Train on (DataLoader of InputExample, loss) objectives, as sentence-transformers' fit does (several:
        a batch of each in turn until the smallest runs out).
        use_amp trains in bfloat16 mixed precision; output_path receives the final model or, with an
        evaluator and save_best_model, the best one evaluated."""
        # Long for sentence-transformers' signature; the body maps it onto the trainer's arguments.
        from datasets import Dataset

        from .args import SentenceTransformerTrainingArguments
        from .data import rows_from_examples
        from .trainer import SentenceTransformerTrainer

        objectives = list(train_objectives)
        if not objectives:
            raise ValueError("fit needs at least one (DataLoader of InputExample, loss) objective")
        # Several objectives train as several datasets, a batch of each in turn (sentence-transformers' fit).
        datasets = {f"_dataset_{i}": Dataset.from_dict(rows_from_examples(list(loader.dataset)))
                    for i, (loader, _) in enumerate(objectives, start=1)}
        losses = {name: loss for name, (_, loss) in zip(datasets, objectives)}
        dataset, loss = (datasets, losses) if len(objectives) > 1 else (datasets["_dataset_1"], losses["_dataset_1"])
        loader = objectives[-1][0]  # the batch size: the last objective's, as sentence-transformers takes it
        params = dict(optimizer_params)
        lr = params.pop("lr", 2e-5)
        steps = {"max_steps": steps_per_epoch * epochs * len(objectives)} if steps_per_epoch else {}
        evaluating = evaluator is not None
        per_steps = evaluating and evaluation_steps > 0
        with tempfile.TemporaryDirectory(prefix="sentfuse-fit-") as scratch:
            args = SentenceTransformerTrainingArguments(
                output_dir=checkpoint_path or scratch, num_train_epochs=epochs, **steps,
                per_device_train_batch_size=loader.batch_size or 8, learning_rate=lr, weight_decay=weight_decay,
                warmup_steps=warmup_steps, lr_scheduler_type=_scheduler(scheduler), max_grad_norm=max_grad_norm,
                bf16=use_amp, disable_tqdm=not show_progress_bar, report_to="none", logging_steps=10,
                eval_strategy=("steps" if per_steps else "epoch") if evaluating else "no",
                eval_steps=evaluation_steps if per_steps else None,
                save_strategy="steps" if checkpoint_path else "no", save_steps=checkpoint_save_steps,
                save_total_limit=checkpoint_save_total_limit or None, multi_dataset_batch_sampler="round_robin",
            )
            best_path = output_path if save_best_model else None
            trainer = SentenceTransformerTrainer(
                model=self, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator,
                callbacks=[_evaluation_callback(self, evaluator, callback, best_path)] if evaluating else None,
                optimizer_cls_and_kwargs=(optimizer_class, params),
            )
            trainer.train(resume_from_checkpoint=bool(checkpoint_path) and resume_from_checkpoint or None)
        if output_path and not (evaluating and save_best_model):
            self.save(output_path)
