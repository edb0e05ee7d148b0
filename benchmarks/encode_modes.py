"""bench_encode --compute-modes: sentfuse's CPU compute modes side by side with sentence-transformers' fp32 and
its OpenVINO backend, in one run.

Rows: sentence-transformers fp32 (torch), OpenVINO (sentence-transformers backend="openvino", its default
precision, in the peer venv: openvino_peer.py), and sentfuse float32, bfloat16 (pure), bf16-mixed and
int8-dynamic, on the first --limit-questions SQuAD questions; one more int8-dynamic row multiplies the FFN's
second product the other way (SENTFUSE_INT8_ACTIVATED: bf16, float32 where the CPU has no bf16 product, or
per-row int8), the same-run A/B of that choice. The in-process rows alternate over --rounds
rounds (min-max reported); the OpenVINO peer times one call in its own process after each round (a process a
round: its load and warm-up are not timed), so that its rounds alternate with the others too. Accuracy: min
cosine to sentfuse float32 over the questions, and STS-B test Spearman
(data/stsb/sts-test.tsv, cosine of the two sentences' embeddings vs the gold score, x100). Speed of the
matrix products: each row's linear layers timed inside one encode (gemm_ceiling.linear_rate) as a fraction
of the same dtype's ceiling measured in this run on 2,048 x 384 x 1,536 (before and after the rounds, the
higher kept).

    python benchmarks/bench_encode.py --compute-modes --limit-questions 2000 [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import gemm_ceiling
import openvino_peer
from sentfuse import cpu_features
from sentfuse.model.backbone import INT8_ACTIVATED_ENV

STSB = Path(__file__).resolve().parents[1] / "data/stsb/sts-test.tsv"
# sentfuse rows: (label, dtype keyword, ceiling its linear layers are measured against)
SENTFUSE_ROWS = [("sentfuse float32", "float32", "float32"), ("sentfuse bfloat16", "bfloat16", "bfloat16"),
                 ("sentfuse bf16-mixed", "bf16-mixed", "bfloat16"), ("sentfuse int8-dynamic", "int8-dynamic", "int8")]
ST_ROW, OV_ROW = "sentence-transformers fp32", "sentence-transformers OpenVINO"


def _stsb(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return [r[1] for r in rows], [r[2] for r in rows], np.array([float(r[0]) for r in rows])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)


def _spearman(embed, stsb) -> float:
    from scipy.stats import spearmanr

    first, second, gold = stsb
    return 100 * float(spearmanr((_unit(embed(first)) * _unit(embed(second))).sum(1), gold).correlation)


def _timed(fn) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return seconds, np.asarray(out.float() if isinstance(out, torch.Tensor) else out, dtype=np.float32)


def measure(model_path: str, questions: list[str], rounds: int, st_batch_size: int) -> dict:
    from sentence_transformers import SentenceTransformer

    import sentfuse

    ceilings = gemm_ceiling.ceilings()
    models = {ST_ROW: SentenceTransformer(model_path, device="cpu", local_files_only=True)}
    models |= {label: sentfuse.Encoder(model_path, device="cpu", dtype=dtype) for label, dtype, _ in SENTFUSE_ROWS}
    label = int8_other_row()
    models[label] = sentfuse.Encoder(model_path, device="cpu", dtype="int8-dynamic")
    os.environ.pop(INT8_ACTIVATED_ENV)
    rows_run = SENTFUSE_ROWS + [(label, "int8-dynamic", "int8")]
    calls = {ST_ROW: lambda: models[ST_ROW].encode(questions, batch_size=st_batch_size, show_progress_bar=False)}
    for label, _, _ in rows_run:
        calls[label] = (lambda m: lambda: m.encode(questions, show_progress_bar=False))(models[label])
    for label in calls:  # warm-up
        models[label].encode(questions[:64], show_progress_bar=False)
    times: dict[str, list[float]] = {label: [] for label in calls}
    outputs: dict[str, np.ndarray] = {}
    peer, peer_seconds = None, []
    for r in range(rounds):
        for label in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            seconds, outputs[label] = _timed(calls[label])
            times[label].append(seconds)
        # OpenVINO's process once a round, between the other rows' rounds, so that the VM's swings (minutes long
        # on the shared AMX VM) fall on it as on them; it used to time all its rounds after the first one.
        if r == 0 or peer is not None:
            peer = openvino_peer.run_peer("encode", model_path, questions, repeats=1, batch_size=st_batch_size)
            peer_seconds += peer["seconds"] if peer is not None else []
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k.split()[-1]} {v[-1]:.2f} s" for k, v in times.items())
              + (f", OpenVINO {peer_seconds[-1]:.2f} s" if peer is not None else ""), flush=True)
    if peer is not None:
        times[OV_ROW], outputs[OV_ROW] = peer_seconds, peer["output"]
    ceilings = gemm_ceiling.best(ceilings, gemm_ceiling.ceilings())  # measured before and after the rounds

    stsb = _stsb(STSB)
    rows = []
    reference = _unit(outputs["sentfuse float32"])
    for label in times:
        row = {"row": label, "seconds": times[label], "per_s": [len(questions) / s for s in times[label]],
               "min_cos_vs_fp32": float((_unit(outputs[label]) * reference).sum(1).min())}
        if label in models:
            row["stsb_spearman"] = _spearman(lambda t, m=models[label]: m.encode(t, show_progress_bar=False), stsb)
        match = next((c for lab, _, c in rows_run if lab == label), None)
        if match is not None:
            lin = gemm_ceiling.linear_rate(models[label]._model, calls[label])
            if ceilings[match] is None:  # no such product on this CPU (bf16 on AVX2): the layers ran float32
                match = "float32"
            row |= {"linear_gflop_s": lin["gflop"] / lin["seconds"], "ceiling": match,
                    "linear_share_of_wall": lin["seconds"] / lin["wall"]}
            row["fraction_of_ceiling"] = row["linear_gflop_s"] / ceilings[match]
        rows.append(row)
    return {"ceilings": ceilings, "rows": rows, "n": len(questions), "rounds": rounds,
            "openvino_precision": None if peer is None else peer["inference_precision"]}


def int8_activated_label(choice: str) -> str:
    """The row name of int8-dynamic with the FFN's second product multiplied `choice`'s way (INT8_ACTIVATED_ENV)."""
    return f"sentfuse int8, FFN2 {'bf16/fp32' if choice == 'bf16' else 'per-row int8'}"


def int8_other_row() -> str:
    """The int8-dynamic A/B row's name: the way of multiplying the FFN's second product (fed by GELU) this CPU does
    not take by default, set in the environment (INT8_ACTIVATED_ENV) for the row's model to load with."""
    from sentfuse.model import backbone

    if os.environ.get(INT8_ACTIVATED_ENV):
        raise SystemExit(f"unset {INT8_ACTIVATED_ENV}: --compute-modes runs both of its choices")
    other = "bf16" if backbone._activated_in_int8() else "int8"
    os.environ[INT8_ACTIVATED_ENV] = other
    return int8_activated_label(other)


