"""The packed training forward equals the backbone's own padded forward (hidden states and gradients, dropout
off), serves only backbones it matches, and its dropout keeps F.dropout's distribution and seeding."""

from __future__ import annotations

import pytest
import torch

TEXTS = ["a", "a man is playing a guitar on the old stage tonight", "cats", "what is the capital of france?",
         "the dog runs in the park", "stock markets fell sharply on monday after the news"]
# Many short texts and one long one: the long text gets an attention group of its own.
SHORT_AND_LONG = ["cats", "a dog", "the park"] * 12 + [" ".join(["the dog runs in the park"] * 12)]


def _padded(backbone, rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return backbone(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state[mask.bool()]


def _grads(backbone, hidden):
    backbone.zero_grad(set_to_none=True)
    weights = torch.linspace(-1, 1, hidden.numel()).reshape(hidden.shape)
    (hidden * weights).sum().backward()
    return {name: p.grad.clone() for name, p in backbone.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name,texts,groups,row_multiple", [("bert-mean-normalize", TEXTS, 1, 1),
                                                            ("bert-legacy-cls-max-mean-dense", TEXTS, 1, 1),
                                                            ("bert-mean-normalize", SHORT_AND_LONG, 2, 1),
                                                            ("bert-mean-normalize", TEXTS, 1, 64)])
def test_packed_forward_equals_the_padded_forward(tiny_model_root, name, texts, groups, row_multiple):
    from sentfuse import Encoder
    from sentfuse.train import tokenize_column, training_mode
    from sentfuse.train.packed_backbone import pack_rows, packed_forward, takes_packed

    model = Encoder(str(tiny_model_root / name), device="cpu")
    rows = tokenize_column(model, texts).input_ids
    batch = pack_rows(rows, torch.device("cpu"), row_multiple)
    assert len(batch.groups) == groups and len(batch.input_ids) % row_multiple == 0
    with training_mode(model) as modules:
        modules.eval()
        backbone = model._model
        assert takes_packed(backbone)
        padded = _padded(backbone, rows)
        padded_grads = _grads(backbone, padded)
        packed = packed_forward(backbone, batch)
        packed_grads = _grads(backbone, packed)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    assert packed_grads.keys() == padded_grads.keys() - {"pooler.dense.weight", "pooler.dense.bias"}
    for key, grad in packed_grads.items():
        torch.testing.assert_close(grad, padded_grads[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("row_multiple", [1, 64])
def test_the_training_attention_path_equals_sdpa_when_dropout_keeps_everything(tiny_model_root, row_multiple):
    """The explicit attention path (train mode), over two attention groups with padding slots and, at row multiple
    64, padding rows: the same hidden states and gradients as the padded SDPA forward."""
    from torch import nn

    from sentfuse import Encoder
    from sentfuse.train import tokenize_column, training_mode
    from sentfuse.train.packed_backbone import pack_rows, packed_forward

    model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
    rows = tokenize_column(model, SHORT_AND_LONG).input_ids
    batch = pack_rows(rows, torch.device("cpu"), row_multiple)
    assert len(batch.groups) == 2 and batch.grid_size > batch.tokens
    with training_mode(model):
        backbone = model._model
        backbone.eval()
        padded = _padded(backbone, rows)
        padded_grads = _grads(backbone, padded)
        backbone.train()
        for module in backbone.modules():
            if isinstance(module, nn.Dropout):
                module.p = 1e-12  # training mode (the explicit attention path), yet no element dropped
        packed = packed_forward(backbone, batch)
        packed_grads = _grads(backbone, packed)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    for key, grad in packed_grads.items():
        torch.testing.assert_close(grad, padded_grads[key], atol=1e-5, rtol=1e-4, msg=key)


def test_head_slots_place_every_token_head_once_and_invert():
    """split_heads then merge_heads of the values' part returns each token's value heads to its own row."""
    from sentfuse.train.grid_rows import head_slots, merge_heads, split_heads
    from sentfuse.train.packed_backbone import pack_rows

    lengths = [3, 1, 7, 2, 2, 9]
    batch = pack_rows([[5] * n for n in lengths], torch.device("cpu"), 8)
    heads, head = 2, 3
    rows = len(batch.input_ids)
    slots = head_slots(batch.grid_rows, [(g.texts, g.width) for g in batch.groups], rows, heads, head)
    assert sorted(slots.qkv_slot.tolist()) == sorted(set(slots.qkv_slot.tolist()))
    qkv = torch.randn(rows, 3 * heads * head, dtype=torch.float64, requires_grad=True)
    values = [v for _, _, v in split_heads(qkv, slots)]
    back = merge_heads(values, slots)
    expected = qkv.detach()[:, 2 * heads * head:].clone()
    expected[batch.tokens:] = 0  # pack_rows' padding rows come back as zeros
    torch.testing.assert_close(back, expected, atol=0, rtol=0)
    assert torch.autograd.gradcheck(lambda t: merge_heads([v for _, _, v in split_heads(t, slots)], slots), (qkv,))


@pytest.mark.parametrize("name", ["roberta-cls-dense", "mpnet-weightedmean-noprompt", "distilbert-lasttoken-sqrt-lower",
                                  "xlmr-max-noprompt"])
def test_other_backbones_keep_the_padded_calls(tiny_model_root, name):
    from sentfuse import Encoder
    from sentfuse.train import training_mode
    from sentfuse.train.packed_backbone import takes_packed

    model = Encoder(str(tiny_model_root / name), device="cpu")
    with training_mode(model):
        assert not takes_packed(model._model)


def test_a_backbone_that_differs_from_the_packed_math_keeps_the_padded_calls(tiny_model_root):
    from sentfuse import Encoder
    from sentfuse.train import training_mode
    from sentfuse.train.packed_backbone import takes_packed

    model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
    with training_mode(model):
        model._model.embeddings.position_ids.add_(1)  # positions placed from 1, as no packed text would be
        assert not takes_packed(model._model)


def test_a_backbone_with_gradient_checkpointing_or_inference_stand_ins_keeps_its_own_forward(tiny_model_root):
    from sentfuse import Encoder
    from sentfuse.train import training_mode
    from sentfuse.train.packed_backbone import takes_packed

    model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
    with training_mode(model):
        assert takes_packed(model._model)
        model._model.gradient_checkpointing_enable()
        assert not takes_packed(model._model)
        model._model.gradient_checkpointing_disable()
    assert not takes_packed(model._model), "out of training mode, the inference stand-ins are back"


def test_packed_training_forward_with_dropout_is_seeded_and_differs_from_eval(tiny_model_root):
    from sentfuse import Encoder
    from sentfuse.train import tokenize_column, training_mode
    from sentfuse.train.packed_backbone import pack_rows, packed_forward

    model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
    batch = pack_rows(tokenize_column(model, TEXTS).input_ids, torch.device("cpu"))
    with training_mode(model), torch.no_grad():
        runs = []
        for _ in range(2):
            torch.manual_seed(3)
            runs.append(packed_forward(model._model, batch))
        model._model.eval()
        plain = packed_forward(model._model, batch)
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    assert (runs[0] - plain).abs().max() > 1e-3


def test_dropout_keeps_f_dropouts_distribution():
    from sentfuse.train.dropout import dropout

    torch.manual_seed(0)
    x = torch.ones(400_000)
    for p in (0.1, 0.5):
        y = dropout(x, p, True)
        kept = y != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 5e-3
        torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    assert (dropout(x, 1.0, True) == 0).all()


def test_dropout_gradient_is_the_mask_scaled():
    from sentfuse.train.dropout import dropout

    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x, 0.25, True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)


def _lookup_steps(steps, keep_grads=False, accumulate=1):
    """Both lookups over the same ids and upstream gradients; (sentfuse's gradients, nn.Embedding's, data pointers)."""
    from torch import nn

    from sentfuse.train.lookup_grad import lookup

    torch.manual_seed(0)
    table, plain = nn.Embedding(50, 8, padding_idx=0), nn.Embedding(50, 8, padding_idx=0)
    plain.weight.data.copy_(table.weight.data)
    grads, plain_grads, pointers = [], [], []
    for _ in range(steps):
        for _ in range(accumulate):
            ids = torch.randint(0, 50, (30,))
            ids[0] = 0  # the padding id as content: its row's gradient stays zero, as in nn.Embedding
            upstream = torch.randn(30, 8)
            (lookup(table, ids) * upstream).sum().backward()
            (plain(ids) * upstream).sum().backward()
        pointers.append(table.weight.grad.data_ptr())
        grads.append(table.weight.grad if keep_grads else table.weight.grad.clone())
        plain_grads.append(plain.weight.grad.clone())
        table.weight.grad = plain.weight.grad = None  # what zero_grad(set_to_none=True) does
    return grads, plain_grads, pointers


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lookup_gradient_equals_nn_embeddings_and_its_buffer_is_reused(accumulate):
    grads, plain_grads, pointers = _lookup_steps(4, accumulate=accumulate)
    for grad, plain in zip(grads, plain_grads):
        torch.testing.assert_close(grad, plain)
    assert len(set(pointers)) == 1


def test_a_lookup_gradient_someone_holds_is_never_reused():
    grads, plain_grads, pointers = _lookup_steps(3, keep_grads=True)
    assert len(set(pointers)) == 3
    for grad, plain in zip(grads, plain_grads):
        torch.testing.assert_close(grad, plain)
