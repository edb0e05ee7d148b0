"""`sentfuse train`: fine-tune a model on a pairs / triplets JSONL or Parquet file with one loss, and save it.

The file's fields are the dataset's columns, in sentence-transformers' conventions: text columns in
the order the loss reads them (anchor, positive[, negative...] or sentence1, sentence2), and an optional
"label" or "score" column (a number, or a list of numbers for the distillation losses). Checkpoints go to OUTPUT/checkpoints, the final model to OUTPUT.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._checks import json_record
from .args import positive
from .errors import CommandError

LOSSES = ("MultipleNegativesRankingLoss", "MultipleNegativesSymmetricRankingLoss", "CachedMultipleNegativesRankingLoss",
          "CoSENTLoss", "AnglELoss", "CosineSimilarityLoss", "TripletLoss", "ContrastiveLoss", "OnlineContrastiveLoss",
          "MSELoss", "MarginMSELoss")


def add_parser(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "train", help="fine-tune a model on pairs or triplets and save it",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "))
    command.add_argument("data", metavar="FILE", help="training data: .jsonl (one JSON object a line) or .parquet")
    command.add_argument("--loss", required=True, choices=LOSSES, help="the training loss (sentence-transformers' name)")
    command.add_argument("-o", "--output", required=True, help="folder the fine-tuned model is saved to")
    command.add_argument("--model", default=None, help="model folder to start from (default: all-MiniLM-L6-v2)")
    command.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    command.add_argument("--matryoshka-dims", default=None, help="comma-separated widths: wrap the loss in MatryoshkaLoss")
    command.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default 1)")
    command.add_argument("--max-steps", type=positive, default=None, help="stop after this many steps")
    command.add_argument("--batch-size", type=positive, default=16, help="examples per step (default 16)")
    command.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (default 2e-5)")
    command.add_argument("--warmup-steps", type=float, default=0.1, help="warm-up steps, or a fraction of all steps below 1 (default 0.1)")
    command.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    command.add_argument("--save-steps", type=positive, default=500, help="steps between checkpoints (default 500)")
    command.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    command.add_argument("--no-duplicates", action="store_true", help="no text twice in a batch (for in-batch negatives)")
    command.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT/checkpoints")
    command.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    command.set_defaults(run=run)


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json_record(line, f"{path}, line {number}", ()))
            except ValueError as e:
                raise CommandError(str(e)) from None
    return rows


def read_columns(path: Path) -> dict[str, list]:
    """The file's columns, every row checked: same fields, text cells strings, labels finite numbers (or lists)."""
    from ..train.data import LABEL_COLUMNS, label_problem

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    else:
        raise CommandError(f"{path}: expected a .jsonl or .parquet file")
    if not rows:
        raise CommandError(f"{path} holds no examples: there is nothing to train on")
    names = list(rows[0])
    for number, row in enumerate(rows, start=1):
        if list(row) != names:
            raise CommandError(f"{path}, row {number}: fields {list(row)} differ from the first row's {names}")
        for name, value in row.items():
            if name in LABEL_COLUMNS:
                problem = label_problem(value)
                if problem:
                    raise CommandError(f"{path}, row {number}, column {name!r}: {problem}")
            elif not isinstance(value, str):
                raise CommandError(f"{path}, row {number}, column {name!r}: expected a string, got "
                                   f"{type(value).__name__} {value!r}")
    return {name: [row[name] for row in rows] for name in names}


def _loss(args: argparse.Namespace, model: Any) -> Any:
    from .. import losses

    loss = getattr(losses, args.loss)(model)
    if args.matryoshka_dims:
        try:
            dims = [int(d) for d in args.matryoshka_dims.split(",")]
        except ValueError:
            raise CommandError(f"--matryoshka-dims must be comma-separated ints, got {args.matryoshka_dims!r}") from None
        loss = losses.MatryoshkaLoss(model, loss, dims)
    return loss


def run(args: argparse.Namespace) -> int:
    from datasets import Dataset

    from ..encode.encoder import Encoder
    from ..train import NonFiniteLossError, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    dataset = Dataset.from_dict(read_columns(Path(args.data)))
    model = Encoder(args.model, device=args.device)
    output = Path(args.output)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"), num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=args.warmup_steps,
        bf16=args.bf16, save_steps=args.save_steps, seed=args.seed, report_to="none", logging_steps=10,
        disable_tqdm=args.no_progress, batch_sampler="no_duplicates" if args.no_duplicates else "batch_sampler",
        use_cpu=model.device.type == "cpu",
    )
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset, loss=_loss(args, model))
    try:
        trainer.train(resume_from_checkpoint=True if args.resume else None)
    except NonFiniteLossError as e:
        raise CommandError(str(e)) from None
    model.save(output)
    print(f"saved the fine-tuned model to {output} ({trainer.state.global_step} steps)")
    return 0
