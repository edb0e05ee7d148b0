"""Fine-tuning: the trainer, fit and the train command on a tiny random model, a few steps each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

ANCHORS = ["A man is playing a guitar.", "What is the capital of France?", "cats", "A woman slices an onion.",
           "the dog runs in the park", "stock markets fell sharply"]
POSITIVES = ["Someone plays an instrument.", "Paris is the capital.", "a cat sleeps", "onion slicing",
             "a running dog", "markets dropped on monday"]
PROBE = ["A man is playing a guitar.", "cats", "markets dropped on monday"]


@pytest.fixture()
def model(tiny_model_root):
    from sentfuse import Encoder

    return Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")


def _pairs(repeat: int = 4):
    from datasets import Dataset

    return Dataset.from_dict({"anchor": ANCHORS * repeat, "positive": POSITIVES * repeat})


def _args(tmp_path, **overrides):
    from sentfuse import SentenceTransformerTrainingArguments

    settings = dict(output_dir=str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=6, learning_rate=1e-3,
                    logging_steps=1, save_steps=3, report_to="none", seed=7, disable_tqdm=True, use_cpu=True)
    return SentenceTransformerTrainingArguments(**(settings | overrides))


def test_loss_falls_and_the_saved_folder_loads_in_sentence_transformers(model, tmp_path):
    from sentence_transformers import SentenceTransformer

    from sentfuse import SentenceTransformerTrainer, losses

    before = model.encode(PROBE)
    trainer = SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=_pairs(),
                                         loss=losses.MultipleNegativesRankingLoss(model))
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 6 and np.mean(logged[-2:]) < np.mean(logged[:2])
    after = model.encode(PROBE)
    assert np.abs(after - before).max() > 1e-3  # the weights encode uses are the trained ones
    model.save(tmp_path / "saved")
    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    np.testing.assert_allclose(st.encode(PROBE), after, atol=1e-5)
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "run" / "checkpoint-6"), device="cpu").encode(PROBE),
                               after, atol=1e-5)


def test_resuming_from_a_checkpoint_loses_nothing(tiny_model_root, tmp_path):
    from sentfuse import Encoder, SentenceTransformerTrainer, losses

    def run(folder, **kwargs):
        model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
        trainer = SentenceTransformerTrainer(model=model, args=_args(folder, **kwargs), train_dataset=_pairs(),
                                             loss=losses.MultipleNegativesRankingLoss(model))
        return model, trainer

    straight, trainer = run(tmp_path / "a", max_steps=4, save_steps=2)
    trainer.train()
    interrupted, trainer = run(tmp_path / "b", max_steps=4, save_steps=2)
    trainer.train()
    resumed, trainer = run(tmp_path / "b", max_steps=4, save_steps=2)
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "run" / "checkpoint-2"))
    np.testing.assert_allclose(resumed.encode(PROBE), straight.encode(PROBE), atol=1e-5)


def test_bad_datasets_are_named(model, tmp_path):
    from datasets import Dataset

    from sentfuse import SentenceTransformerTrainer

    with pytest.raises(ValueError, match="train_dataset is empty"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=Dataset.from_dict({"a": [], "b": []}))
    with pytest.raises(ValueError, match="column 'b' holds int64"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=Dataset.from_dict({"a": ["x"], "b": [1]}))


def test_nan_loss_stops_naming_the_step_and_batch(model, tmp_path):
    from sentfuse import SentenceTransformerTrainer, losses
    from sentfuse.train import NonFiniteLossError

    trainer = SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=_pairs(),
                                         loss=losses.MultipleNegativesRankingLoss(
                                             model, similarity_fct=lambda a, b: a @ b.T * float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"at step 1, in the batch whose first texts are \["):
        trainer.train()
    assert (tmp_path / "run" / "last-good-step-0" / "modules.json").exists()


def test_fit_with_input_examples_and_an_evaluator(model, tmp_path):
    from torch.utils.data import DataLoader

    from sentfuse import InputExample, losses
    from sentfuse.evaluation import EmbeddingSimilarityEvaluator

    examples = [InputExample(texts=[a, p], label=float(i % 3) / 2) for i, (a, p) in enumerate(zip(ANCHORS, POSITIVES))]
    evaluator = EmbeddingSimilarityEvaluator(ANCHORS, POSITIVES, [0.1, 0.9, 0.3, 0.5, 0.7, 0.2])
    scores = []
    model.fit(train_objectives=[(DataLoader(examples, shuffle=True, batch_size=3), losses.CoSENTLoss(model))],
              evaluator=evaluator, epochs=2, warmup_steps=1, show_progress_bar=False, output_path=str(tmp_path / "best"),
              callback=lambda score, epoch, steps: scores.append((score, epoch, steps)))
    assert [s[2] for s in scores] == [2, 4] and all(-1 <= s[0] <= 1 for s in scores)
    assert (tmp_path / "best" / "modules.json").exists()


def test_fit_with_several_objectives_takes_a_batch_of_each_in_turn(model):
    from torch.utils.data import DataLoader

    from sentfuse import InputExample, losses

    pairs = [InputExample(texts=[a, p]) for a, p in zip(ANCHORS, POSITIVES)]  # 2 batches of 3
    triplets = [InputExample(texts=[a, p, n]) for a, p, n in zip(ANCHORS * 2, POSITIVES * 2, POSITIVES[::-1] * 2)]
    seen: list[str] = []
    objectives = [(DataLoader(pairs, batch_size=3), _Recording(losses.MultipleNegativesRankingLoss(model), "pairs", seen)),
                  (DataLoader(triplets, batch_size=3), _Recording(losses.TripletLoss(model), "triplets", seen))]
    model.fit(train_objectives=objectives, epochs=1, warmup_steps=0, show_progress_bar=False)
    assert seen == ["pairs", "triplets", "pairs", "triplets"]
    with pytest.raises(ValueError, match="at least one"):
        model.fit(train_objectives=[], show_progress_bar=False)


def test_train_command(tiny_model_root, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    from sentfuse.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in zip(ANCHORS, POSITIVES)))
    out = tmp_path / "model"
    argv = ["train", str(data), "--loss", "MultipleNegativesRankingLoss", "-o", str(out), "--max-steps", "2",
            "--batch-size", "3", "--model", str(tiny_model_root / "bert-mean-normalize"), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    assert SentenceTransformer(str(out), device="cpu").encode(PROBE).shape == (3, 32)

    data.write_text(json.dumps({"anchor": "a", "positive": 3}) + "\n")
    assert main(argv) == 1
    assert "row 1, column 'positive': expected a string, got int 3" in capsys.readouterr().err
    data.write_text("")
    assert main(argv) == 1
    assert "holds no examples" in capsys.readouterr().err

    # A distillation loss reads a label column of lists: the teacher's embeddings.
    rng = np.random.default_rng(0)
    data.write_text("".join(json.dumps({"text": a, "label": rng.normal(size=32).tolist()}) + "\n" for a in ANCHORS))
    assert main(argv[:3] + ["MSELoss"] + argv[4:]) == 0
    data.write_text(json.dumps({"text": "a", "label": [1.0, None]}) + "\n")
    assert main(argv[:3] + ["MSELoss"] + argv[4:]) == 1
    assert "row 1, column 'label': expected a finite number (or a list of them), got None" in capsys.readouterr().err


def test_no_duplicates_sampler_keeps_repeated_texts_apart_and_visits_every_row():
    from datasets import Dataset

    from sentfuse.train.samplers import NoDuplicatesBatchSampler

    anchors = [f"q{i % 7}" for i in range(40)]  # each anchor text six times or so
    dataset = Dataset.from_dict({"anchor": anchors, "positive": [f"p{i}" for i in range(40)]})
    sampler = NoDuplicatesBatchSampler(dataset, batch_size=5, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(40))
    assert all(len({anchors[i] for i in b}) == len(b) for b in batches)
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order each epoch, the same for a resumed run


def test_train_command_reads_parquet_and_checks_every_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sentfuse.cli.errors import CommandError
    from sentfuse.cli.train import read_columns

    path = tmp_path / "triplets.parquet"
    pq.write_table(pa.table({"anchor": ["a", "b"], "positive": ["c", "d"], "negative": ["e", "f"]}), path)
    assert read_columns(path) == {"anchor": ["a", "b"], "positive": ["c", "d"], "negative": ["e", "f"]}
    pq.write_table(pa.table({"sentence1": ["a", None], "sentence2": ["c", "d"], "score": [0.5, 0.1]}), path)
    with pytest.raises(CommandError, match="row 2, column 'sentence1': expected a string, got NoneType"):
        read_columns(path)
    pq.write_table(pa.table({"sentence1": ["a"], "sentence2": ["c"], "score": [float("nan")]}), path)
    with pytest.raises(CommandError, match="row 1, column 'score': expected a finite number"):
        read_columns(path)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_products_trains_in_float32(model, tmp_path, monkeypatch, caplog, native):
    from sentfuse import SentenceTransformerTrainer
    from sentfuse.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_has_native", lambda dtype: native)
    args = _args(tmp_path, bf16=True)
    with caplog.at_level("WARNING", logger=trainer_module.__name__):
        SentenceTransformerTrainer(model=model, args=args, train_dataset=_pairs())
    assert args.bf16 is native and args.mixed_precision == ("bf16" if native else "no")
    assert ("no bf16 matrix kernels" in caplog.text) is not native


def test_labels_reach_the_loss_as_sentence_transformers_collates_them(model):
    from datasets import Dataset

    from sentfuse.train.data import TextPairCollator, dataset_columns

    def collate(columns: dict):
        data = Dataset.from_dict(columns)
        return TextPairCollator(model, dataset_columns(data))(list(data))["labels"]

    assert collate({"anchor": ["a", "b"], "positive": ["c", "d"]}) is None  # no label column: None, not zeros
    for name in ("label", "labels", "score", "scores"):
        torch.testing.assert_close(collate({"s1": ["a", "b"], "s2": ["c", "d"], name: [1, 0]}), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(collate({"s1": ["a", "b"], "s2": ["c", "d"], "label": [True, False]}),
                               torch.tensor([1.0, 0.0]))
    teacher = [[0.5, -1.0, 2.0], [0.0, 1.0, 0.25]]
    torch.testing.assert_close(collate({"text": ["a", "b"], "label": teacher}), torch.tensor(teacher))
    with pytest.raises(ValueError, match="column 'label', row 1: expected a finite number"):
        collate({"text": ["a", "b"], "label": [[0.5, 1.0], [float("inf"), 1.0]]})
    with pytest.raises(ValueError, match="column 'label': the rows' labels differ in shape"):
        TextPairCollator(model, dataset_columns(Dataset.from_dict({"text": ["a"], "label": [[1.0]]})))(
            [{"text": "a", "label": [1.0, 2.0]}, {"text": "b", "label": [1.0]}])


def test_distillation_pulls_the_student_to_the_teacher(model, tiny_model_root, tmp_path):
    """MSELoss on a 'label' column of teacher embeddings (here the model's own, moved by noise): the student's
    embeddings move towards them; SoftmaxLoss's classifier trains alongside the encoder."""
    from datasets import Dataset

    from sentfuse import Encoder, SentenceTransformerTrainer, losses

    teacher = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
    targets = teacher.encode(ANCHORS) + np.random.default_rng(0).normal(0, 0.3, (len(ANCHORS), teacher.get_embedding_dimension()))
    gap = lambda: float(np.mean((model.encode(ANCHORS) - targets) ** 2))  # noqa: E731
    before = gap()
    data = Dataset.from_dict({"text": ANCHORS * 4, "label": [t.tolist() for t in targets] * 4})
    SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=data,
                               loss=losses.MSELoss(model)).train()
    assert gap() < 0.9 * before

    loss = losses.SoftmaxLoss(model, model.get_embedding_dimension(), num_labels=3)
    start = loss.classifier.weight.detach().clone()
    nli = Dataset.from_dict({"premise": ANCHORS * 4, "hypothesis": POSITIVES * 4, "label": [0, 1, 2] * 8})
    SentenceTransformerTrainer(model=model, args=_args(tmp_path / "nli"), train_dataset=nli, loss=loss).train()
    assert not torch.equal(loss.classifier.weight.detach(), start)