def goals(result: dict) -> list[dict]:
    """The issue's encode goals from one run: ratios of medians, each with its min-max over the rounds."""
    rows = {r["row"]: r for r in result["rows"]}
    out = []

    def add(goal: str, value: float | None, minimum: float, maximum: float | None = None) -> None:
        met = value is not None and value >= minimum and (maximum is None or value <= maximum)
        out.append({"goal": goal, "value": value, "met": met})

    mixed, int8, fp32 = rows["sentfuse bf16-mixed"], rows["sentfuse int8-dynamic"], rows["sentfuse float32"]
    ov = rows.get(OV_ROW)
    speed = lambda r: statistics.median(r["per_s"])  # noqa: E731
    add("bf16-mixed min cosine to fp32 >= 0.9999", mixed["min_cos_vs_fp32"], 0.9999)
    add("bf16-mixed >= 2x OpenVINO (questions/s)", speed(mixed) / speed(ov) if ov else None, 2.0)
    add("bf16-mixed linear layers >= 50% of the bf16 ceiling", mixed["fraction_of_ceiling"], 0.5)
    add("int8-dynamic min cosine to fp32 >= 0.995", int8["min_cos_vs_fp32"], 0.995)
    add("int8-dynamic STS-B Spearman within 0.5 of fp32", abs(int8["stsb_spearman"] - fp32["stsb_spearman"]), 0, 0.5)
    add("int8-dynamic >= 3x OpenVINO default (questions/s)", speed(int8) / speed(ov) if ov else None, 3.0)
    return out


def report(result: dict) -> None:
    c = result["ceilings"]
    print(f"\nGEMM ceiling, oneDNN linear 2,048 x 384 x 1,536 (GFLOP/s, int8 GOP/s): {gemm_ceiling.summary(c)}")
    print(f"OpenVINO inference precision: {result['openvino_precision']}")
    print(f"{result['n']} SQuAD questions, {result['rounds']} rounds (min-max of questions/s)\n")
    header = (f"{'row':<32} {'questions/s':>17} {'x ST fp32':>10} {'x OpenVINO':>11} {'min cos fp32':>12} "
              f"{'STS-B':>6} {'linear GFLOP/s':>14} {'of ceiling':>10} {'linear share':>12}")
    print(header + "\n" + "-" * len(header))
    rows = {r["row"]: r for r in result["rows"]}
    median = {k: statistics.median(r["per_s"]) for k, r in rows.items()}
    for label, r in rows.items():
        ov = f"{median[label] / median[OV_ROW]:.2f}" if OV_ROW in median else "-"
        stsb = f"{r['stsb_spearman']:.2f}" if "stsb_spearman" in r else "-"
        lin = (f"{r['linear_gflop_s']:14,.0f} {100 * r['fraction_of_ceiling']:9.0f}% {100 * r['linear_share_of_wall']:11.0f}%"
               if "linear_gflop_s" in r else f"{'-':>14} {'-':>10} {'-':>12}")
        speeds = f"{min(r['per_s']):,.0f}-{max(r['per_s']):,.0f}"
        print(f"{label:<32} {speeds:>17} {median[label] / median[ST_ROW]:10.2f} {ov:>11} "
              f"{r['min_cos_vs_fp32']:12.6f} {stsb:>6} {lin}")
    amx = "" if cpu_features.has_bf16_matrix_units() else " -- set for AMX CPUs; this CPU has none, figures only"
    print(f"\ngoals (issue 21, encode){amx}:")
    for g in result["goals"]:
        value = "-" if g["value"] is None else f"{g['value']:.5g}"
        print(f"  {g['goal']:<56} {value:>10}  {'met' if g['met'] else 'NOT met'}")


def main(model_path: str, questions: list[str], rounds: int, st_batch_size: int, machine: dict,
         json_path: str | None) -> None:
    print(f"cpu: {machine['cpu']}; flags: {' '.join(machine['flags'])}; torch threads {machine['threads']}")
    result = measure(model_path, questions, rounds, st_batch_size)
    result["goals"] = goals(result)
    result["machine"] = machine
    report(result)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
        print(f"\nwrote {json_path}")
