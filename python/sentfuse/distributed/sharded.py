"""Exact search and near-duplicate pairs over the embedding shards encode_dataset wrote, as Ray tasks.

Each task reads only its own shards, so no process ever holds the whole corpus. Both results equal
the single-machine ones on the concatenated shards (manifest order): search merges the per-shard
top-k lists by (score descending, global index ascending), the order cosine_topk itself uses; the
pair blocks (i <= j) partition the upper triangle of the pair matrix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from tqdm.auto import tqdm

import sentfuse

from .._checks import check_metric, check_threshold, positive_int
from .shards import FLOAT_PRECISIONS, complete_shards, read_embeddings, write_table_atomic

DEFAULT_BLOCK_ROWS = 200_000  # rows per block of threshold_pairs: a 200k x 384 fp32 block is 300 MB
PAIRS_COLUMNS = ("row", "col", "score")


def _float_shards(embeddings_dir: str | os.PathLike) -> tuple[dict, list[dict]]:
    manifest, shards = complete_shards(embeddings_dir)
    if manifest["precision"] not in FLOAT_PRECISIONS:
        raise ValueError(
            f"{embeddings_dir} stores {manifest['precision']} embeddings; search and threshold_pairs need "
            f"{' or '.join(FLOAT_PRECISIONS)} (encode_dataset(precision=...))"
        )
    return manifest, shards


def _load(paths: list[str], dim: int, device: str) -> torch.Tensor:
    """fp32 [rows, dim] of consecutive shards, on `device`."""
    parts = [read_embeddings(p).astype(np.float32, copy=False) for p in paths]
    stacked = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return torch.from_numpy(stacked).to(device)


def _device(num_gpus: float) -> str:
    return "cuda" if num_gpus and torch.cuda.is_available() else "cpu"


class ShardSearcher:
    """A Ray actor holding the queries; scores shards against them one at a time."""

    def __init__(self, queries: torch.Tensor, dim: int, options: dict, num_gpus: float):
        self.device = _device(num_gpus)
        self.queries, self.dim, self.options = queries.to(self.device), dim, options

    def topk(self, path: str, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        corpus = _load([path], self.dim, self.device)
        scores, indices = sentfuse.cosine_topk(self.queries, corpus, k, corpus_offset=offset, **self.options)
        return scores.cpu(), indices.cpu()


def _merge(best: tuple | None, new: tuple, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of two candidate lists by (score desc, index asc): shards finish in any order."""
    if best is None:
        return new
    scores, indices = torch.cat([best[0], new[0]], dim=1), torch.cat([best[1], new[1]], dim=1)
    # -1 pads a short list; as the largest index it sorts last among equal (-inf) scores.
    by_index = torch.sort(torch.where(indices < 0, torch.iinfo(torch.int64).max, indices), dim=1, stable=True)[1]
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    order = torch.sort(scores, dim=1, descending=True, stable=True)[1][:, :k]
    return scores.gather(1, order), indices.gather(1, order)


