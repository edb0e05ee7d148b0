"""encode_dataset: a sharded corpus -> Parquet embedding shards, on a pool of Ray actors holding one Encoder each.

Ray does the scheduling and the fault tolerance: an actor that dies is restarted (max_restarts) and
its shard re-run (max_task_retries). Exactly-once comes from the shard files: each is written whole
under a temporary name and renamed, so a retried or re-run shard replaces its file, never adds rows.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from .._checks import positive_int
from ..encode import Encoder
from ..encode.quantize import calibration_ranges, quantize_embeddings
from ..model.fingerprint import model_sha256
from .shards import (
    EMBEDDING_COLUMN,
    ID_COLUMN,
    MANIFEST,
    MANIFEST_FORMAT,
    ROW_COLUMN,
    STORED_PRECISIONS,
    TMP_MARK,
    InputError,
    Shard,
    detect_format,
    embedding_column,
    expand_paths,
    file_shards,
    read_manifest,
    read_shard,
    shard_is_complete,
    write_json_atomic,
    write_table_atomic,
)

# Texts per Encoder.encode call inside a shard: large enough for its length-sorted batching to pack
# well, small enough that a bad text is found by bisection in a few calls.
DEFAULT_CHUNK_ROWS = 16384
# Texts encoded to calibrate int8 / uint8 ranges when the caller gives none (sentence-transformers'
# quantize_embeddings calibrates on whatever it is given; one range must serve every shard here).
CALIBRATION_ROWS = 4096
DEFAULT_ROWS_PER_SHARD = 100_000  # slices of a Ray Dataset input
UNCOMPARED = ("model",)  # identity fields a re-run may change: the model is known by model_sha256


class EncodeError(RuntimeError):
    """Some shards could not be encoded; the others are complete and recorded in the manifest."""

    def __init__(self, failures: dict[str, str], complete: int):
        self.failures, self.complete = failures, complete
        lines = [f"  {name}: {message}" for name, message in list(failures.items())[:10]]
        more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
        super().__init__(f"{len(failures)} shard(s) failed, {complete} complete:\n" + "\n".join(lines) + more)


@dataclass
class EncodeResult:
    output_dir: Path
    rows: int  # rows in every shard of the run
    encoded: list[str] = field(default_factory=list)  # shards computed by this call
    skipped: list[str] = field(default_factory=list)  # shards already complete, verified by checksum


def _label_rows(rows: list[int], ids: pa.Array | None, limit: int = 5) -> str:
    shown = [repr(ids[r].as_py()) if ids is not None else str(r) for r in rows[:limit]]
    kind = "ids" if ids is not None else "rows"
    return f"{kind} {', '.join(shown)}" + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


class ShardEncoder:
    """Ray Data's actor UDF: one Encoder per actor; each batch names shards to encode into Parquet files."""

    def __init__(self, encoder_cls: type, encoder_kwargs: dict, threads: int | None, shards: list[Shard],
                 output_dir: str, options: dict, ranges: list | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.encoder = encoder_cls(**encoder_kwargs)
        self.shards, self.output_dir, self.options, self.ranges = shards, output_dir, options, ranges

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results: dict[str, list] = {"output": [], "rows": [], "sha256": [], "error": []}
        for index in batch["shard"]:
            shard = self.shards[int(index)]
            try:
                done = self.encode_shard(shard, self.options, self.ranges)
            except InputError as e:  # the data's fault: reported, not retried, the other shards go on
                done = {"output": shard.name, "rows": -1, "sha256": "", "error": str(e)}
            for key in results:
                results[key].append(done.get(key, ""))
        return results

    def _encode(self, texts: list[str], options: dict) -> np.ndarray:
        return self.encoder.encode(
            texts, prompt_name=options["prompt_name"], batch_size=options["batch_size"],
            max_batch_tokens=options["max_batch_tokens"], normalize_embeddings=options["normalize_embeddings"],
            show_progress_bar=False, convert_to_numpy=True,
        )

    def _bad_rows(self, texts: list[str], start: int, options: dict) -> list[tuple[int, str]]:
        """Rows (from `start`) whose text alone fails to encode, found by bisection."""
        try:
            self._encode(texts, options)
            return []
        except Exception as e:  # any failure of the model on these texts is the data's to report
            if len(texts) == 1:
                return [(start, f"{type(e).__name__}: {e}")]
        half = len(texts) // 2
        return self._bad_rows(texts[:half], start, options) + self._bad_rows(texts[half:], start + half, options)

    def embed(self, shard: Shard, options: dict, limit: int | None = None) -> tuple[np.ndarray, pa.Array | None]:
        """float32 [rows, D] embeddings of a shard (its first `limit` rows) and its ids; InputError naming bad rows."""
        texts, ids = read_shard(shard, options["format"], options["text_field"], options["id_field"])
        texts = texts[:limit]
        not_text = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if not_text:
            raise InputError(f"{shard.label}: {len(not_text)} texts are not strings: {_label_rows(not_text, ids)}")
        chunk = options["chunk_rows"]
        parts = []
        for start in range(0, len(texts), chunk):
            try:
                parts.append(self._encode(texts[start : start + chunk], options))
            except Exception as e:
                bad = self._bad_rows(texts[start : start + chunk], start, options)
                if not bad:
                    raise
                rows = [r for r, _ in bad]
                raise InputError(f"{shard.label}: cannot encode {_label_rows(rows, ids)}: {bad[0][1]}") from e
        dim = self.encoder.get_embedding_dimension()
        return (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)), ids

    def encode_shard(self, shard: Shard, options: dict, ranges: list | None) -> dict:
        embeddings, ids = self.embed(shard, options)
        precision = options["precision"]
        if precision == "float16":
            stored = embeddings.astype(np.float16)
        elif precision == "float32":
            stored = embeddings
        else:
            stored = quantize_embeddings(embeddings, precision, ranges=None if ranges is None else np.array(ranges))
        columns = {ROW_COLUMN: pa.array(np.arange(len(stored), dtype=np.int64))}
        if ids is not None:
            columns[ID_COLUMN] = ids
        columns[EMBEDDING_COLUMN] = embedding_column(stored)
        checksum = write_table_atomic(pa.table(columns), Path(self.output_dir) / shard.name)
        return {"output": shard.name, "rows": len(stored), "sha256": checksum, "error": ""}


