"""Reading CLI input files: line breaks, byte-order marks, UTF-8 errors, empty and blank inputs."""

from __future__ import annotations

import io

import pytest

from sentfuse.cli.errors import CommandError
from sentfuse.cli.inputs import read_items, shown, split_lines


@pytest.mark.parametrize("text, lines", [
    ("a\nb\n", ["a", "b"]),
    ("a\nb", ["a", "b"]),
    ("a\r\nb\r\n", ["a", "b"]),
    ("one\rstill one\r\ntwo\n", ["one\rstill one", "two"]),  # a lone \r is text, not a line break
    ("a\n\n\nb\n", ["a", "", "", "b"]),
    ("x\u2028y\x0bz\x1cw\x85v\n", ["x\u2028y\x0bz\x1cw\x85v"]),  # str.splitlines would split these 5 ways
    ("\n", [""]),
    ("", []),
])
def test_split_lines(text, lines):
    assert split_lines(text) == lines


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_row_i_is_line_i_with_carriage_returns(tmp_path):
    path = _write(tmp_path, "in.txt", b"first\rhalf\nsecond\r\n\nfourth")
    assert read_items(path).texts == ["first\rhalf", "second", "", "fourth"]


@pytest.mark.parametrize("name, data", [
    ("in.jsonl", b'\xef\xbb\xbf{"text": "hello"}\n{"text": "world"}\n'),
    ("in.txt", b"\xef\xbb\xbfhello\r\nworld\r\n"),
])
def test_byte_order_mark_is_dropped(tmp_path, name, data):
    assert read_items(_write(tmp_path, name, data)).texts == ["hello", "world"]


def test_invalid_utf8_gives_file_offset_and_line(tmp_path):
    data = b"hello world line\n" * 7000 + b"bad \xff byte\n"
    path = _write(tmp_path, "big.txt", data)
    with pytest.raises(CommandError, match=rf"{path} is not UTF-8 text: invalid start byte at byte 119004 \(line 7001\)"):
        read_items(path)
    assert data[119004] == 0xFF
    with pytest.raises(CommandError, match=r"at byte 6 \(line 2\)"):  # the offset counts the byte-order mark
        read_items(_write(tmp_path, "bom.txt", b"\xef\xbb\xbfa\nb\xc3(\n"))


@pytest.mark.parametrize("name, data, message", [
    ("empty.txt", b"", "empty.txt is empty: no lines to read"),
    ("empty.jsonl", b"\n\n", "empty.jsonl has no JSON records"),
    ("bom-only.txt", b"\xef\xbb\xbf", "bom-only.txt has no lines"),
])
def test_empty_input_names_the_file(tmp_path, name, data, message):
    with pytest.raises(CommandError, match=message):
        read_items(_write(tmp_path, name, data))


def test_blank_items(tmp_path):
    items = read_items(_write(tmp_path, "in.txt", b"a\n \n\t\nb\n"))
    assert items.texts == ["a", " ", "\t", "b"] and items.non_blank() == [0, 3]
    with pytest.raises(CommandError, match="only blank lines"):
        read_items(_write(tmp_path, "blank.txt", b"\n \n")).non_blank()


def test_stdin_bytes(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a\rb\r\nc\n"), encoding="utf-8"))
    assert read_items("-").texts == ["a\rb", "c"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8"))
    with pytest.raises(CommandError, match="stdin is empty"):
        read_items("-")


def test_shown_escapes_control_characters():
    assert shown("a\rb\x1b[2Jc\td\n") == "a\\rb\\x1b[2Jc\td\\n"
