"""The encode pipeline's stages: parallel tokenization, shape planning, staging buffers, the graph runner.

The CUDA-only parts (page-locked buffers, copy stream, graph capture) are exercised on CPU through the
same bookkeeping: slots on the CPU device, and a stand-in capture that records what it was asked to do.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from sentfuse import Encoder
from sentfuse.encode import run as run_module
from sentfuse.encode.plan import BatchPlanner, ShapePolicy, bucket_width
from sentfuse.encode.pipeline import EncodeRequest, PackedTokens, Pipeline
from sentfuse.encode.run import GraphRunner, RunOptions
from sentfuse.encode.stage import Staging
from sentfuse.encode.tokenize import ChunkTokenizer, TokenChunk, TokenStore, tokenize_chunks

LONG = "a very long text that runs on " * 400


def gpu_policy(**kwargs) -> ShapePolicy:
    return ShapePolicy(**({"batch_size": 2048, "max_batch_tokens": 65536, "max_length": 512, "fixed_shapes": True}
                          | kwargs))


def plan_all(policy: ShapePolicy, lengths: np.ndarray, chunk: int = 1024) -> list:
    planner = BatchPlanner(policy)
    batches = []
    for start in range(0, len(lengths), chunk):
        batches += list(planner.add(start, lengths[start : start + chunk]))
    return batches + list(planner.finish())


# --- tokenize ------------------------------------------------------------------------------------


def test_chunk_tokenizer_matches_the_tokenizer(tiny_model, sentences):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = sentences + [LONG, "  ", "Ünïcödé ✓ 😀"]
    want = tokenizer(texts, padding=False, truncation="longest_first", max_length=24)
    chunk = ChunkTokenizer(tokenizer, 24)(texts, start=5)
    assert chunk.start == 5 and len(chunk) == len(texts)
    got = [chunk.ids[a:b].tolist() for a, b in zip(chunk.offsets[:-1], chunk.offsets[1:])]
    assert got == want["input_ids"]
    if chunk.type_ids is not None:
        assert chunk.type_ids.tolist() == sum(want["token_type_ids"], [])


def test_chunk_tokenizer_leaves_the_callers_tokenizer_alone(tiny_model_root):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_root / "bert-mean-normalize")
    before = tokenizer.backend_tokenizer.truncation
    ChunkTokenizer(tokenizer, 7)([LONG])
    assert tokenizer.backend_tokenizer.truncation == before


def _char_chunk(texts: list[str], start: int) -> TokenChunk:
    ids = [[ord(c) for c in t] for t in texts]
    offsets = np.concatenate([[0], np.cumsum([len(i) for i in ids])]).astype(np.int64)
    return TokenChunk(start, np.array(sum(ids, []), dtype=np.int64), offsets, None)


@pytest.mark.parametrize("threads", [1, 3])
def test_tokenize_chunks_keep_input_order(threads):
    texts = [chr(97 + i % 26) * (i % 5) for i in range(101)]
    chunks = list(tokenize_chunks(texts, _char_chunk, threads, chunk_texts=7))
    assert [c.start for c in chunks] == list(range(0, 101, 7))
    assert sum(len(c) for c in chunks) == 101


def test_tokenize_chunks_run_on_several_threads():
    seen, barrier = set(), threading.Barrier(2, timeout=10)

    def tokenize(texts, start):
        seen.add(threading.get_ident())
        barrier.wait()  # both chunks in flight at once, or this times out
        return _char_chunk(texts, start)

    list(tokenize_chunks(["ab", "cd"], tokenize, 2, chunk_texts=1))
    assert len(seen) == 2


@pytest.mark.parametrize("left", [False, True])
def test_token_store_gathers_across_chunks(left):
    store = TokenStore(pad_id=0, pad_type_id=0, left_padding=left)
    store.add(_char_chunk(["abc", "d"], 0))
    store.add(_char_chunk(["", "ef"], 2))
    ids, mask = np.empty((4, 3), np.int64), np.empty((4, 3), np.int64)
    store.gather(np.array([3, 0, 1]), 3, ids, mask, None)
    a, b, c, d, e, f = map(ord, "abcdef")
    if left:
        assert ids[:3].tolist() == [[0, e, f], [a, b, c], [0, 0, d]]
        assert mask[:3].tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 1]]
    else:
        assert ids[:3].tolist() == [[e, f, 0], [a, b, c], [d, 0, 0]]
        assert mask[:3].tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert ids[3].tolist() == [0, 0, 0] and mask[3].tolist() == [1, 0, 0]  # a padding row, one token unmasked
    assert list(store._chunks) == [2]  # the first chunk is done and dropped
    store.gather(np.array([2]), 1, ids[:1, :1], mask[:1, :1], None)
    assert not store._chunks


# --- plan ----------------------------------------------------------------------------------------


def test_bucket_widths():
    assert [bucket_width(n, 512) for n in (1, 14, 16, 17, 128, 129, 160, 161, 256, 257, 500)] == [
        16, 16, 16, 32, 128, 160, 160, 192, 256, 320, 512]
    assert bucket_width(129, 130) == 130  # never past the tokenizer's limit
    assert len({bucket_width(n, 512) for n in range(1, 513)}) == 16


@pytest.mark.parametrize("n", [1, 37, 5000, 200_000])
@pytest.mark.parametrize("max_length, mean", [(512, 14), (512, 115), (256, 40), (128, 30)])
def test_fixed_shapes_are_few_whatever_the_corpus(n, max_length, mean):
    rng = np.random.default_rng(n + max_length)
    lengths = np.clip(rng.gamma(2.0, mean / 2, size=n).astype(np.int64) + 2, 2, max_length)
    policy = gpu_policy(max_length=max_length)
    batches = plan_all(policy, lengths)
    shapes = {b.shape for b in batches}
    assert len(shapes) <= 32, sorted(shapes)
    assert sorted(np.concatenate([b.positions for b in batches]).tolist()) == list(range(n))
    for b in batches:
        rows, width = b.shape
        assert rows & (rows - 1) == 0 and len(b.positions) <= rows <= policy.batch_size
        assert width == bucket_width(width, max_length) and b.lengths.max() <= width
        assert rows * width <= policy.max_batch_tokens or rows == 1
        assert (lengths[b.positions] == b.lengths).all()


def test_first_batch_leaves_after_the_first_chunk():
    lengths = np.random.default_rng(0).integers(5, 60, size=3000)
    planner = BatchPlanner(gpu_policy())
    assert list(planner.add(0, lengths[:500]))  # no bucket is full, yet the model gets work


def test_exact_shapes_pad_nothing():
    lengths = np.random.default_rng(1).integers(0, 300, size=4000)
    policy = ShapePolicy(batch_size=256, max_batch_tokens=2048, max_length=512, fixed_shapes=False)
    batches = plan_all(policy, lengths, chunk=333)
    assert sorted(np.concatenate([b.positions for b in batches]).tolist()) == list(range(4000))
    for b in batches:
        assert b.rows == len(b.positions) <= 256
        assert b.width == max(int(b.lengths.max()), 1)
        assert b.rows * b.width <= 2048 or b.rows == 1


# --- stage ---------------------------------------------------------------------------------------


def test_packed_tokens_put_rows_back_in_input_order():
    # Batches ran texts 2, 0, 3, 1 (text 0 kept no token): rows 0-1 are text 2's, 2-4 text 3's, 5 text 1's.
    rows = torch.arange(6.0).unsqueeze(1).repeat(1, 2)
    packed = PackedTokens(rows, torch.tensor([2, 0, 3, 1]), torch.tensor([2, 0, 3, 1]))
    assert [t[:, 0].tolist() for t in packed.per_text()] == [[], [5.0], [0.0, 1.0], [2.0, 3.0, 4.0]]
    tokens, offsets = packed.packed()
    assert tokens[:, 0].tolist() == [5.0, 0.0, 1.0, 2.0, 3.0, 4.0] and offsets.tolist() == [0, 0, 1, 3, 6]


def test_staging_reuses_its_slots():
    store = TokenStore(pad_id=0, pad_type_id=0, left_padding=False)
    texts = ["abcdef"[: i % 6] for i in range(200)]
    store.add(_char_chunk(texts, 0))
    staging = Staging(torch.device("cpu"), slots=2, capacity_tokens=64, capacity_rows=8, typed=False)
    planner = BatchPlanner(ShapePolicy(batch_size=8, max_batch_tokens=64, max_length=16, fixed_shapes=True))
    stop, seen = threading.Event(), {}
    for plan in [*planner.add(0, np.array([len(t) for t in texts])), *planner.finish()]:
        staged = staging.fill(staging.acquire(stop), plan, store)
        for pos, ids, mask in zip(staged.positions.tolist(), staged.features["input_ids"],
                                  staged.features["attention_mask"]):
            seen[pos] = "".join(chr(int(c)) for c, m in zip(ids, mask) if m)
        staging.release(staged)
    assert seen == dict(enumerate(texts))
    assert staging.allocations == 2  # allocated once, then reused


def test_staging_grows_a_slot_for_an_oversized_batch():
    store = TokenStore(pad_id=0, pad_type_id=0, left_padding=False)
    store.add(_char_chunk(["x" * 40], 0))
    staging = Staging(torch.device("cpu"), slots=1, capacity_tokens=16, capacity_rows=4, typed=True)
    plan = next(iter(BatchPlanner(ShapePolicy(4, 16, 64, True)).add(0, np.array([40]))))
    staged = staging.fill(staging.acquire(threading.Event()), plan, store)
    assert staged.features["input_ids"].shape == (1, 48) and set(staged.features) == {
        "input_ids", "attention_mask", "token_type_ids"}
    assert staging.allocations == 2


def test_abandoned_encode_gives_its_slots_back(tiny_model_root, monkeypatch):
    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    texts = [f"text number {i}" for i in range(300)]
    want = encoder.encode(texts, batch_size=4)
    calls = []

    def failing(features):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("model failed")
        return encoder._model(**features).last_hidden_state

    monkeypatch.setattr(encoder, "_forward", failing)
    with pytest.raises(RuntimeError, match="model failed"):
        encoder.encode(texts, batch_size=4)
    monkeypatch.undo()
    staging = encoder._pipeline.staging
    assert staging._free.qsize() == len(staging.slots)
    np.testing.assert_allclose(encoder.encode(texts, batch_size=4), want, atol=1e-6)


# --- run -----------------------------------------------------------------------------------------


def counting_capture(calls: list):
    """Stands in for CUDA graph capture on CPU: the 'graph' re-runs forward on its static inputs."""

    def capture(forward, device, pool):
        calls.append(1)
        out = forward()
        return (lambda: out.copy_(forward())), out

    return capture


def _features(rows, width, seed):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 50, (rows, width), generator=g),
            "attention_mask": torch.ones(rows, width, dtype=torch.int64)}


def test_graph_runner_captures_each_shape_once_and_replays():
    def forward(f, skip):
        return f["input_ids"].float().cumsum(1)[:, -1:] + skip

    calls = []
    runner = GraphRunner(forward, RunOptions(), torch.device("cpu"), capture=counting_capture(calls))
    for seed, (rows, width, skip) in enumerate([(4, 16, 0), (4, 16, 0), (8, 16, 0), (4, 16, 2), (4, 16, 0)]):
        f = _features(rows, width, seed)
        torch.testing.assert_close(runner(f, skip), forward(f, skip))  # the replay sees this batch's inputs
    names = ("attention_mask", "input_ids")
    assert set(runner.graphs) == {(names, 4, 16, 0), (names, 8, 16, 0), (names, 4, 16, 2)}
    assert len(calls) == 3


def test_graph_runner_falls_back_to_eager_when_capture_fails(caplog):
    def capture(forward, device, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    forward = lambda f, skip: f["input_ids"].float()  # noqa: E731
    runner = GraphRunner(forward, RunOptions(), torch.device("cpu"), capture=capture)
    f = _features(2, 16, 0)
    torch.testing.assert_close(runner(f, 0), f["input_ids"].float())
    torch.testing.assert_close(runner(f, 0), f["input_ids"].float())
    assert list(runner.graphs.values()) == [None]
    assert caplog.text.count("capture failed") == 1


def test_graph_runner_caps_its_graphs(monkeypatch):
    monkeypatch.setattr(run_module, "MAX_GRAPHS", 2)
    calls = []
    runner = GraphRunner(lambda f, s: f["input_ids"].float(), RunOptions(), torch.device("cpu"),
                         capture=counting_capture(calls))
    for rows in (1, 2, 4, 8):
        f = _features(rows, 16, rows)
        torch.testing.assert_close(runner(f, 0), f["input_ids"].float())
    assert len(calls) == 2 and len(runner.graphs) == 2


def test_run_options_from_env(monkeypatch):
    monkeypatch.setenv("SENTFUSE_CUDA_GRAPHS", "0")
    monkeypatch.setenv("SENTFUSE_SDPA_BACKEND", "efficient")
    assert RunOptions.from_env() == RunOptions(cuda_graphs=False, sdpa_backend="efficient")
    with pytest.raises(ValueError, match="sdpa_backend must be one of"):
        RunOptions(sdpa_backend="fastest")
    monkeypatch.setenv("SENTFUSE_TOKENIZE_THREADS", "3")
    assert RunOptions.from_env().tokenize_threads == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("SENTFUSE_TOKENIZE_THREADS", bad)
        with pytest.raises(ValueError, match="SENTFUSE_TOKENIZE_THREADS must be a positive integer"):
            RunOptions.from_env()


def test_tokenize_threads_leave_a_core_to_the_cuda_launcher():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert RunOptions().tokenize_threads_for(cpu, 16) == 16
    assert RunOptions().tokenize_threads_for(cuda, 16) == 15
    assert RunOptions().tokenize_threads_for(cuda, 2) == 2
    assert RunOptions(tokenize_threads=4).tokenize_threads_for(cuda, 16) == 4
    with pytest.raises(ValueError, match="tokenize_threads"):
        RunOptions(tokenize_threads=0)


# --- the whole pipeline with GPU-style shapes and graphs, on CPU ----------------------------------


def test_fixed_shapes_and_graphs_give_the_same_embeddings(tiny_model_root):
    encoder = Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    texts = [("word " * (i % 23)).strip() + str(i) for i in range(150)] + [LONG]
    want = encoder.encode(texts, prompt_name="query")
    encoder.run_options = RunOptions(fixed_shapes=True)
    pipeline = encoder._encode_pipeline()
    captured = []
    pipeline.runner = GraphRunner(pipeline._forward, pipeline.options, pipeline.device,
                                  capture=counting_capture(captured))
    for _ in range(2):  # the second call replays the first call's graphs
        got = encoder.encode(texts, prompt_name="query", batch_size=16, max_batch_tokens=256)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    assert len(captured) == len(pipeline.runner.graphs) <= 32


class HostHead:
    """A head that reads device results on the host (as SPLADE's splade_pool does): kept out of CUDA graphs."""

    in_graph = False
    dim = 1

    def __call__(self, ids, mask, skip_tokens):
        return (ids * mask).sum(1, keepdim=True).float()  # [rows, 1]: the sum of each row's valid token ids

    def finish(self, x, dim, normalize):
        return x


def test_a_head_outside_the_graph_runs_after_the_replay(tiny_model_root):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_root / "hf-bert")
    pipeline = Pipeline(tokenizer, lambda f: f["input_ids"].float(), HostHead(), torch.device("cpu"), torch.float32,
                        RunOptions(fixed_shapes=True))
    captured = []

    def capture(forward, device, pool):
        out = forward()
        captured.append(tuple(out.shape))
        return (lambda: out.copy_(forward())), out

    pipeline.runner = GraphRunner(pipeline._forward, pipeline.options, pipeline.device, capture=capture)
    texts = [("word " * (i % 7)).strip() + str(i) for i in range(40)]
    got = {}
    request = EncodeRequest(texts=texts, skip_tokens=0, batch_size=8, max_batch_tokens=None, token_embeddings=False,
                            dim=1, normalize=False, out_dtype=torch.float32, progress=False)
    pipeline.collect(request, lambda positions, x: got.update(zip(positions.tolist(), x[:, 0].tolist())))
    assert [got[i] for i in range(len(texts))] == [float(sum(tokenizer(t)["input_ids"])) for t in texts]
    assert captured and all(len(shape) == 2 for shape in captured)  # graphs hold the backbone's [rows, width] only