class _Recording(torch.nn.Module):
    """A loss that records the dataset of each batch it scores (by its columns' count and first text)."""

    def __init__(self, inner, name, seen):
        super().__init__()
        self.inner, self.name, self.seen = inner, name, seen

    def forward(self, columns, labels):
        self.seen.append(self.name)
        return self.inner(columns, labels)


def test_several_datasets_train_with_a_loss_each(model, tmp_path):
    from datasets import Dataset

    from sentfuse import SentenceTransformerTrainer, losses

    pairs = _pairs(1)  # 6 rows: 2 batches of 3
    sts = Dataset.from_dict({"sentence1": ANCHORS * 2, "sentence2": POSITIVES[::-1] * 2,
                             "score": [0.1, 0.9, 0.5, 0.3, 0.7, 0.2] * 2})  # 12 rows: 4 batches of 3
    seen: list[str] = []
    loss = {"pairs": _Recording(losses.MultipleNegativesRankingLoss(model), "pairs", seen),
            "sts": _Recording(losses.CoSENTLoss(model), "sts", seen)}
    args = _args(tmp_path, max_steps=-1, num_train_epochs=1, per_device_train_batch_size=3, save_strategy="no",
                 multi_dataset_batch_sampler="round_robin", eval_strategy="no")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset={"pairs": pairs, "sts": sts}, loss=loss,
                                         eval_dataset={"pairs": pairs, "sts": sts})
    trainer.train()
    assert seen == ["pairs", "sts", "pairs", "sts"]  # round robin stops with the smaller dataset
    metrics = trainer.evaluate()
    assert {"eval_pairs_loss", "eval_sts_loss"} <= metrics.keys()

    seen.clear()
    args = _args(tmp_path / "p", max_steps=-1, num_train_epochs=1, per_device_train_batch_size=3, save_strategy="no")
    SentenceTransformerTrainer(model=model, args=args, train_dataset={"pairs": pairs, "sts": sts}, loss=loss).train()
    assert sorted(seen) == ["pairs"] * 2 + ["sts"] * 4 and seen != sorted(seen)  # proportional: every batch, shuffled

    with pytest.raises(ValueError, match=r"loss is a dict without an entry for the datasets \['sts'\]"):
        SentenceTransformerTrainer(model=model, args=args, train_dataset={"pairs": pairs, "sts": sts},
                                   loss={"pairs": losses.MultipleNegativesRankingLoss(model)})
    with pytest.raises(ValueError, match="train_dataset is a single dataset"):
        SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss)
    with pytest.raises(ValueError, match="train_dataset is an empty dict"):
        SentenceTransformerTrainer(model=model, args=args, train_dataset={})


def test_multi_dataset_sampler_offsets_and_lengths():
    from datasets import Dataset

    from sentfuse.train.samplers import MultiDatasetBatchSampler, ShuffledBatchSampler
    from sentfuse.training_args import BatchSamplers, MultiDatasetBatchSamplers  # sentence-transformers' module

    assert MultiDatasetBatchSamplers("round_robin") and BatchSamplers.NO_DUPLICATES == "no_duplicates"

    small, large = Dataset.from_dict({"t": list("abcd")}), Dataset.from_dict({"t": list("efghijklm")})
    samplers = [ShuffledBatchSampler(small, 2, seed=1), ShuffledBatchSampler(large, 2, seed=1)]
    for strategy, length in (("round_robin", 4), ("proportional", 7)):
        sampler = MultiDatasetBatchSampler(samplers, [0, 4], strategy, seed=1)
        batches = list(sampler)
        assert len(batches) == len(sampler) == length
        assert all(all(i < 4 for i in b) or all(i >= 4 for i in b) for b in batches)  # one dataset per batch
        if strategy == "proportional":
            assert sorted(i for b in batches for i in b) == list(range(13))
            sampler.set_epoch(1)
            assert list(sampler) != batches  # reshuffled per epoch
