"""sentfuse.losses against sentence-transformers' losses of the same name: same batch, same tiny model,
loss and every parameter's gradient equal within 1e-5 (float32, dropout off)."""

from __future__ import annotations

import pytest
import torch

from conftest import SENTENCES

ANCHORS = ["A man is playing a guitar.", "What is the capital of France?", "cats", "A woman slices an onion."]
POSITIVES = ["Someone plays an instrument.", "Paris is the capital.", "a cat sleeps on the bench", "onion slicing"]
NEGATIVES = [SENTENCES[1], SENTENCES[9], SENTENCES[3], "ok"]
SCORES = [0.9, 0.1, 0.5, 0.5]


@pytest.fixture(scope="module")
def models(tiny_model_root):
    """The same tiny model in sentence-transformers (eval: dropout off) and in sentfuse."""
    from sentence_transformers import SentenceTransformer

    from sentfuse import Encoder

    folder = str(tiny_model_root / "bert-mean-normalize")
    st = SentenceTransformer(folder, device="cpu")
    st.eval()
    return st, Encoder(folder, device="cpu")


def _st_loss(st, name, **kwargs):
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.util import pairwise_cos_sim

    if name == "MatryoshkaLoss":
        inner = kwargs.pop("inner")
        return losses.MatryoshkaLoss(st, _st_loss(st, inner, **kwargs.pop("inner_kwargs", {})), **kwargs)
    if name == "TripletLoss" and "distance_metric" in kwargs:
        kwargs["distance_metric"] = getattr(losses.TripletDistanceMetric, kwargs["distance_metric"])
    if name == "CoSENTLoss":
        kwargs.setdefault("similarity_fct", pairwise_cos_sim)
    return getattr(losses, name)(st, **kwargs)


def _our_loss(model, name, **kwargs):
    from sentfuse import losses

    if name == "MatryoshkaLoss":
        inner = kwargs.pop("inner")
        return losses.MatryoshkaLoss(model, _our_loss(model, inner, **kwargs.pop("inner_kwargs", {})), **kwargs)
    if name == "TripletLoss" and "distance_metric" in kwargs:
        kwargs["distance_metric"] = getattr(losses.TripletDistanceMetric, kwargs["distance_metric"])
    return getattr(losses, name)(model, **kwargs)


CASES = [
    ("MultipleNegativesRankingLoss", {}, 2, False),
    ("MultipleNegativesRankingLoss", {}, 3, False),
    ("MultipleNegativesRankingLoss", dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")), 3, False),
    ("MultipleNegativesRankingLoss", dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"), 2, False),
    ("MultipleNegativesRankingLoss", dict(hardness_mode="hard_negatives", hardness_strength=5.0), 3, False),
    ("MultipleNegativesRankingLoss", dict(hardness_mode="in_batch_negatives", hardness_strength=9.0, scale=10.0), 3, False),
    ("MultipleNegativesRankingLoss", dict(hardness_mode="all_negatives", hardness_strength=2.0), 3, False),
    ("MultipleNegativesSymmetricRankingLoss", {}, 2, False),
    ("CachedMultipleNegativesRankingLoss", dict(mini_batch_size=3), 3, False),
    ("CachedMultipleNegativesRankingLoss", dict(mini_batch_size=2, directions=("query_to_doc", "doc_to_query")), 2, False),
    ("CoSENTLoss", {}, 2, True),
    ("CosineSimilarityLoss", {}, 2, True),
    ("TripletLoss", {}, 3, False),
    ("TripletLoss", dict(distance_metric="COSINE", triplet_margin=0.5), 3, False),
    ("MatryoshkaLoss", dict(inner="CoSENTLoss", matryoshka_dims=[32, 16, 8]), 2, True),
    ("MatryoshkaLoss", dict(inner="MultipleNegativesRankingLoss", matryoshka_dims=[32, 8], matryoshka_weights=[1, 0.5]), 3, False),
    ("MatryoshkaLoss", dict(inner="CachedMultipleNegativesRankingLoss", inner_kwargs=dict(mini_batch_size=2),
                            matryoshka_dims=[32, 16]), 2, False),
]


def _grads(module_params) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module_params if p.grad is not None}


@pytest.mark.parametrize("name,kwargs,n_columns,labelled", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_loss_and_gradients_match_sentence_transformers(models, name, kwargs, n_columns, labelled):
    from sentfuse.train import tokenize_column, training_mode

    st, ours = models
    st.zero_grad(set_to_none=True)
    ours._model.zero_grad(set_to_none=True)
    texts = [ANCHORS, POSITIVES, NEGATIVES][:n_columns]
    labels = torch.tensor(SCORES) if labelled else torch.zeros(len(ANCHORS))

    st_loss = _st_loss(st, name, **dict(kwargs))
    st_value = st_loss([st.tokenize(column) for column in texts], labels)
    st_value.backward()
    st_grads = _grads(st[0].auto_model.named_parameters())

    with training_mode(ours) as modules:
        modules.eval()  # dropout off, as in the sentence-transformers model
        our_loss = _our_loss(ours, name, **dict(kwargs))
        value = our_loss([tokenize_column(ours, column) for column in texts], labels)
        value.backward()
        our_grads = _grads(ours._model.named_parameters())

    torch.testing.assert_close(value.detach(), st_value.detach(), atol=1e-5, rtol=1e-5)
    assert our_grads.keys() <= st_grads.keys() and len(our_grads) > 10
    for key, grad in our_grads.items():
        # within 1e-5 of the gradient's own scale: an embedding table's gradient sums every token's, and the two
        # libraries' summation orders differ (token_type_embeddings: max 1.52, 1.1e-5 apart on a Zen 3)
        scale = max(1.0, st_grads[key].abs().max().item())
        torch.testing.assert_close(grad, st_grads[key], atol=1e-5 * scale, rtol=1e-4, msg=lambda m: f"{key}: {m}")


def test_wrong_columns_and_labels_are_named(tiny_model_root):
    from sentfuse import Encoder, losses
    from sentfuse.train import tokenize_column

    model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
    column = tokenize_column(model, ANCHORS)
    with pytest.raises(ValueError, match="CoSENTLoss expects 4 labels"):
        losses.CoSENTLoss(model)([column, column], None)
    with pytest.raises(ValueError, match="TripletLoss expects 3 text columns"):
        losses.TripletLoss(model)([column, column], None)
    with pytest.raises(ValueError, match="hardness_mode"):
        losses.MultipleNegativesRankingLoss(model, hardness_mode="hardest")
