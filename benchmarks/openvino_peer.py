"""sentence-transformers' OpenVINO backend as a benchmark peer, run in its own venv.

Its optimum-intel pins transformers < 5, so it cannot share sentfuse's venv: the benchmarks call `run_peer`,
which starts this file under the peer venv's python (built by ../shared/peers/openvino-venv.sh) on texts or
pairs written to a temporary folder, and reads back timings (JSON) and embeddings / scores (.npy).

    <peer python> benchmarks/openvino_peer.py encode MODEL TEXTS.json OUT_DIR [--repeats N] [--batch-size B]
    <peer python> benchmarks/openvino_peer.py rank MODEL PAIRS.json OUT_DIR [--repeats N] [--batch-size B]

encode: SentenceTransformer(MODEL, backend="openvino").encode(texts); rank: CrossEncoder(MODEL,
backend="openvino").predict(pairs) (what rank computes, without the sort). Each is timed --repeats times after
one warm-up call on the first 64 inputs; OpenVINO's own precision choice is kept (its CPU plugin computes in
bf16 on CPUs with bf16 units unless told otherwise) and reported as `inference_precision`.
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
             python: Path = PEER_PYTHON, timeout: float = 900) -> dict | None:
    """{'seconds': [...], 'output': ndarray, 'inference_precision': str, ...} from the peer, or None (with the
    reason printed) when its venv is missing or it fails."""
    import numpy as np

    if not python.exists():
        print(f"OpenVINO peer skipped: no {python} (build it with ../shared/peers/openvino-venv.sh)")
        return None
    with tempfile.TemporaryDirectory(prefix="openvino_peer_") as tmp:
        data = Path(tmp) / "inputs.json"
        data.write_text(json.dumps(inputs))
        command = [str(python), __file__, task, model, str(data), tmp, "--repeats", str(repeats),
                   "--batch-size", str(batch_size)]
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
        compiled = getattr(ov_model, "compiled_model", None) or ov_model.request.get_compiled_model()
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
    args = parser.parse_args()

    import numpy as np
    import sentence_transformers as st
    import torch

    inputs = json.loads(args.inputs.read_text())
    start = time.perf_counter()
    if args.task == "encode":
        model = st.SentenceTransformer(args.model, device="cpu", backend="openvino", local_files_only=True)
        call = lambda items: model.encode(items, batch_size=args.batch_size, show_progress_bar=False)  # noqa: E731
    else:
        inputs = [tuple(pair) for pair in inputs]
        model = st.CrossEncoder(args.model, device="cpu", backend="openvino", local_files_only=True)
        call = lambda items: model.predict(items, batch_size=args.batch_size, show_progress_bar=False)  # noqa: E731
    load_s = time.perf_counter() - start
    call(inputs[:64])
    seconds, output = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        output = call(inputs)
        seconds.append(time.perf_counter() - start)
    np.save(args.out / "output.npy", np.asarray(output, dtype=np.float32))
    (args.out / "result.json").write_text(json.dumps({
        "seconds": seconds, "load_s": load_s, "inference_precision": _precision(model),
        "sentence_transformers": st.__version__, "torch_threads": torch.get_num_threads(),
        "openvino": __import__("openvino").__version__,
    }))


if __name__ == "__main__":
    _main()