def _encoder_spec(model: Any, encoder_kwargs: dict) -> tuple[type, dict]:
    """(class, kwargs) that rebuild the encoder in each actor: an Encoder (or subclass) instance, or a model name."""
    if isinstance(model, Encoder):
        if encoder_kwargs:
            raise ValueError(f"{', '.join(encoder_kwargs)} apply to a model name; an Encoder instance brings its own")
        return type(model), model.worker_kwargs()
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a model folder or name, or an Encoder; got {type(model).__name__}")
    return Encoder, {"model_name_or_path": None if model is None else os.fspath(model), **encoder_kwargs}


def _actor_options(num_workers: int | None, num_gpus_per_worker: float | None, cpus_per_worker: int | None):
    """(workers, ray actor options, torch threads): one actor per GPU when the cluster has GPUs, else per CPU worker."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if num_gpus_per_worker is None:
        num_gpus_per_worker = 1 if gpus else 0
    if num_gpus_per_worker:
        workers = num_workers or max(1, int(gpus // num_gpus_per_worker))
        return workers, {"num_gpus": num_gpus_per_worker, "num_cpus": cpus_per_worker or 1}, cpus_per_worker
    if cpus_per_worker is None:
        # One torch process per node by default: GEMMs scale across a node's cores better than processes do.
        node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        cpus_per_worker = max(1, int(min(c for c in node_cpus if c > 0)))
    workers = num_workers or max(1, int(resources.get("CPU", 1) // cpus_per_worker))
    return workers, {"num_cpus": cpus_per_worker}, cpus_per_worker


def _plan_shards(inputs: Any, rows_per_shard: int) -> list[Shard]:
    if isinstance(inputs, ray.data.Dataset):
        total = inputs.count()
        pieces = inputs.split_at_indices(list(range(rows_per_shard, total, rows_per_shard))) if total else [inputs]
        return [
            Shard(f"part-{i:05d}.parquet", f"Dataset rows {i * rows_per_shard}..", piece.to_arrow_refs(),
                  {"rows": piece.count()})
            for i, piece in enumerate(pieces)
        ]
    return file_shards(expand_paths(inputs))


def _locking(manifest: dict | None) -> dict | None:
    """The manifest when it binds a re-run to its model and options: once a shard of it is complete (a run
    whose every shard failed has written nothing to keep consistent with)."""
    return manifest if manifest and any(entry.get("complete") for entry in manifest["shards"]) else None


def _check_same_run(output_dir: Path, manifest: dict | None, identity: dict) -> None:
    """Refuse a folder holding shards made by another model or with other options, naming what differs."""
    if manifest is None:
        return
    if manifest.get("model_sha256") != identity["model_sha256"]:
        raise ValueError(
            f"{output_dir} holds shards encoded by another model: {manifest.get('model')} with SHA-256 "
            f"{manifest.get('model_sha256')}, but this run's model {identity['model']} has SHA-256 "
            f"{identity['model_sha256']}; use another output_dir or remove that one"
        )
    for key, value in identity.items():
        if key not in UNCOMPARED and manifest.get(key) != value:
            raise ValueError(
                f"{output_dir} holds shards encoded with {key}={manifest.get(key)!r}, but this run has "
                f"{key}={value!r}; use another output_dir or remove that one"
            )


@ray.remote(max_retries=3)
def _identity(spec: tuple, options: dict) -> dict:
    """What a re-run must match to reuse a folder's shards: the model's files, its settings, the stored form.
    The model's path is kept for messages only: the same files elsewhere are the same model."""
    encoder = spec[0](**spec[1])
    settings = encoder.worker_kwargs()
    prompt_name = options["prompt_name"] or encoder.default_prompt_name
    dtype = settings["dtype"]
    return {
        "model": settings["model_name_or_path"], "model_sha256": model_sha256(encoder.model_path),
        "dim": encoder.get_embedding_dimension(),
        "dtype": None if dtype is None else str(dtype).removeprefix("torch."),  # None: as in the checkpoint
        "max_seq_length": settings["max_seq_length"],
        "prompt": encoder.prompts.get(prompt_name, "") if prompt_name else "",
        **{k: options[k] for k in ("precision", "normalize_embeddings", "text_field", "id_field")},
    }


