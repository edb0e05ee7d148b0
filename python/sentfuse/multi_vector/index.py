"""A multi-vector index on disk, for corpora larger than memory: every document's token vectors packed into one
float16 matrix, their offsets, and a manifest naming the model that made them by the SHA-256 of its files.

    INDEX/manifest.json   what the index holds and was built from (written last)
    INDEX/tokens.f16      [total_tokens, dim] float16, row-major, little-endian: document d is rows
                          offsets[d]:offsets[d + 1] (a document whose tokens were all masked has none)
    INDEX/offsets.i64     [documents + 1] int64, from 0 to total_tokens

Raw files rather than .npy so that the writer can append as it encodes: only one chunk of documents is ever in
memory. The folder is built under a temporary name beside INDEX and renamed into place when complete, so a
failed or killed write leaves either the old index or none, never a half one (a killed write may leave its
hidden .INDEX.*.tmp folder behind; nothing reads it). Searching memory-maps the files and scores them in
chunks of whole documents through the maxsim_topk op, in float32 over the stored float16 values, merging each
chunk's top k into the running best.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _io, _ops
from .._checks import positive_int
from ..model.fingerprint import model_sha256
from .scoring import padded_queries, token_side

INDEX_FORMAT = 1
FORMAT_KEY = "sentfuse_multi_vector_index"
MANIFEST, TOKENS, OFFSETS = "manifest.json", "tokens.f16", "offsets.i64"
STORED_DTYPE = np.float16
DEFAULT_CHUNK_DOCUMENTS = 4096  # documents encoded per write: large enough for encode's length bucketing
DEFAULT_CHUNK_TOKENS = 1 << 18  # document tokens scored per maxsim_topk call: 128 MB of fp32 at dim 128


class IndexFolderError(ValueError):
    """A folder that is not a complete multi-vector index, or one built by another model."""


def is_index(path: str | os.PathLike) -> bool:
    """Whether path is a folder holding a multi-vector index manifest."""
    manifest = Path(path) / MANIFEST
    try:
        return manifest.is_file() and FORMAT_KEY in json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """A new empty folder beside path that replaces path when the block succeeds (removed when it fails)."""
    if path.exists() and not is_index(path):
        raise IndexFolderError(f"{path} exists and is not a multi-vector index; name a new folder (it would be replaced)")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    temporary.mkdir()
    try:
        yield temporary
        if path.exists():
            # Two renames: a crash between them leaves the old index under .PATH.*.old, never a mixed one.
            old = path.with_name(f".{path.name}.{secrets.token_hex(6)}.old")
            os.rename(path, old)
            os.rename(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):  # the renames reach the disk with the parent folder's metadata
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)


def _append(f: Any, array: np.ndarray) -> None:
    f.write(memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B"))


def _stored(tokens: torch.Tensor, first: int) -> np.ndarray:
    """A chunk's token vectors as float16, refused where float16 cannot hold them."""
    with np.errstate(over="ignore"):  # an overflow is reported below, with the documents it came from
        stored = tokens.detach().float().cpu().numpy().astype(STORED_DTYPE)
    if not np.isfinite(stored).all():
        raise IndexFolderError(f"the token vectors of documents from {first} on overflow float16 (|x| > 65504); an index "
                         "stores float16: normalize the embeddings or use a model that does")
    return stored


def write_index(path: str | os.PathLike, encoder: Any, documents: Sequence[str], *, prompt: str | None = None,
                batch_size: int = 32, chunk_documents: int = DEFAULT_CHUNK_DOCUMENTS, show_progress_bar: bool = False,
                source: dict[str, Any] | None = None) -> MultiVectorIndex:
    """Encode documents with encoder.encode_document, chunk by chunk, into a new index at path (replacing an index
    there, atomically). source: what the caller wants recorded about the documents (kept in the manifest)."""
    path = Path(path)
    positive_int(chunk_documents, "chunk_documents")
    total, dim = 0, encoder.get_embedding_dimension()
    with _atomic_folder(path) as folder:
        with _io.atomic_write(folder / TOKENS) as tokens_file, _io.atomic_write(folder / OFFSETS) as offsets_file, \
                tqdm(total=len(documents), desc="Indexing", unit="document", disable=not show_progress_bar) as bar:
            _append(offsets_file, np.zeros(1, dtype=np.int64))
            for first in range(0, len(documents), chunk_documents):
                chunk = list(documents[first : first + chunk_documents])
                tokens, offsets = encoder.encode_document(chunk, prompt=prompt, batch_size=batch_size, packed=True,
                                                          show_progress_bar=False)
                _append(tokens_file, _stored(tokens.reshape(-1, dim), first))
                _append(offsets_file, offsets[1:].numpy().astype(np.int64) + total)
                total += int(offsets[-1])
                bar.update(len(chunk))
        manifest = {
            FORMAT_KEY: INDEX_FORMAT, "model": str(encoder.model_path), "model_sha256": model_sha256(encoder.model_path),
            "similarity_fn_name": encoder.similarity_fn_name, "prompt": prompt or "", "documents": len(documents),
            "tokens": total, "dim": dim, "dtype": "float16", "source": source or {},
        }
        _io.write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return MultiVectorIndex(path)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise IndexFolderError(f"{path} is not a folder; a multi-vector index is a folder written by write_index "
                         "(sentfuse encode --multi-vector)")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IndexFolderError(f"{path} has no readable {MANIFEST}, so it is not a complete multi-vector index ({e})") from None
    if not isinstance(manifest, dict) or manifest.get(FORMAT_KEY) != INDEX_FORMAT:
        raise IndexFolderError(f"{path / MANIFEST} is not a sentfuse multi-vector index manifest of format {INDEX_FORMAT}")
    return manifest


