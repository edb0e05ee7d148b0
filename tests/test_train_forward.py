"""The differentiable forward: a batch cut into several backbone calls gives the embeddings and gradients of
one call, including when the token embeddings are looked up once for all calls."""

from __future__ import annotations

import pytest
import torch

TEXTS = ["a", "a man is playing a guitar on the old stage tonight", "cats", "what is the capital of france?",
         "the dog runs in the park", "stock markets fell sharply on monday after the news"]


def _embed_and_grad(model, max_batch_tokens: int):
    from sentfuse.train import embed_tokens, tokenize_column

    columns = [tokenize_column(model, TEXTS[:3]), tokenize_column(model, TEXTS[3:])]
    lookup = model._model.get_input_embeddings()
    lookup.weight.grad = None
    out = embed_tokens(model, columns, max_batch_tokens=max_batch_tokens)
    weights = torch.linspace(-1, 1, out[0].numel()).reshape(out[0].shape)
    (out[0] * weights).sum().add(out[1].square().sum()).backward()
    return [o.detach() for o in out], lookup.weight.grad.clone()


@pytest.mark.parametrize("name", ["bert-mean-normalize", "roberta-cls-dense", "mpnet-weightedmean-noprompt",
                                  "distilbert-lasttoken-sqrt-lower", "xlmr-max-noprompt"])
def test_several_backbone_calls_match_one(tiny_model_root, name):
    from sentfuse import Encoder
    from sentfuse.train import training_mode
    from sentfuse.train.forward import _takes_embeddings

    model = Encoder(str(tiny_model_root / name), device="cpu")
    with training_mode(model) as modules:
        modules.eval()  # dropout off: both passes must see the same network
        assert _takes_embeddings(model._model), "these backbones take inputs_embeds like input_ids"
        one, one_grad = _embed_and_grad(model, max_batch_tokens=10**6)
        many, many_grad = _embed_and_grad(model, max_batch_tokens=12)  # a few texts per call
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(one_grad, many_grad, atol=1e-5, rtol=1e-4)


def test_a_backbone_that_scales_its_embeddings_keeps_the_ids_path(tiny_model_root):
    from sentfuse import Encoder
    from sentfuse.train.forward import _takes_embeddings

    model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
    backbone = model._model
    original = backbone.forward

    def scaled_ids(*args, input_ids=None, inputs_embeds=None, **kwargs):
        if input_ids is not None:  # scales what it looks up itself, as some decoders' embeddings do
            inputs_embeds, input_ids = backbone.get_input_embeddings()(input_ids) * 2.0, None
        return original(*args, inputs_embeds=inputs_embeds, **kwargs)

    backbone.forward = scaled_ids
    assert not _takes_embeddings(backbone)