@ray.remote(max_retries=3)
def _calibrate(spec: tuple, threads: int | None, shards: list[Shard], options: dict, rows: int) -> list:
    """int8 / uint8 ranges [2, D] from the first `rows` texts of the shards that can be read, in order."""
    actor = ShardEncoder(*spec, threads, shards, "", options, None)
    parts: list[np.ndarray] = []
    for shard in shards:
        try:
            parts.append(actor.embed(shard, options, limit=rows - sum(map(len, parts)))[0])
        except InputError:  # reported when the shard itself is encoded
            continue
        if sum(map(len, parts)) >= rows:
            break
    if sum(map(len, parts)) < 2:
        raise ValueError(f"cannot calibrate {options['precision']} ranges: fewer than 2 readable texts; pass int8_ranges")
    return calibration_ranges(np.concatenate(parts), options["precision"]).tolist()


def _run_shards(spec: tuple, actor_args: tuple, pending: list[Shard], output_dir: Path, manifest: dict,
                options: dict, retries: int) -> dict[str, str]:
    """Encode the pending shards with Ray Data, recording each in the manifest as it completes; return failures."""
    workers, ray_options, threads = actor_args
    entries = {entry["output"]: entry for entry in manifest["shards"]}
    work = ray.data.from_items([{"shard": i} for i in range(len(pending))], override_num_blocks=len(pending))
    with warnings.catch_warnings():
        # Ray 2.60 deprecates extra remote args but has no named parameter for actor restarts; its
        # default (restart forever) would loop on a shard that always kills its worker.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
        results = work.map_batches(
            ShardEncoder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(workers, len(pending))),
            fn_constructor_args=(*spec, threads, pending, str(output_dir), options, manifest["ranges"]),
            max_restarts=retries, max_task_retries=retries, **ray_options,
        )
    failures: dict[str, str] = {}
    for done in results.iter_rows():
        if done["error"]:
            failures[done["output"]] = done["error"]
            continue
        entries[done["output"]].update(output=done["output"], rows=int(done["rows"]), sha256=done["sha256"],
                                       complete=True)
        write_json_atomic(manifest, output_dir / MANIFEST)
    return failures


def _new_manifest(shards: list[Shard], identity: dict, old: dict | None, output_dir: Path) -> tuple[dict, list[Shard]]:
    """The manifest for this run (every shard, in input order) and the shards still to encode."""
    previous = {entry["output"]: entry for entry in (old or {}).get("shards", [])}
    entries, pending = [], []
    for shard in shards:
        entry = previous.get(shard.name)
        if shard_is_complete(output_dir, entry, shard.fingerprint):
            entries.append(entry)
        else:
            entries.append({"output": shard.name, "source": shard.label, "input": shard.fingerprint,
                            "rows": 0, "sha256": "", "complete": False})
            pending.append(shard)
    manifest = {"format": MANIFEST_FORMAT, **identity, "ranges": (old or {}).get("ranges"), "shards": entries}
    return manifest, pending


