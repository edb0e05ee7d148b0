"""Input shards, embedding shards on disk and the manifest that says which of them are complete.

One input shard (a file, or a slice of a Ray Dataset) becomes one output Parquet file named after it,
written under a temporary name and renamed when complete. manifest.json (also replaced atomically)
lists every shard of the run in input order with its row count and the SHA-256 of its output file:
a shard counts as done only when its file exists and matches that checksum. Global row i is row
i - offset of the shard holding it, offsets running over the shards in manifest order.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._checks import json_record
from ..encode.quantize import PRECISIONS

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "sentfuse-embeddings/1"
FORMATS = ("parquet", "jsonl", "text")
# The stored embedding column: quantize_embeddings' precisions, plus half precision floats.
STORED_PRECISIONS = ("float32", "float16") + tuple(p for p in PRECISIONS if p != "float32")
FLOAT_PRECISIONS = ("float32", "float16")
ROW_COLUMN, ID_COLUMN, EMBEDDING_COLUMN = "row", "id", "embedding"
TMP_MARK = ".tmp-"


class InputError(ValueError):
    """An input shard that cannot be read as asked (missing file or field, bad record, bad text)."""


@dataclass(frozen=True)
class Shard:
    """One unit of work: `source` is a file path, or a list of Arrow table refs for a Dataset slice."""

    name: str  # output file name inside output_dir
    label: str  # what error messages call it: the input path, or the Dataset slice
    source: Any
    fingerprint: dict  # input size / mtime (files) or row count (Dataset slices): a changed input is redone


def detect_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ValueError(f"format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    if path.endswith(".parquet"):
        return "parquet"
    return "jsonl" if path.endswith((".jsonl", ".json", ".ndjson")) else "text"


def expand_paths(inputs: str | os.PathLike | list) -> list[str]:
    """Paths and globs -> existing files in the order given, each glob sorted; a pattern matching nothing is an error."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise ValueError("inputs is empty: give a Ray Dataset or at least one path or glob")
    files: list[str] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"inputs must be a Ray Dataset or paths/globs, got an item of type {type(item).__name__}")
        text = os.fspath(item)
        matched = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text]
        if not matched:
            raise InputError(f"input pattern {text!r} matches no file")
        for path in matched:
            if not os.path.exists(path):
                raise InputError(f"input file {path} does not exist")
            if os.path.isdir(path):
                raise InputError(f"input {path} is a folder; give files or a glob such as '{path}/*.parquet'")
        files.extend(matched)
    if len(set(map(os.path.abspath, files))) != len(files):
        raise InputError("an input file is named twice (check overlapping globs); each shard must be encoded once")
    return files


def file_shards(files: list[str]) -> list[Shard]:
    """One shard per file, named by its path below the files' common folder ('/' -> '__')."""
    absolute = [os.path.abspath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(f) for f in absolute])
    shards = []
    for path, full in zip(files, absolute):
        name = os.path.relpath(full, root).replace(os.sep, "__")
        name = name if name.endswith(".parquet") else name + ".parquet"
        stat = os.stat(full)
        shards.append(Shard(name, path, full, {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    if len({s.name for s in shards}) != len(shards):
        raise InputError("two inputs map to the same output shard name (e.g. a.jsonl and a.jsonl.parquet); rename one")
    return shards


def _column(table: pa.Table, field: str, label: str) -> pa.ChunkedArray:
    if field not in table.column_names:
        raise InputError(f"{label}: no field {field!r} (fields: {', '.join(table.column_names) or 'none'})")
    return table.column(field)


def _read_jsonl(path: str, fields: list[str]) -> pa.Table:
    columns: dict[str, list] = {f: [] for f in fields}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json_record(line, f"{path} line {lineno}", fields)
            except ValueError as e:
                raise InputError(str(e)) from None
            for field in fields:
                columns[field].append(record[field])
    return pa.table(columns) if fields else pa.table({})


def read_shard(shard: Shard, fmt: str, text_field: str, id_field: str | None) -> tuple[list, pa.Array | None]:
    """(texts, ids or None) of one shard. Text files: one text a line, blank lines kept (as `sentfuse encode`)."""
    fields = [text_field] + ([id_field] if id_field else [])
    try:
        if isinstance(shard.source, list):
            import ray

            parts = ray.get(shard.source)
            table = pa.concat_tables(parts) if parts else pa.table({})
        elif detect_format(shard.source, fmt) == "parquet":
            names = pq.read_schema(shard.source).names
            table = pq.read_table(shard.source, columns=[f for f in fields if f in names])
            for field in fields:
                if field not in names:
                    raise InputError(f"{shard.label}: no field {field!r} (fields: {', '.join(names) or 'none'})")
        elif detect_format(shard.source, fmt) == "jsonl":
            table = _read_jsonl(shard.source, fields)
        else:
            if id_field:
                raise InputError(f"{shard.label}: id_field needs Parquet or JSON lines input; text files are numbered by line")
            with open(shard.source, encoding="utf-8", newline="") as f:
                return [line.rstrip("\r\n") for line in f], None
    except UnicodeDecodeError as e:
        raise InputError(f"{shard.label} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot read {shard.label}: {e}") from None
    texts = _column(table, text_field, shard.label).to_pylist()
    ids = _column(table, id_field, shard.label).combine_chunks() if id_field else None
    return texts, ids


def embedding_column(embeddings: np.ndarray) -> pa.FixedSizeListArray:
    """[N, D] -> one fixed-size-list column (a zero-copy view when read back)."""
    flat = pa.array(np.ascontiguousarray(embeddings).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_table_atomic(table: pa.Table, path: Path) -> str:
    """Write a Parquet file under a temporary name, fsync, rename; return its SHA-256."""
    tmp = path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex}")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        checksum = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return checksum


def write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex}")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable sentfuse manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a sentfuse embeddings manifest (format {MANIFEST_FORMAT})")
    return manifest


def shard_is_complete(directory: Path, entry: dict | None, fingerprint: dict) -> bool:
    """True when the manifest entry says done, for this input, and the file on disk has its checksum."""
    if not entry or not entry.get("complete") or entry.get("input") != fingerprint:
        return False
    path = directory / entry["output"]
    return path.exists() and sha256_file(path) == entry["sha256"]


def complete_shards(directory: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(manifest, its shards with their global row offsets) for a finished run; refuses an incomplete one."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise ValueError(f"{directory} holds no {MANIFEST}: not an encode_dataset output folder")
    missing = [s["output"] for s in manifest["shards"] if not s.get("complete")]
    if missing:
        raise ValueError(
            f"{directory} is incomplete: {len(missing)} of {len(manifest['shards'])} shards are not done "
            f"(first: {missing[0]}); re-run encode_dataset to finish them"
        )
    offset = 0
    shards = []
    for entry in manifest["shards"]:
        shards.append({**entry, "offset": offset, "path": str(Path(directory) / entry["output"])})
        offset += entry["rows"]
    return manifest, shards


def read_embeddings(path: str | os.PathLike) -> np.ndarray:
    """[rows, width] embeddings of one output shard, in its stored dtype (width: bytes of a binary row)."""
    column = pq.read_table(path, columns=[EMBEDDING_COLUMN]).column(EMBEDDING_COLUMN).combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
