"""Atomic file output: a file holds either its old content or the complete new one, never a partial write.

Each writer fills a temporary file in the target's folder (so the final rename stays on one file
system), flushes it to disk, then renames it over the target. On any failure (a full disk, a file
size limit, an exception, Ctrl-C) the temporary file is removed and the old file is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def _target(path: str | os.PathLike) -> Path:
    """The file to replace: writing through a symbolic link replaces the file it points to."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A new empty temporary file beside path; it replaces path when the block succeeds.

    The temporary file takes the mode of the file it replaces (or the umask's default for a new
    file). The caller must have closed (or flushed) everything it wrote to it by the end of the block.
    """
    target = _target(path)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never reuse someone else's file; mode 0o666 lets the umask decide, as open() would.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if target.exists():
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        yield temporary
        _fsync_path(temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself reaches the disk with the folder's metadata.
    with contextlib.suppress(OSError):
        _fsync_path(target.parent, directory=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """open(path, mode) for writing, atomically: path changes only when the block succeeds."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write writes a whole file; mode must start with 'w', got {mode!r}")
    with atomic_path(path) as temporary, open(temporary, mode, encoding=encoding) as f:
        yield f


def write_npy(f: IO[bytes], array: np.ndarray) -> None:
    """array in .npy format to the binary file f, through f.write (so a failed write raises its OSError)."""
    array = np.asarray(array, order="C")
    if array.dtype.hasobject:
        raise ValueError("write_npy writes numeric arrays only, not Python objects")
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
    f.write(memoryview(array.reshape(-1)).cast("B"))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """np.save(path, array) atomically (numeric arrays only)."""
    with atomic_write(path) as f:
        write_npy(f, array)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Path.write_text(text) in UTF-8, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_memmap(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any = np.float32) -> Iterator[np.memmap]:
    """A writable .npy memmap (np.lib.format.open_memmap) that replaces path when the block succeeds.

    For outputs larger than memory, e.g. similarity_matrix(x, out=m): fill m inside the block; the
    finished matrix appears at path only after the block has written all of it.
    """
    with atomic_path(path) as temporary:
        # The mapping stays valid after the rename (POSIX), so the caller may keep reading it.
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()