def encode_dataset(
    inputs: Any,
    output_dir: str | os.PathLike,
    model: str | os.PathLike | Encoder | None = None,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    format: str = "auto",
    precision: str = "float32",
    normalize_embeddings: bool = False,
    prompt_name: str | None = None,
    dtype: str | None = None,
    max_seq_length: int | None = None,
    truncate_dim: int | None = None,
    batch_size: int | None = None,
    max_batch_tokens: int | None = None,
    num_workers: int | None = None,
    num_gpus_per_worker: float | None = None,
    cpus_per_worker: int | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    int8_ranges: Sequence | None = None,
    max_retries: int = 3,
) -> EncodeResult:
    """Embed a sharded corpus on the Ray cluster (ray.init() first, or a local one starts) into Parquet shards.

    inputs: a Ray Dataset (cut into shards of rows_per_shard rows, in its order) or paths / globs of
    Parquet, JSON lines or text files (one shard per file; format "auto" goes by extension; a text
    file holds one text a line). Each output shard, named after its input shard, has the columns
    "row" (row within the shard), "id" (id_field, when given) and "embedding" (fixed-size lists in
    `precision`: float32, float16, int8, uint8, binary or ubinary). manifest.json records the model
    (the SHA-256 of its files), the options, every shard's row count and SHA-256. A re-run skips the
    shards that manifest and checksum show complete, and refuses a folder whose complete shards were
    made by another model (other weights under the same path too) or with other options.

    One actor per GPU (num_gpus_per_worker=1 when the cluster has GPUs), else one per cpus_per_worker
    CPUs (default: a node's CPUs), each holding one Encoder (model, dtype, max_seq_length,
    truncate_dim as Encoder takes them; or an Encoder instance, rebuilt in each actor). A dying
    actor is restarted and its shard re-run up to max_retries times. A shard whose input cannot be
    read, or holding a text that cannot be encoded, is not written; after the other shards finish,
    EncodeError names each such shard and its bad rows or ids. int8 / uint8 share one range per
    dimension: int8_ranges [2, D], or else calibrated on the first 4,096 texts that can be read.
    """
    # Long for its keyword arguments and docstring; the body checks them, then plans, runs and records shards.
    if precision not in STORED_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(STORED_PRECISIONS)}, got {precision!r}")
    if not isinstance(text_field, str) or (id_field is not None and not isinstance(id_field, str)):
        raise TypeError("text_field must be a str and id_field a str or None")
    detect_format("", format)
    positive_int(rows_per_shard, "rows_per_shard", allow_none=False)
    if not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
    encoder_kwargs = {k: v for k, v in (("dtype", dtype), ("max_seq_length", max_seq_length),
                                         ("truncate_dim", truncate_dim)) if v is not None}
    spec = _encoder_spec(model, encoder_kwargs)
    options = {"format": format, "text_field": text_field, "id_field": id_field, "precision": precision,
               "normalize_embeddings": bool(normalize_embeddings), "prompt_name": prompt_name,
               "batch_size": positive_int(batch_size, "batch_size"),
               "max_batch_tokens": positive_int(max_batch_tokens, "max_batch_tokens"), "chunk_rows": DEFAULT_CHUNK_ROWS}

    if not ray.is_initialized():
        ray.init()
    shards = _plan_shards(inputs, rows_per_shard)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    old = _locking(read_manifest(output))
    identity = ray.get(_identity.remote(spec, options))
    _check_same_run(output, old, identity)
    for stale in output.glob(f"*{TMP_MARK}*"):  # left by writers killed mid-write
        stale.unlink(missing_ok=True)
    manifest, pending = _new_manifest(shards, identity, old, output)
    write_json_atomic(manifest, output / MANIFEST)

    actor_args = _actor_options(num_workers, num_gpus_per_worker, cpus_per_worker)
    if precision in ("int8", "uint8") and pending and manifest["ranges"] is None:
        manifest["ranges"] = (np.asarray(int8_ranges, dtype=np.float32).tolist() if int8_ranges is not None else
                              ray.get(_calibrate.options(**actor_args[1]).remote(
                                  spec, actor_args[2], shards, options, CALIBRATION_ROWS)))
    failures = _run_shards(spec, actor_args, pending, output, manifest, options, max_retries) if pending else {}
    if failures:
        raise EncodeError(failures, sum(1 for entry in manifest["shards"] if entry["complete"]))
    done = {s.name for s in pending}
    return EncodeResult(output, sum(e["rows"] for e in manifest["shards"]),
                        encoded=[s.name for s in shards if s.name in done],
                        skipped=[s.name for s in shards if s.name not in done])
