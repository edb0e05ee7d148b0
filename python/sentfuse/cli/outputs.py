"""Output files: checked before any work, written atomically, and read back with errors naming the file.

An existing output file is replaced (the summary says so). The replacement is atomic: until the new
file is complete, the old one stays as it was, so a failed run (full disk, file size limit, Ctrl-C)
never leaves a truncated file behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import _io
from .errors import CommandError
from .records import record_path


def check_output(value: str, option: str, writable: bool = True) -> Path:
    """The .npy file that option names, checked (writable: to be writable) before the work that fills it."""
    path = Path(value)
    if path.is_dir():
        raise CommandError(f"{option} {value} is a folder; name a file in it, e.g. {path / 'embeddings.npy'}")
    if path.suffix != ".npy":
        raise CommandError(f"{option} {value} must end in .npy")
    if not writable:
        return path
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CommandError(f"{option} {value}: {folder} is a file, so no folder can be made there")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {value}: cannot write in folder {folder} (permission denied)")
    return path


def write_embeddings(path: Path, embeddings: np.ndarray, record: dict[str, Any], option: str) -> bool:
    """Save embeddings to path and the record beside it; True when an existing file was replaced."""
    replaced = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _io.atomic_write(path) as f:
            _io.write_npy(f, np.asarray(embeddings))
            # The old record describes the file being replaced: drop it before the new file lands.
            record_path(path).unlink(missing_ok=True)
        _io.write_text(record_path(path), json.dumps(record, indent=2) + "\n")
    except OSError as e:
        kept = "the previous file is unchanged" if replaced else "nothing was written"
        raise CommandError(f"cannot write {option} {path}: {e.strerror or e} ({kept})") from None
    return replaced


def _header(f: Any, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of the .npy file open in f."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise CommandError(f"{name} is a .npy file of version {version}, which sentfuse does not read")
    except ValueError as e:
        raise CommandError(f"{name} is not a .npy array file ({e})") from None
    return shape, dtype, f.tell()


def load_embeddings(value: str, option: str) -> np.ndarray:
    """The [rows, dim] float array in the .npy file that option names, memory-mapped, after checking the file."""
    name = f"{option} {value}"
    try:
        size = os.path.getsize(value)
        if size == 0:
            raise CommandError(f"{name} is empty (0 bytes), not a .npy array file")
        with open(value, "rb") as f:
            shape, dtype, offset = _header(f, name)
    except OSError as e:
        raise CommandError(f"cannot read {name}: {e.strerror or e}") from None
    if dtype.hasobject:
        raise CommandError(f"{name} holds Python objects, not embeddings")
    if dtype.kind != "f" or len(shape) != 2:
        raise CommandError(f"{name} holds {dtype} values of shape {shape}; search needs float embeddings "
                           "[rows, dim] (sentfuse encode without --precision)")
    if shape[0] == 0:
        raise CommandError(f"{name} holds no embeddings (shape {shape})")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if size < expected:
        raise CommandError(f"{name} is truncated: {size} bytes, but its {shape} {dtype} array needs {expected}")
    return np.load(value, mmap_mode="r", allow_pickle=False)
