"""Draw the README's key figures from the benchmarks' JSON results (benchmarks/results/): encode throughput,
top-k time against corpus size, mining time against rows — sentfuse next to the peers each benchmark measured.

    python benchmarks/plot_results.py            # every figure whose JSON is present
Each benchmark also takes --plot PATH to draw its own run through the same helper (benchmarks/plots.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plots import grouped_bars, lines

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _machine(d: dict) -> str:
    m = d.get("machine", d)
    name = m.get("device_name") or m.get("cpu") or m.get("device", "?")
    return f"{name}, torch {m.get('torch', '?')}, {m.get('threads', '?')} threads"


def plot_encode(d: dict, out: Path, label: str) -> None:
    """Sentences/s per dataset and dtype, sentfuse vs sentence-transformers."""
    rows = {(r["dataset"], r["dtype"], r["library"]): r["sentences_per_s"] for r in d["results"] if not r.get("subset")}
    groups = sorted({(ds, dt) for ds, dt, _ in rows})
    series = {lib: [rows.get((ds, dt, lib)) for ds, dt in groups] for lib in ("sentfuse", "sentence-transformers")}
    grouped_bars(out, f"encode throughput ({label})", _machine(d), "sentences / s",
                 [f"{ds}\n{dt}" for ds, dt in groups], series, log=True)


def plot_topk(d: dict, out: Path, label: str, queries: int, k: int = 10) -> None:
    """Milliseconds against corpus size (or against queries where one corpus size was run)."""
    rows = [r for r in d["results"] if r["k"] == k and r.get("dtype", "fp32") == "fp32"]
    corpora = sorted({r["corpus"] for r in rows})
    by_corpus = len(corpora) > 1
    rows = [r for r in rows if r["queries"] == queries] if by_corpus else rows
    x = "corpus" if by_corpus else "queries"
    rows.sort(key=lambda r: r[x])
    series = {}
    for name, key in (("sentfuse", "sentfuse_ms"), ("sentence-transformers", "st_ms"),
                      ("torch.topk(q @ c.T)", "torch_ms"), ("FAISS IndexFlatIP", "faiss_ms")):
        pts = [(r[x], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            series[name] = ([p[0] for p in pts], [p[1] for p in pts])
    what = f"{queries} queries" if by_corpus else f"corpus {corpora[0]:,}"
    lines(out, f"exact top-{k}, fp32, {what} ({label})", _machine(d), x, "ms", series)


def plot_mining(d: dict, out: Path, label: str, data: str = "planted") -> None:
    """Seconds against rows for paraphrase mining and community detection, sentfuse vs sentence-transformers."""
    series = {}
    for op in ("paraphrase_mining", "community_detection"):
        rows = sorted((r for r in d["results"] if r["data"] == data and r["operation"] == op), key=lambda r: r["n"])
        series[f"sentfuse {op}"] = ([r["n"] for r in rows], [r["sentfuse_s"] for r in rows])
        st = [r for r in rows if r.get("other_s") is not None]
        series[f"sentence-transformers {op}"] = ([r["n"] for r in st], [r["other_s"] for r in st])
    lines(out, f"mining {data} embeddings ({label})", _machine(d), "rows", "seconds", series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "plots")
    args = parser.parse_args()
    if (d := _load("encode_cpu.json")) is not None:
        plot_encode(d, args.out / "encode_cpu.png", "CPU")
    if (d := _load("h200/bench_encode.json")) is not None:
        plot_encode(d, args.out / "encode_h200.png", "H200")
    if (d := _load("topk_cpu.json")) is not None:
        plot_topk(d, args.out / "topk_cpu.png", "CPU", queries=1000)
    if (d := _load("h200/bench_topk.json")) is not None:
        plot_topk(d, args.out / "topk_h200.png", "H200", queries=1000)
    if (d := _load("mining_cpu.json")) is not None:
        plot_mining(d, args.out / "mining_cpu.png", "CPU")


if __name__ == "__main__":
    main()
