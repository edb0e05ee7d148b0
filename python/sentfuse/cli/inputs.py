"""Reading the texts a command works on: plain text (one per line) or JSON lines, from a file or stdin.

Lines end at "\n" or "\r\n"; a lone "\r" is part of the line's text, so that item i is always line
i + 1 whatever the line contains. A leading UTF-8 byte-order mark is dropped. Invalid UTF-8 is
reported with its byte offset in the file and its line number.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .._checks import json_record
from .errors import CommandError

BYTE_ORDER_MARK = b"\xef\xbb\xbf"
# Control characters other than tab, shown escaped in tables: a raw "\r" would overwrite the line on a terminal.
CONTROL_CHARACTERS = {c: f"\\x{c:02x}" for c in [*range(9), *range(10, 32), 127]} | {13: "\\r", 10: "\\n"}
FORMATS = ("auto", "text", "jsonl")


@dataclass
class Items:
    """The texts of one input, item i being line i + 1 (text) or the i-th record (JSON lines)."""

    name: str  # the file name, or "stdin", for messages
    texts: list[str]

    def non_blank(self) -> list[int]:
        """The numbers of the items holding more than white space (mine, cluster and search skip the rest)."""
        ids = [i for i, text in enumerate(self.texts) if text.strip()]
        if not ids:
            raise CommandError(f"{self.name} has only blank lines: nothing to compare")
        return ids


def _read_bytes(source: str, option: str) -> tuple[str, bytes]:
    if source == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        return "stdin", stdin.read() if stdin is not None else sys.stdin.read().encode("utf-8")
    try:
        with open(source, "rb") as f:
            return source, f.read()
    except FileNotFoundError:
        raise CommandError(f"{option} {source} does not exist") from None
    except IsADirectoryError:
        raise CommandError(f"{option} {source} is a folder, expected a file") from None
    except OSError as e:
        raise CommandError(f"cannot read {option} {source}: {e.strerror or e}") from None


def _decode(data: bytes, name: str) -> str:
    start = len(BYTE_ORDER_MARK) if data.startswith(BYTE_ORDER_MARK) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        line = data.count(b"\n", 0, offset) + 1
        raise CommandError(
            f"{name} is not UTF-8 text: {e.reason} at byte {offset} (line {line}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None


def shown(text: str) -> str:
    """text for one line of a table, control characters escaped (JSON output keeps the text as it is)."""
    return text.translate(CONTROL_CHARACTERS)


def split_lines(text: str) -> list[str]:
    """The lines of text, without their "\n" or "\r\n"; a final line break does not start another line."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _jsonl_texts(lines: list[str], name: str, field: str) -> list[str]:
    texts = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json_record(line, f"{name} line {lineno}", [field])
        except ValueError as e:
            raise CommandError(str(e)) from None
        if not isinstance(record[field], str):
            raise CommandError(f"{name} line {lineno}: field {field!r} is {type(record[field]).__name__}, expected str")
        texts.append(record[field])
    return texts


def read_items(source: str, fmt: str = "auto", field: str | None = None, option: str = "input file") -> Items:
    """The texts in source (a file name or '-' for stdin); fmt 'auto' reads .jsonl files as JSON lines.

    An input without a single item is an error naming it: an empty file is almost always a mistake.
    """
    if fmt == "auto":
        fmt = "jsonl" if source.endswith(".jsonl") else "text"
    if field is not None and fmt != "jsonl":
        raise CommandError("--field applies to JSON lines input only (a .jsonl file, or --format jsonl)")
    name, data = _read_bytes(source, option)
    lines = split_lines(_decode(data, name))
    texts = lines if fmt == "text" else _jsonl_texts(lines, name, field or "text")
    if not texts:
        what = "no lines" if fmt == "text" else "no JSON records"
        raise CommandError(f"{name} is empty: {what} to read" if not data else f"{name} has {what}")
    return Items(name, texts)
