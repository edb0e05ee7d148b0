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
    _metric_by_name(losses, name, kwargs)
    if name == "CoSENTLoss":
        kwargs.setdefault("similarity_fct", pairwise_cos_sim)
    return getattr(losses, name)(st, **kwargs)


def _our_loss(model, name, **kwargs):
    from sentfuse import losses

    if name == "MatryoshkaLoss":
        inner = kwargs.pop("inner")
        return losses.MatryoshkaLoss(model, _our_loss(model, inner, **kwargs.pop("inner_kwargs", {})), **kwargs)
    _metric_by_name(losses, name, kwargs)
    return getattr(losses, name)(model, **kwargs)


def _metric_by_name(losses, name, kwargs) -> None:
    """kwargs' distance_metric given by member name, as the library's own enum member."""
    enum = {"TripletLoss": "TripletDistanceMetric", "ContrastiveLoss": "SiameseDistanceMetric",
            "OnlineContrastiveLoss": "SiameseDistanceMetric"}.get(name)
    if name.startswith("Batch"):
        enum = "BatchHardTripletLossDistanceFunction"
    if enum and "distance_metric" in kwargs:
        kwargs["distance_metric"] = getattr(getattr(losses, enum), kwargs["distance_metric"])


def _labels(kind: str | None, dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(sentence-transformers' labels, ours) for a case: ours are float32, as sentfuse's collator makes them;
    sentence-transformers' class labels are int64, as its collator makes them from ints."""
    rows = len(ANCHORS)
    generator = torch.Generator().manual_seed(7)
    labels = {
        None: None,
        "score": torch.tensor(SCORES),
        "binary": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        "class": torch.tensor([0.0, 2.0, 1.0, 0.0]),
        "groups": torch.tensor([0.0, 1.0, 0.0, 1.0]),  # two classes of two rows: the in-batch triplet losses
        "teacher": torch.randn(rows, dim, generator=generator),  # one teacher embedding for every column
        "teacher_per_column": torch.randn(rows, 2, dim, generator=generator),
        "teacher_24": torch.randn(rows, 24, generator=generator),  # another width: needs projection_dim=24
        "scores": torch.randn(rows, 2, generator=generator),  # positive's and negative's teacher scores
    }[kind]
    return (labels.long() if kind in ("class", "groups") else labels), labels


CASES = [
    ("MultipleNegativesRankingLoss", {}, 2, None),
    ("MultipleNegativesRankingLoss", {}, 3, None),
    ("MultipleNegativesRankingLoss", dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")), 3, None),
    ("MultipleNegativesRankingLoss", dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"), 2, None),
    ("MultipleNegativesRankingLoss", dict(hardness_mode="hard_negatives", hardness_strength=5.0), 3, None),
    ("MultipleNegativesRankingLoss", dict(hardness_mode="in_batch_negatives", hardness_strength=9.0, scale=10.0), 3, None),
    ("MultipleNegativesRankingLoss", dict(hardness_mode="all_negatives", hardness_strength=2.0), 3, None),
    ("MultipleNegativesSymmetricRankingLoss", {}, 2, None),
    ("CachedMultipleNegativesRankingLoss", dict(mini_batch_size=3), 3, None),
    ("CachedMultipleNegativesRankingLoss", dict(mini_batch_size=2, directions=("query_to_doc", "doc_to_query")), 2, None),
    ("CoSENTLoss", {}, 2, "score"),
    ("CosineSimilarityLoss", {}, 2, "score"),
    ("TripletLoss", {}, 3, None),
    ("TripletLoss", dict(distance_metric="COSINE", triplet_margin=0.5), 3, None),
    ("MatryoshkaLoss", dict(inner="CoSENTLoss", matryoshka_dims=[32, 16, 8]), 2, "score"),
    ("MatryoshkaLoss", dict(inner="MultipleNegativesRankingLoss", matryoshka_dims=[32, 8], matryoshka_weights=[1, 0.5]), 3, None),
    ("MatryoshkaLoss", dict(inner="CachedMultipleNegativesRankingLoss", inner_kwargs=dict(mini_batch_size=2),
                            matryoshka_dims=[32, 16]), 2, None),
    ("ContrastiveLoss", {}, 2, "binary"),
    ("ContrastiveLoss", dict(distance_metric="EUCLIDEAN", margin=2.0, size_average=False), 2, "binary"),
    ("OnlineContrastiveLoss", {}, 2, "binary"),
    ("OnlineContrastiveLoss", dict(distance_metric="MANHATTAN", margin=8.0), 2, "binary"),
    ("AnglELoss", {}, 2, "score"),
    ("AnglELoss", dict(scale=10.0), 3, None),
    ("MSELoss", {}, 1, "teacher"),
    ("MSELoss", {}, 2, "teacher_per_column"),
    ("EmbedDistillLoss", {}, 2, "teacher"),
    ("EmbedDistillLoss", dict(distance_metric="l2", projection_dim=24), 2, "teacher_24"),
    ("MarginMSELoss", {}, 3, "score"),
    ("MarginMSELoss", {}, 3, "scores"),
    ("SoftmaxLoss", dict(num_labels=3), 2, "class"),
    ("SoftmaxLoss", dict(num_labels=3, concatenation_sent_multiplication=True), 2, "class"),
    ("BatchHardTripletLoss", {}, 1, "groups"),
    ("BatchHardTripletLoss", dict(distance_metric="cosine_distance", margin=0.5), 1, "groups"),
    ("BatchHardSoftMarginTripletLoss", {}, 1, "groups"),
    ("BatchAllTripletLoss", {}, 1, "groups"),
    ("BatchAllTripletLoss", dict(distance_metric="cosine_distance", margin=0.05), 1, "groups"),
    ("BatchSemiHardTripletLoss", {}, 1, "groups"),
    ("BatchSemiHardTripletLoss", dict(distance_metric="cosine_distance", margin=0.1), 1, "groups"),
    ("DistillKLDivLoss", {}, 3, "scores"),
    ("DistillKLDivLoss", dict(temperature=2.0, teacher_temperature=0.5), 3, "scores"),
    ("CachedMultipleNegativesSymmetricRankingLoss", dict(mini_batch_size=2), 2, None),
    ("GlobalOrthogonalRegularizationLoss", {}, 2, None),
    ("GlobalOrthogonalRegularizationLoss", dict(mean_weight=0.5, second_moment_weight=None, aggregation="sum"), 3, None),
]


def _total(loss):
    """A loss's value; the sum of its terms where it returns them by name, as both trainers take it."""
    return torch.stack(list(loss.values())).sum() if isinstance(loss, dict) else loss


def _grads(module_params) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module_params if p.grad is not None}


# The losses that own trained layers (a classifier, a projection): both libraries' copies start from the same weights.
OWN_LAYERS = ("classifier", "projection")


@pytest.mark.parametrize("name,kwargs,n_columns,labels", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_loss_and_gradients_match_sentence_transformers(models, name, kwargs, n_columns, labels):
    from sentfuse.train import tokenize_column, training_mode

    st, ours = models
    st.zero_grad(set_to_none=True)
    ours._model.zero_grad(set_to_none=True)
    texts = [ANCHORS, POSITIVES, NEGATIVES][:n_columns]
    if name == "SoftmaxLoss":
        kwargs = dict(kwargs, embedding_dimension=st.get_embedding_dimension())
    st_labels, labels = _labels(labels, st.get_embedding_dimension())

    st_loss = _st_loss(st, name, **dict(kwargs))
    st_value = _total(st_loss([st.tokenize(column) for column in texts], st_labels))
    st_value.backward()
    st_grads = _grads(st[0].auto_model.named_parameters())

    with training_mode(ours) as modules:
        modules.eval()  # dropout off, as in the sentence-transformers model
        our_loss = _our_loss(ours, name, **dict(kwargs))
        for layer in OWN_LAYERS:
            if getattr(st_loss, layer, None) is not None:
                getattr(our_loss, layer).load_state_dict(getattr(st_loss, layer).state_dict())
        value = _total(our_loss([tokenize_column(ours, column) for column in texts], labels))
        value.backward()
        our_grads = _grads(ours._model.named_parameters())

    torch.testing.assert_close(value.detach(), st_value.detach(), atol=1e-5, rtol=1e-5)
    assert our_grads.keys() <= st_grads.keys() and len(our_grads) > 10
    for key, grad in our_grads.items():
        # within 1e-5 of the gradient's own scale: an embedding table's gradient sums every token's, and the two
        # libraries' summation orders differ (token_type_embeddings: max 1.52, 1.1e-5 apart on a Zen 3)
        scale = max(1.0, st_grads[key].abs().max().item())
        torch.testing.assert_close(grad, st_grads[key], atol=1e-5 * scale, rtol=1e-4, msg=lambda m: f"{key}: {m}")
    for layer in OWN_LAYERS:
        if getattr(st_loss, layer, None) is not None:
            torch.testing.assert_close(getattr(our_loss, layer).weight.grad, getattr(st_loss, layer).weight.grad,
                                       atol=1e-5, rtol=1e-4)


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


@pytest.mark.parametrize("guide_folder,kwargs,n_columns", [
    ("bert-legacy-cls-max-mean-dense", {}, 2),  # the model's vocabulary: the guide reads the batch's token ids
    ("bert-legacy-cls-max-mean-dense", dict(margin=0.05, margin_strategy="relative", contrast_anchors=False), 3),
    ("distilbert-lasttoken-sqrt-lower", dict(temperature=0.05, margin=0.02, contrast_positives=False), 3),  # retokenized
])
def test_gist_loss_matches_sentence_transformers(models, tiny_model_root, guide_folder, kwargs, n_columns):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses as st_losses

    from sentfuse import Encoder, losses
    from sentfuse.train import tokenize_column, training_mode

    st, ours = models
    st.zero_grad(set_to_none=True)
    ours._model.zero_grad(set_to_none=True)
    st_guide = SentenceTransformer(str(tiny_model_root / guide_folder), device="cpu").eval()
    texts = [ANCHORS, POSITIVES, NEGATIVES][:n_columns]
    st_loss = st_losses.GISTEmbedLoss(st, st_guide, **kwargs)
    st_value = st_loss([st.tokenize(column) for column in texts], None)
    st_value.backward()
    with training_mode(ours) as modules:
        modules.eval()
        our_loss = losses.GISTEmbedLoss(ours, Encoder(str(tiny_model_root / guide_folder), device="cpu"), **kwargs)
        assert our_loss.must_retokenize == st_loss.must_retokenize
        value = our_loss([tokenize_column(ours, column) for column in texts], None)
        value.backward()
        our_grads = _grads(ours._model.named_parameters())
    torch.testing.assert_close(value.detach(), st_value.detach(), atol=1e-5, rtol=1e-5)
    st_grads = _grads(st[0].auto_model.named_parameters())
    assert our_grads.keys() <= st_grads.keys() and len(our_grads) > 10
    for key, grad in our_grads.items():
        scale = max(1.0, st_grads[key].abs().max().item())
        torch.testing.assert_close(grad, st_grads[key], atol=1e-5 * scale, rtol=1e-4, msg=lambda m: f"{key}: {m}")


def test_config_names_the_distance_metric_either_library_gave(tiny_model_root):
    from sentence_transformers.sentence_transformer import losses as st_losses

    from sentfuse import Encoder, losses

    model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu")
    for metric in (losses.SiameseDistanceMetric.EUCLIDEAN, st_losses.SiameseDistanceMetric.EUCLIDEAN):
        config = losses.ContrastiveLoss(model, distance_metric=metric, margin=2.0).get_config_dict()
        assert config == {"distance_metric": "SiameseDistanceMetric.EUCLIDEAN", "margin": 2.0, "size_average": True}
    config = losses.BatchHardTripletLoss(model).get_config_dict()
    assert config == {"distance_metric": "euclidean_distance", "margin": 5}


def test_ranking_settings_assigned_after_construction_take_effect(models):
    """sentence-transformers' losses keep scale, similarity_fct, ... as attributes a script may set between steps."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    from sentfuse import losses
    from sentfuse.search import dot_score
    from sentfuse.train import tokenize_column, training_mode

    st, ours = models
    with training_mode(ours) as modules, torch.no_grad():
        modules.eval()
        columns = [tokenize_column(ours, ANCHORS), tokenize_column(ours, POSITIVES)]
        for cls in (losses.MultipleNegativesRankingLoss, losses.CachedMultipleNegativesRankingLoss):
            loss = cls(ours)
            loss.scale, loss.similarity_fct = 5.0, dot_score
            assert loss.temperature == 0.2 and loss.similarity_fct is dot_score
            torch.testing.assert_close(loss(columns, None), cls(ours, scale=5.0, similarity_fct=dot_score)(columns, None))
            with pytest.raises(ValueError, match="scale must be positive"):
                loss.scale = -1
            with pytest.raises(ValueError, match="directions"):
                loss.directions = ("doc_to_doc",)
    assert set(losses.MultipleNegativesRankingLoss(ours).get_config_dict()) == set(
        st_losses.MultipleNegativesRankingLoss(st).get_config_dict())
    assert losses.MultipleNegativesRankingLoss(ours).gather_across_devices is False


def test_columns_as_sentence_transformers_tokenizes_them(models):
    from sentfuse import losses
    from sentfuse.train import tokenize_column, training_mode

    _, ours = models
    with training_mode(ours) as modules, torch.no_grad():
        modules.eval()
        loss = losses.MultipleNegativesRankingLoss(ours)
        want = loss([tokenize_column(ours, ANCHORS), tokenize_column(ours, POSITIVES)], None)
        torch.testing.assert_close(loss([ours.tokenize(ANCHORS), ours.tokenize(POSITIVES)], None), want)
        with pytest.raises(TypeError, match="column 1 is list"):
            loss([tokenize_column(ours, ANCHORS), POSITIVES], None)


def test_matryoshka_dims_up_to_the_full_width_of_a_truncating_model(tiny_model_root):
    from sentfuse import Encoder, losses

    model = Encoder(str(tiny_model_root / "bert-mean-normalize"), device="cpu", truncate_dim=16)
    full = model._dim
    assert model.get_embedding_dimension() == 16 < full
    losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), matryoshka_dims=[full, 16])
    with pytest.raises(ValueError, match="exceed"):
        losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), matryoshka_dims=[full + 1])
