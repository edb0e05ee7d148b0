"""Atomic writes (sentfuse._io) and what the CLI does when a write fails: the old file always survives."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from sentfuse import _io


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("array", [np.random.rand(5, 3).astype(np.float32), np.zeros((0, 4), np.float16),
                                   np.arange(6, dtype=np.uint8).reshape(2, 3), np.random.rand(4, 6)[:, ::2],
                                   np.float64(3.5)])
def test_save_npy_round_trip(tmp_path, array):
    path = tmp_path / "a.npy"
    _io.save_npy(path, array)
    loaded = np.load(path)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape and np.array_equal(loaded, array)
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.npy"
    _io.save_npy(path, np.ones((4, 4), np.float32))
    before = path.read_bytes()
    os.chmod(path, 0o640)
    with pytest.raises(RuntimeError), _io.atomic_write(path) as f:
        f.write(b"half a file")
        raise RuntimeError("the work failed midway")
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    _io.write_text(path, "new")
    assert path.read_text() == "new" and oct(path.stat().st_mode & 0o777) == oct(0o640)  # the mode is kept


def test_write_over_the_file_size_limit_keeps_the_old_file(tmp_path):
    """A real short write (RLIMIT_FSIZE, as `ulimit -f`) raises EFBIG with the old file intact."""
    path = tmp_path / "a.npy"
    _io.save_npy(path, np.ones(10, np.float32))
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError, match="File too large"):
            _io.save_npy(path, np.ones(10_000, np.float32))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_atomic_memmap_appears_complete_or_not_at_all(tmp_path):
    path = tmp_path / "m.npy"
    with _io.atomic_memmap(path, (3, 4), np.float32) as m:
        m[:] = 2.0
        assert not path.exists()
    assert np.load(path).sum() == 24.0 and m.sum() == 24.0  # the caller's mapping stays readable
    with pytest.raises(KeyError), _io.atomic_memmap(path, (3, 4)) as m:
        m[:] = 5.0
        raise KeyError("failed")
    assert np.load(path).sum() == 24.0 and _leftovers(tmp_path) == []


def test_atomic_write_through_a_symlink_replaces_its_target(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    _io.write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_cli_encode_under_ulimit_keeps_the_good_file(tmp_path, tiny_model_root):
    """`ulimit -f` then `sentfuse encode q.txt -o good.npy`: an error naming the file, good.npy unchanged."""
    src = tmp_path / "q.txt"
    src.write_text("".join(f"question number {i} about something\n" for i in range(400)))
    good = tmp_path / "good.npy"
    good.write_bytes(b"precious")
    model = tiny_model_root / "bert-mean-normalize"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    argv = [sys.executable, "-m", "sentfuse.cli", "encode", src, "-o", good, "--model", model, "--no-progress"]
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, preexec_fn=limit, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert result.returncode == 1, result.stderr
    assert f"cannot write -o {good}: File too large (the previous file is unchanged)" in result.stderr
    assert "Traceback" not in result.stderr
    assert good.read_bytes() == b"precious" and _leftovers(tmp_path) == []
