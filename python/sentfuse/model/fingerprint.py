"""The SHA-256 of a model folder: what the embeddings a model made are known by.

Every byte of every file the model may load is hashed (weights, configs, tokenizer), so any swap
of weights or settings changes the digest, whatever the folder is called or wherever it lives.
A folder's digest is computed again whenever a file's size, modification time or inode changes.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

# Files no sentfuse model reads: hidden files (.gitattributes, caches), model cards, and the
# folders of sentence-transformers' other backends.
SKIPPED_SUFFIXES = (".md",)
SKIPPED_FOLDERS = ("onnx", "openvino")
BLOCK_BYTES = 4 << 20


def _model_files(folder: Path) -> list[tuple[str, Path]]:
    files = []
    for path in folder.rglob("*"):
        name = path.relative_to(folder).as_posix()
        parts = name.split("/")
        if (any(part.startswith(".") for part in parts) or parts[0] in SKIPPED_FOLDERS
                or path.suffix in SKIPPED_SUFFIXES or not path.is_file()):
            continue
        files.append((name, path))
    return sorted(files)


@functools.lru_cache(maxsize=16)
def _digest(folder: Path, listing: tuple[tuple[str, int, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, _, _ in listing:
        digest.update(f"{name}\0{size}\0".encode())
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(BLOCK_BYTES), b""):
                digest.update(block)
    return digest.hexdigest()


def model_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 of every file of the model folder (names, sizes and contents; hidden files, READMEs and the
    onnx / openvino folders left out)."""
    root = Path(folder).resolve()
    listing = []
    for name, path in _model_files(root):
        stat = path.stat()
        listing.append((name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return _digest(root, tuple(listing))
