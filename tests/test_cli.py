"""The sentfuse command line: encode from files, JSON lines and stdin; info; clean failures."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from sentfuse import Encoder
from cli_runner import run
from sentfuse.cli import main

TEXTS = ["The cat sat on the mat.", "", "A much longer line about the weather in the mountains today.", "ok"]


@pytest.fixture(scope="module")
def model(tiny_model_root):
    return tiny_model_root / "bert-mean-normalize"


@pytest.fixture(scope="module")
def expected(model) -> np.ndarray:
    return Encoder(model, device="cpu").encode(TEXTS)


def test_encode_text_file(tmp_path, capsys, model, expected):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "nested" / "dir" / "emb.npy"
    code, _, err = run(capsys, "encode", src, "-o", out, "--model", model, "--batch-size", 3, "--no-progress")
    assert code == 0
    emb = np.load(out)
    assert emb.shape == (len(TEXTS), expected.shape[1])  # the blank line is an item, the final newline is not
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    summary = err.strip().splitlines()[-1]
    assert f"encoded {len(TEXTS)} texts, dim {expected.shape[1]}" in summary
    assert "sentences/s" in summary and str(out) in summary


def test_encode_crlf_lines(tmp_path, capsys, model, expected):
    src = tmp_path / "in.txt"
    src.write_bytes("\r\n".join(TEXTS).encode())
    out = tmp_path / "emb.npy"
    assert run(capsys, "encode", src, "-o", out, "--model", model, "--no-progress")[0] == 0
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_encode_jsonl_field(tmp_path, capsys, model, expected):
    src = tmp_path / "in.jsonl"
    records = [json.dumps({"id": i, "body": t}) for i, t in enumerate(TEXTS)]
    src.write_text("\n".join(records[:2] + [""] + records[2:]) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    assert run(capsys, "encode", src, "-o", out, "--model", model, "--field", "body", "--no-progress")[0] == 0
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_encode_stdin_with_progress_bar(tmp_path, capsys, monkeypatch, model, expected):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n"))
    out = tmp_path / "emb.npy"
    code, _, err = run(capsys, "encode", "-", "-o", out, "--model", model, "--batch-size", 2)
    assert code == 0
    assert "Encoding" in err and "sentence/s" in err  # the tqdm bar counts sentences
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_encode_options(tmp_path, capsys, tiny_model_root):
    model = tiny_model_root / "bert-mean-noprompt-dense"  # not normalized by the model itself
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS), encoding="utf-8")
    out = tmp_path / "emb.npy"
    assert run(capsys, "encode", src, "-o", out, "--model", model, "--normalize", "--no-progress")[0] == 0
    np.testing.assert_allclose(np.linalg.norm(np.load(out), axis=1), 1.0, atol=1e-5)
    assert run(capsys, "encode", src, "-o", out, "--model", model, "--precision", "ubinary", "--no-progress")[0] == 0
    packed = np.load(out)
    assert packed.dtype == np.uint8 and packed.shape == (len(TEXTS), 3)  # 20 dims -> 3 bytes
    args = ("encode", src, "-o", out, "--model", model, "--prompt-name", "query", "--device", "cpu", "--no-progress")
    assert run(capsys, *args)[0] == 0
    expected = Encoder(model, device="cpu").encode(TEXTS, prompt_name="query")
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    import torch

    from sentfuse import __version__

    assert f"sentfuse {__version__}" in out
    assert "build: CPU" in out
    assert f"torch: {torch.__version__}" in out
    assert "devices:" in out and f"threads: {torch.get_num_threads()}" in out


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (None, (), "input file {tmp}/missing.txt does not exist"),
        ("text", ("--field", "body"), "--field applies to JSON lines input only"),
        ("jsonl-missing-field", ("--field", "body"), "line 2: no field 'body'"),
        ("jsonl-bad-json", (), "line 1: not valid JSON"),
        ("jsonl-not-str", (), "line 1: field 'text' is int, expected str"),
        ("jsonl-not-object", (), "line 1: expected a JSON object, got list"),
        ("text", ("--model", "{tmp}/no-model"), "model folder {tmp}/no-model does not exist"),
        ("one-line", ("--precision", "int8"), "needs at least 2 items"),
        ("latin1", (), "is not UTF-8 text"),
    ],
)
def test_encode_errors(tmp_path, capsys, model, setup, extra, message):
    files = {
        "text": ("in.txt", b"a\nb\n"),
        "one-line": ("in.txt", b"only\n"),
        "latin1": ("in.txt", "caf\u00e9\n".encode("latin-1")),
        "jsonl-missing-field": ("in.jsonl", b'{"body": "x"}\n{"text": "y"}\n'),
        "jsonl-bad-json": ("in.jsonl", b'{"text": \n'),
        "jsonl-not-str": ("in.jsonl", b'{"text": 3}\n'),
        "jsonl-not-object": ("in.jsonl", b'["text"]\n'),
    }
    src = tmp_path / "missing.txt"
    if setup is not None:
        name, content = files[setup]
        src = tmp_path / name
        src.write_bytes(content)
    extra = [a.format(tmp=tmp_path) for a in extra]
    if "--model" not in extra:
        extra += ["--model", str(model)]
    out = tmp_path / "out.npy"
    code, _, err = run(capsys, "encode", src, "-o", out, *extra)
    assert code == 1
    assert message.format(tmp=tmp_path) in err
    assert err.startswith("sentfuse encode: error:")
    assert not out.exists()


def test_encode_rejects_non_npy_output(tmp_path, capsys, model):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "out.txt", "--model", model)
    assert code == 1 and "must end in .npy" in err


@pytest.mark.parametrize("argv", [["encode", "in.txt"], ["encode", "x", "-o", "y.npy", "--batch-size", "0"],
                                  ["encode", "x", "-o", "y.npy", "--precision", "fp8"], ["frobnicate"], []])
def test_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: sentfuse" in capsys.readouterr().err


def test_encode_keeps_bare_carriage_returns_in_their_line(tmp_path, capsys, model):
    src = tmp_path / "in.txt"
    src.write_bytes(b"one\rstill line one\r\nline two\n\nline four")
    out = tmp_path / "emb.npy"
    assert run(capsys, "encode", src, "-o", out, "--model", model, "--no-progress")[0] == 0
    expected = Encoder(model, device="cpu").encode(["one\rstill line one", "line two", "", "line four"])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


@pytest.mark.parametrize("output, message", [
    ("{tmp}/in.txt/x.npy", "-o {tmp}/in.txt/x.npy: {tmp}/in.txt is a file, so no folder can be made there"),
    ("{tmp}/in.txt/deeper/x.npy", "{tmp}/in.txt is a file"),
    ("{tmp}", "-o {tmp} is a folder; name a file in it"),
    ("{tmp}/folder.npy", "-o {tmp}/folder.npy is a folder"),
    ("{tmp}/out.txt", "-o {tmp}/out.txt must end in .npy"),
])
def test_output_is_checked_before_the_model_loads(tmp_path, capsys, output, message):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    (tmp_path / "folder.npy").mkdir()
    # A model that does not exist: the output error must come first, before any work.
    code, _, err = run(capsys, "encode", src, "-o", output.format(tmp=tmp_path), "--model", tmp_path / "no-model")
    assert code == 1 and message.format(tmp=tmp_path) in err
    assert "Errno" not in err


def test_existing_output_is_replaced_and_said_so(tmp_path, capsys, model):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    out = tmp_path / "emb.npy"
    _, _, err = run(capsys, "encode", src, "-o", out, "--model", model, "--no-progress")
    assert "replaced" not in err and "record in emb.npy.json" in err
    record = json.loads((tmp_path / "emb.npy.json").read_text())
    assert record["items"] == 2 and record["source"] == str(src) and record["precision"] == "float32"
    src.write_text("a\nb\nc\n")
    code, _, err = run(capsys, "encode", src, "-o", out, "--model", model, "--no-progress")
    assert code == 0 and "(replaced the previous file)" in err and np.load(out).shape[0] == 3
    assert json.loads((tmp_path / "emb.npy.json").read_text())["items"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb.npy.json", "in.txt"]


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"])
def test_encode_empty_input_is_an_error_naming_the_file(tmp_path, capsys, model, content):
    src = tmp_path / "empty.txt"
    src.write_bytes(content)
    out = tmp_path / "emb.npy"
    code, _, err = run(capsys, "encode", src, "-o", out, "--model", model)
    assert code == 1 and f"sentfuse encode: error: {src} " in err and not out.exists()
    assert "Encoding" not in err  # no empty progress bar


@pytest.mark.parametrize("name, limit", [("bert-mean-normalize", 128), ("roberta-cls-dense", 128)])
def test_max_seq_length_above_the_position_table(tmp_path, capsys, tiny_model_root, name, limit):
    """BERT: 128 positions; RoBERTa: 130 positions numbered after padding index 1, so 128 tokens too."""
    model = tiny_model_root / name
    src = tmp_path / "in.txt"
    src.write_text(" ".join(["the cat sat on the mat"] * 60) + "\nshort\n")  # far more than 128 tokens
    out = tmp_path / "emb.npy"
    code, _, err = run(capsys, "encode", src, "-o", out, "--model", model, "--max-seq-length", limit, "--no-progress")
    assert code == 0, err
    code, _, err = run(capsys, "encode", src, "-o", out, "--model", model, "--max-seq-length", limit + 1)
    assert code == 1 and f"--max-seq-length {limit + 1} is more than this model takes: {limit} tokens" in err


def test_unknown_prompt_name(tmp_path, capsys, model):
    src = tmp_path / "in.txt"
    src.write_text("a\n")
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "e.npy", "--model", model, "--prompt-name", "nope")
    assert code == 1 and "--prompt-name 'nope' is not one of this model's prompts: query, document" in err


@pytest.mark.parametrize("command", ["encode", "search", "mine", "cluster"])
def test_errors_name_only_options_the_command_has(tmp_path, capsys, model, command):
    import re

    from sentfuse.cli import build_parser

    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    argv = {"encode": [src, "-o", tmp_path / "e.npy"], "search": ["--corpus", src, "q"]}.get(command, [src])
    code, _, err = run(capsys, command, *argv, "--field", "body", "--model", model)
    assert code == 1 and "--field applies to JSON lines input only" in err
    parser = build_parser()
    subparser = parser._subparsers._group_actions[0].choices[command]
    options = {o for action in subparser._actions for o in action.option_strings}
    named = set(re.findall(r"--[a-z][a-z-]*", err))
    assert named and named <= options, named - options


# search: moved from test_search.py (the CLI's tests live here)

SEARCH_CORPUS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten is sleeping on a rug.",
                 "The weather in the mountains is cold.", "Interest rates rose again."]


def test_cli_search_table_json_and_cached_embeddings(tiny_model_root, tmp_path, capsys):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_text("\n".join(SEARCH_CORPUS) + "\n")
    cache = tmp_path / "emb" / "corpus.npy"
    model = str(tiny_model_root / "bert-mean-normalize")
    argv = ["search", "--corpus", str(corpus_file), "--model", model, "--embeddings", str(cache), "--no-progress"]
    assert main(argv + ["a cat on a mat", "-k", "2"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("query: a cat on a mat") and table.count("\n") == 3
    assert cache.exists() and np.load(cache).shape[0] == len(SEARCH_CORPUS)
    assert main(argv + ["--json", "a cat on a mat", "markets", "-k", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in results] == ["a cat on a mat", "markets"]
    assert all(len(r["hits"]) == 3 and r["hits"][0]["text"] == SEARCH_CORPUS[r["hits"][0]["corpus_id"]] for r in results)
    # A cache that does not match the corpus is an error, not silently wrong hits.
    corpus_file.write_text("\n".join(SEARCH_CORPUS[:3]) + "\n")
    assert main(argv + ["cats"]) == 1
    assert "was built from other texts" in capsys.readouterr().err


def test_one_text_is_singular(tmp_path, capsys, model):
    src = tmp_path / "one.txt"
    src.write_text("only line\n", encoding="utf-8")
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "one.npy", "--model", model, "--no-progress")
    assert code == 0 and "encoded 1 text, dim" in err


@pytest.mark.parametrize("extra, message", [
    (["--max-active-dims", "8"], "--max-active-dims applies to sparse vectors only: add --sparse"),
    (["--ray", "--sparse"], "--sparse does not apply with --ray"),
])
def test_options_that_cannot_apply_are_refused_before_the_work(tmp_path, capsys, monkeypatch, extra, message):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("sentfuse.cli.encode.load_encoder", no_model)
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    code, _, err = run(capsys, "encode", src, "-o", tmp_path / "out", *extra)
    assert code == 1 and message in err, err


def test_ray_without_a_cluster_names_no_foreign_flag():
    from sentfuse.distributed.cli import _connect

    class NoCluster:
        @staticmethod
        def init(address=None):
            raise ConnectionError("Could not find any running Ray instance. Please specify ... `--address` flag")

    with pytest.raises(ValueError) as info:
        _connect(NoCluster, "auto")
    message = str(info.value)
    assert "--ray auto: no Ray cluster found" in message and "ray start --head" in message
    assert "--address" not in message


def test_version_and_python_m(capsys):
    import subprocess
    import sys

    from sentfuse import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"sentfuse {__version__}\n"
    done = subprocess.run([sys.executable, "-m", "sentfuse", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"sentfuse {__version__}\n", done.stderr


@pytest.mark.parametrize("flags, expect, topk_path", [
    ({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "avx2 avx512f avx512_bf16 amx_tile amx_bf16; bf16 matrix units",
     "bf16 tiles + fp32 rescore"),
    ({"avx2", "fma"}, "avx2; no bf16 matrix units", "fp32 tiles"),
    (set(), "none of avx2", "fp32 tiles"),
])
def test_info_reports_the_cpu_features_that_pick_kernel_paths(capsys, monkeypatch, flags, expect, topk_path):
    from sentfuse import cpu_features

    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.delenv(cpu_features.TOPK_ENV, raising=False)
    code, out, _ = run(capsys, "info")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("cpu features: "))
    assert expect in line and line.endswith(f"cosine_topk CPU default: {topk_path}")


@pytest.mark.parametrize("text, message", [
    ('{"anchor": "a", "positive": "b"}\n\n{"anchor": "c", ', "line 3: not valid JSON"),
    ('{"anchor": "a", "positive": "b"}\n["c", "d"]\n', "line 2: expected a JSON object, got list"),
])
def test_train_command_names_the_bad_jsonl_line(tmp_path, text, message):
    from sentfuse.cli.errors import CommandError
    from sentfuse.cli.train import read_columns

    path = tmp_path / "pairs.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CommandError, match=message):
        read_columns(path)
