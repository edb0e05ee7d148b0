"""sentence-transformers' OpenVINO backend as a benchmark peer, run in its own venv.

Its optimum-intel pins transformers < 5, so it cannot share sentfuse's venv: the benchmarks call `run_peer`,
which starts this file under the peer venv's python (built by ../shared/peers/openvino-venv.sh) on texts or
pairs written to a temporary folder, and reads back timings (JSON) and embeddings / scores (.npy).

    <peer python> benchmarks/openvino_peer.py encode MODEL TEXTS.json OUT_DIR [--repeats N] [--batch-size B]
        [--threads T]
    <peer python> benchmarks/openvino_peer.py rank MODEL WORK.json OUT_DIR [--repeats N] [--batch-size B]
        [--threads T]

encode: SentenceTransformer(MODEL, backend="openvino").encode(texts), timed --repeats times after a warm-up
call on the first 64 texts; output: the embeddings. rank: WORK is [[query, [documents]], ...]; one
CrossEncoder(MODEL, backend="openvino").rank(query, documents) call per query (raw logits, activation
Identity) after one warm-up call, the fastest of --repeats calls per query summed (wall and process CPU
seconds); output: each query's scores in its documents' order. OpenVINO's own precision choice is kept (its
CPU plugin computes in bf16 on CPUs with bf16 units unless told otherwise) and reported as
`inference_precision`. --threads sets OpenVINO's INFERENCE_NUM_THREADS (run_peer passes torch's thread count,
so both sides use as many cores; unset, OpenVINO takes every core).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER_PYTHON = Path("/root/.cache/sentfuse-peers/openvino/bin/python")


def run_peer(task: str, model: str, inputs: list, repeats: int = 3, batch_size: int = 32,
             python: Path = PEER_PYTHON, timeout: float = 900, threads: int | None = None) -> dict | None:
    """{'seconds': [...], 'output': ndarray, 'inference_precision': str, ...} from the peer, or None (with the
    reason printed) when its venv is missing or it fails."""
    import numpy as np
    import torch

    if not python.exists():
        print(f"OpenVINO peer skipped: no {python} (build it with ../shared/peers/openvino-venv.sh)")
        return None
    with tempfile.TemporaryDirectory(prefix="openvino_peer_") as tmp:
        data = Path(tmp) / "inputs.json"
        data.write_text(json.dumps(inputs))
        command = [str(python), __file__, task, model, str(data), tmp, "--repeats", str(repeats),
                   "--batch-size", str(batch_size), "--threads", str(threads or torch.get_num_threads())]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            print(f"OpenVINO peer failed ({done.returncode}):\n{done.stderr[-2000:]}")
            return None
        result = json.loads((Path(tmp) / "result.json").read_text())
        result["output"] = np.load(Path(tmp) / "output.npy")
    return result


def _precision(model) -> str:
    """The precision OpenVINO's compiled model computes in (its INFERENCE_PRECISION_HINT), where readable."""
    try:
        first = model[0] if hasattr(model, "__getitem__") else model
        ov_model = getattr(first, "auto_model", None) or getattr(model, "model", None)
        request = ov_model.request  # optimum-intel keeps the compiled model there
        compiled = request.get_compiled_model() if hasattr(request, "get_compiled_model") else request
        return str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except Exception as e:  # noqa: BLE001 - a report field, never a failure
        return f"unknown ({type(e).__name__})"


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=("encode", "rank"))
    parser.add_argument("model")
    parser.add_argument("inputs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="OpenVINO's INFERENCE_NUM_THREADS (default: all)")
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers as st
    import torch

    inputs = json.loads(args.inputs.read_text())
    kwargs = {} if args.threads is None else {"ov_config": {"INFERENCE_NUM_THREADS": str(args.threads)}}
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the tokenizer-side torch work, as in the sentfuse process
    start = time.perf_counter()
    if args.task == "encode":
        model = st.SentenceTransformer(args.model, device="cpu", backend="openvino", local_files_only=True,
                                       model_kwargs=kwargs)
        result, output = _encode(model, inputs, args.repeats, args.batch_size)
    else:
        model = st.CrossEncoder(args.model, device="cpu", backend="openvino", local_files_only=True,
                                model_kwargs=kwargs)
        result, output = _rank(model, inputs, args.repeats, args.batch_size)
    np.save(args.out / "output.npy", output)
    (args.out / "result.json").write_text(json.dumps(result | {
        "load_and_warmup_s": time.perf_counter() - start - sum(result["seconds"]), "inference_precision": _precision(model),
        "sentence_transformers": st.__version__, "torch_threads": torch.get_num_threads(), "threads": args.threads,
        "openvino": __import__("openvino").__version__,
    }))


def _encode(model, texts: list[str], repeats: int, batch_size: int):
    import numpy as np

    model.encode(texts[:64], batch_size=batch_size, show_progress_bar=False)
    seconds, output = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        output = model.encode(texts, batch_size=batch_size, show_progress_bar=False)
        seconds.append(time.perf_counter() - start)
    return {"seconds": seconds}, np.asarray(output, dtype=np.float32)


def _rank(model, work: list, repeats: int, batch_size: int):
    """Per query the fastest of repeats rank calls; seconds holds the one total (wall), cpu_seconds likewise."""
    import numpy as np
    import torch

    identity = torch.nn.Identity()
    model.rank(work[0][0], work[0][1][:16], activation_fn=identity, batch_size=batch_size)
    wall, cpu, scores = 0.0, 0.0, []
    for query, documents in work:
        best, hits = (float("inf"), 0.0), None
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            hits = model.rank(query, documents, activation_fn=identity, batch_size=batch_size)
            best = min(best, (time.perf_counter() - start, time.process_time() - start_cpu))
        wall, cpu = wall + best[0], cpu + best[1]
        row = np.zeros(len(documents), dtype=np.float32)
        for hit in hits:
            row[hit["corpus_id"]] = hit["score"]
        scores.append(row)
    return {"seconds": [wall], "cpu_seconds": cpu}, np.stack(scores)


if __name__ == "__main__":
    _main()