def search(
    queries: Any,
    embeddings_dir: str | os.PathLike,
    k: int = 10,
    *,
    exclude_self: bool = False,
    min_score: float | None = None,
    num_workers: int | None = None,
    num_gpus_per_worker: float = 0,
    show_progress_bar: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k of query embeddings [Q, D] over the shards of an encode_dataset folder.

    Returns (scores [Q, min(k, rows)] fp32, global row indices [Q, ...] int64) best first, exactly
    as sentfuse.search_topk over the concatenated shards (ties: lower global index; short rows
    padded with (-inf, -1)). Shards are scored by num_workers actors (default: the cluster's CPUs,
    or its GPUs with num_gpus_per_worker=1), each loading one shard at a time; the driver keeps only
    the running [Q, k] lists. Map indices to rows or ids with `locate`.
    """
    k = positive_int(k, "k", allow_none=False)
    manifest, shards = _float_shards(embeddings_dir)
    q = torch.as_tensor(np.asarray(queries) if not isinstance(queries, torch.Tensor) else queries).float().cpu()
    if q.dim() == 1:
        q = q.unsqueeze(0)
    if q.dim() != 2 or (shards and q.shape[1] != manifest["dim"]):
        raise ValueError(f"queries must be [Q, {manifest['dim']}] embeddings, got shape {tuple(q.shape)}")
    if not ray.is_initialized():
        ray.init()
    options = {"exclude_self": exclude_self, "min_score": min_score}
    workers = num_workers or max(1, int(ray.cluster_resources().get("GPU" if num_gpus_per_worker else "CPU", 1)))
    actor = ray.remote(ShardSearcher).options(num_cpus=1, num_gpus=num_gpus_per_worker, max_restarts=3,
                                              max_task_retries=3)
    q_ref = ray.put(q)
    actors = [actor.remote(q_ref, manifest["dim"], options, num_gpus_per_worker)
              for _ in range(min(workers, max(len(shards), 1)))]
    pool = ray.util.ActorPool(actors)
    tasks = [(s["path"], s["offset"]) for s in shards if s["rows"]]
    best = None
    for result in tqdm(pool.map_unordered(lambda a, t: a.topk.remote(*t, k), tasks), total=len(tasks),
                       desc="Searching shards", unit="shard", disable=not show_progress_bar):
        best = _merge(best, result, k)
    if best is None:
        return torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.int64)
    return best


def _blocks(shards: list[dict], block_rows: int) -> list[dict]:
    """Consecutive shards grouped into blocks of about block_rows rows: {paths, offset, rows}."""
    blocks: list[dict] = []
    for shard in shards:
        if not blocks or blocks[-1]["rows"] + shard["rows"] > block_rows and blocks[-1]["rows"]:
            blocks.append({"paths": [], "offset": shard["offset"], "rows": 0})
        blocks[-1]["paths"].append(shard["path"])
        blocks[-1]["rows"] += shard["rows"]
    return blocks


@ray.remote(max_retries=3)
def _block_pairs(a: dict, b: dict, same: bool, dim: int, threshold: float, metric: str, out: str,
                 num_gpus: float) -> int:
    """Pairs of one block pair, with global ids, written to `out`; returns how many."""
    device = _device(num_gpus)
    x = _load(a["paths"], dim, device)
    y = None if same else _load(b["paths"], dim, device)
    rows, cols, scores = sentfuse.threshold_pairs(x, y, threshold, metric=metric)
    table = pa.table({"row": (rows.cpu() + a["offset"]).numpy(), "col": (cols.cpu() + b["offset"]).numpy(),
                      "score": scores.cpu().numpy()})
    write_table_atomic(table, Path(out))
    return len(rows)


def threshold_pairs(
    embeddings_dir: str | os.PathLike,
    threshold: float,
    output_dir: str | os.PathLike,
    *,
    metric: str = "cosine",
    block_rows: int = DEFAULT_BLOCK_ROWS,
    num_gpus_per_task: float = 0,
    show_progress_bar: bool = False,
) -> int:
    """Every pair (i < j) of an encode_dataset folder's rows with cosine >= threshold, into Parquet.

    Shards are grouped into blocks of about block_rows rows; one Ray task per block pair (i <= j)
    writes output_dir/pairs-<i>-<j>.parquet with columns row, col (global row indices, row < col)
    and score (fp32). Together (see read_pairs) they equal sentfuse.threshold_pairs (same metric) on
    the concatenated shards. Returns the number of pairs.
    """
    threshold = check_threshold(threshold, metric=check_metric(metric))
    positive_int(block_rows, "block_rows", allow_none=False)
    manifest, shards = _float_shards(embeddings_dir)
    out = Path(output_dir)
    if out.resolve() == Path(embeddings_dir).resolve():
        raise ValueError("output_dir must differ from embeddings_dir: pair files are not embedding shards")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("pairs-*.parquet"):  # a previous run's blocks may not match this one's
        old.unlink()
    if not ray.is_initialized():
        ray.init()
    blocks = _blocks([s for s in shards if s["rows"]], block_rows)
    width = len(str(max(len(blocks) - 1, 0)))
    refs = [
        _block_pairs.options(num_gpus=num_gpus_per_task).remote(
            blocks[i], blocks[j], i == j, manifest["dim"], threshold, metric,
            str(out / f"pairs-{i:0{width}d}-{j:0{width}d}.parquet"), num_gpus_per_task)
        for i in range(len(blocks)) for j in range(i, len(blocks))
    ]
    total = 0
    with tqdm(total=len(refs), desc="Pair blocks", unit="block", disable=not show_progress_bar) as bar:
        while refs:
            done, refs = ray.wait(refs)
            total += sum(ray.get(done))
            bar.update(len(done))
    return total


def read_pairs(pairs_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols int64, scores fp32) of a threshold_pairs folder, sorted by (row, col) like sentfuse.threshold_pairs."""
    files = sorted(Path(pairs_dir).glob("pairs-*.parquet"))
    if not files:
        raise ValueError(f"{pairs_dir} holds no pairs-*.parquet files (from distributed.threshold_pairs)")
    table = pa.concat_tables([pq.read_table(f, columns=list(PAIRS_COLUMNS)) for f in files])
    # Arrow's arrays are read-only; torch.from_numpy wants memory it may write.
    rows, cols, scores = (torch.from_numpy(np.array(table.column(c).to_numpy())) for c in PAIRS_COLUMNS)
    order = np.lexsort((cols.numpy(), rows.numpy()))
    return rows[order], cols[order], scores[order]


def locate(embeddings_dir: str | os.PathLike, indices: Any) -> list:
    """For global row indices (e.g. search's), the shard name and row in it, and its id when ids were stored."""
    _, shards = complete_shards(embeddings_dir)
    offsets = np.array([s["offset"] for s in shards])
    flat = np.asarray(indices).reshape(-1)
    found: list = []
    tables: dict[str, pa.Table] = {}
    for index in flat.tolist():
        if index < 0:
            found.append(None)
            continue
        shard = shards[int(np.searchsorted(offsets, index, side="right")) - 1]
        if shard["path"] not in tables:
            names = pq.read_schema(shard["path"]).names
            tables[shard["path"]] = pq.read_table(shard["path"], columns=[c for c in ("row", "id") if c in names])
        table, row = tables[shard["path"]], index - shard["offset"]
        found.append({"shard": shard["output"], "row": row,
                      **({"id": table.column("id")[row].as_py()} if "id" in table.column_names else {})})
    return found