def _mapped(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    size = path.stat().st_size if path.is_file() else -1
    if size != expected:
        raise IndexFolderError(f"{path} holds {max(size, 0)} bytes, but the manifest says {shape} {np.dtype(dtype).name} "
                         f"({expected} bytes): the index was changed after it was written")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape) if expected else np.zeros(shape, dtype=dtype)


class MultiVectorIndex:
    """An index written by write_index, memory-mapped: tokens [total_tokens, dim] float16, offsets [N + 1]."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        m = self.manifest
        self.tokens = _mapped(self.path / TOKENS, STORED_DTYPE, (m["tokens"], m["dim"]))
        self.offsets = _mapped(self.path / OFFSETS, np.int64, (m["documents"] + 1,))

    def __len__(self) -> int:
        return int(self.manifest["documents"])

    @property
    def model_sha256(self) -> str:
        return self.manifest["model_sha256"]

    def check_model(self, encoder: Any) -> None:
        """Refuse to score queries of encoder against documents another model encoded."""
        digest = model_sha256(encoder.model_path)
        if digest != self.model_sha256:
            raise IndexFolderError(f"the index {self.path} was built by the model {self.manifest['model']} (SHA-256 "
                             f"{self.model_sha256}), but the queries come from {encoder.model_path} (SHA-256 {digest}); "
                             "rebuild the index with this model or search it with that one")

    def chunks(self, max_tokens: int) -> Iterator[tuple[int, int]]:
        """Consecutive document ranges [a, b) of at most max_tokens tokens (one longer document alone)."""
        a, n = 0, len(self)
        while a < n:
            b = int(np.searchsorted(self.offsets, self.offsets[a] + max_tokens, side="right")) - 1
            b = min(max(b, a + 1), n)
            yield a, b
            a = b

    def search(self, queries: Any, k: int = 10, *, query_mask: Any = None, score: str = "maxsim",
               chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
        """The best min(k, documents with tokens) documents per query by MaxSim -> (scores [Q, k] float32, ids [Q, k]
        int64), best first, ties to the lower id: exact over the stored float16 vectors, computed in float32.
        queries: a list of [n_i, dim] tensors (encode_query's output) or padded [Q, L, dim] with query_mask."""
        positive_int(chunk_tokens, "chunk_tokens")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        side = token_side(queries, query_mask, "query_mask")
        device = side.device or torch.device("cpu")
        q, mask = padded_queries(side, int(self.manifest["dim"]), torch.float32, device)
        best_scores = torch.empty(len(q), 0, device=device)
        best_ids = torch.empty(len(q), 0, dtype=torch.long, device=device)
        for a, b in self.chunks(chunk_tokens):
            scores, ids = self._chunk_topk(q, mask, a, b, k, score)
            best_scores, best_ids = merge_topk(best_scores, best_ids, scores, ids, k)
        return best_scores, best_ids

    def _chunk_topk(self, q: torch.Tensor, mask: torch.Tensor, a: int, b: int, k: int,
                    score: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Top k of documents [a, b) (those with tokens), their ids in the whole index."""
        offsets = torch.from_numpy(np.array(self.offsets[a : b + 1]))
        lengths = offsets.diff()
        kept = lengths.nonzero().view(-1)
        packed = torch.zeros(len(kept) + 1, dtype=torch.long)
        torch.cumsum(lengths[kept], 0, out=packed[1:])
        # One copy, straight from the mapped pages to float32.
        docs = torch.from_numpy(self.tokens[int(offsets[0]) : int(offsets[-1])].astype(np.float32))
        scores, ids = _ops.maxsim_topk(q, docs.to(q.device), packed.to(q.device), k, query_mask=mask, score=score)
        return scores, (kept.to(q.device) + a)[ids]


def merge_topk(scores_a: torch.Tensor, ids_a: torch.Tensor, scores_b: torch.Tensor, ids_b: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best k of two [Q, *] top lists per row, best first with ties to the lower id."""
    scores, ids = torch.cat([scores_a, scores_b], 1), torch.cat([ids_a, ids_b], 1)
    by_id = ids.argsort(dim=1, stable=True)
    scores, ids = scores.gather(1, by_id), ids.gather(1, by_id)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), ids.gather(1, order)


def open_index(path: str | os.PathLike, encoder: Any = None) -> MultiVectorIndex:
    """The index at path, checked to come from encoder's model when one is given."""
    index = MultiVectorIndex(path)
    if encoder is not None:
        index.check_model(encoder)
    return index
