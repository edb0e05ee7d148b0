"""What every CLI test file does: run `sentfuse` in-process, and write a text file of lines."""

from __future__ import annotations

from sentfuse.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `sentfuse *argv`; a traceback on stderr fails the test."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
