"""sentence-transformers' loading keywords on Encoder and SparseEncoder (model.options), and hub names that
are not on this machine (model.resolve)."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
import torch
from conftest import SENTENCES

import sentfuse
from sentfuse.model.modules import ModelFolderError
from sentfuse.model.options import parse_load_options

MODEL = "bert-mean-normalize"


@pytest.fixture(scope="module")
def folder(tiny_model_root):
    return tiny_model_root / MODEL


# --- the one parser ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "dtype"), [
    ({"model_kwargs": {"torch_dtype": torch.bfloat16}}, torch.bfloat16),
    ({"model_kwargs": {"dtype": "float16"}}, torch.float16),
    ({"model_kwargs": {"torch_dtype": "auto"}}, None),
    ({"model_kwargs": {"torch_dtype": "torch.float32"}, "dtype": torch.float32}, torch.float32),
    ({"dtype": "float64"}, torch.float64),
])
def test_dtype_from_model_kwargs(kwargs, dtype):
    options, _ = parse_load_options(**kwargs)
    assert options.dtype == dtype
    assert "dtype" not in options.model_kwargs and "torch_dtype" not in options.model_kwargs


def test_other_model_kwargs_pass_through_and_device_map_becomes_the_device():
    options, device = parse_load_options(model_kwargs={"attn_implementation": "eager", "device_map": "cpu"})
    assert options.model_kwargs == {"attn_implementation": "eager"}
    assert device == "cpu"
    options, _ = parse_load_options(use_kernels=True)
    assert options.model_kwargs == {"use_kernels": True}


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"backend": "onnx"}, ValueError, r"backend='onnx' is not supported.*backend='torch'.*sentence_transformers"),
    ({"backend": "openvino"}, ValueError, r"backend='openvino' is not supported.*OpenVINO"),
    ({"backend": "tensorrt"}, ValueError, "backend must be 'torch'"),
    ({"model_kwargs": {"device_map": "auto"}}, ValueError, r"device_map.*'auto' is not supported"),
    ({"dtype": "float16", "model_kwargs": {"torch_dtype": torch.bfloat16}}, ValueError, "disagree"),
    ({"model_kwargs": {"torch_dtype": "int8"}}, ValueError, r"model_kwargs\['torch_dtype'\] must be one of"),
    ({"model_kwargs": ["eager"]}, TypeError, "model_kwargs must be a dict"),
    ({"processor_kwargs": "left"}, TypeError, "processor_kwargs must be a dict"),
    ({"trust_remote_code": "yes"}, TypeError, "trust_remote_code must be a bool"),
    ({"token": 3}, TypeError, "token must be a str, a bool or None"),
    ({"modules": [torch.nn.Identity()]}, ValueError, "modules is not supported"),
])
def test_bad_keywords_name_themselves(kwargs, error, message):
    with pytest.raises(error, match=message):
        parse_load_options(**kwargs)


# --- honoured by Encoder -----------------------------------------------------------------------------------


def test_encoder_honours_the_loading_keywords(folder, caplog):
    card = object()
    model = sentfuse.Encoder(
        folder, device="cpu", model_kwargs={"torch_dtype": "bfloat16", "attn_implementation": "eager"},
        processor_kwargs={"padding_side": "left"}, config_kwargs={"hidden_dropout_prob": 0.25},
        trust_remote_code=False, token=False, model_card_data=card, backend="torch",
    )
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert model.config.hidden_dropout_prob == 0.25
    assert model.tokenizer.padding_side == "left"
    assert model.model_card_data is card
    with caplog.at_level(logging.WARNING):
        old = sentfuse.Encoder(folder, device="cpu", tokenizer_kwargs={"padding_side": "left"}, use_auth_token=False)
    assert old.tokenizer.padding_side == "left"
    assert "tokenizer_kwargs is deprecated" in caplog.text and "use_auth_token is deprecated" in caplog.text


def test_encoder_matches_sentence_transformers_under_the_same_keywords(folder):
    from sentence_transformers import SentenceTransformer

    kwargs = {"model_kwargs": {"torch_dtype": torch.bfloat16, "attn_implementation": "eager"}}
    ours = sentfuse.Encoder(folder, device="cpu", **kwargs).encode(SENTENCES, output_dtype=None)
    theirs = SentenceTransformer(str(folder), device="cpu", **kwargs).encode(SENTENCES, convert_to_tensor=True)
    assert ours.dtype == np.float32 or ours.dtype == theirs.dtype  # numpy keeps bf16 out: float32 rows
    cosine = torch.nn.functional.cosine_similarity(torch.as_tensor(ours).float(), theirs.float())
    assert cosine.min() > 0.995


def test_encoder_errors_name_the_keyword(folder):
    with pytest.raises(ValueError, match="backend='onnx'"):
        sentfuse.Encoder(folder, device="cpu", backend="onnx")
    with pytest.raises(TypeError, match="give token or its deprecated name use_auth_token, not both"):
        sentfuse.Encoder(folder, device="cpu", token="a", use_auth_token="b")
    with pytest.raises(TypeError, match="model_kwargs="):
        sentfuse.Encoder(folder, device="cpu", model_kwargs={"no_such_option": 1})


def test_pool_workers_get_the_same_options(folder):
    model = sentfuse.Encoder(folder, device="cpu", processor_kwargs={"padding_side": "left"},
                             model_kwargs={"attn_implementation": "eager"})
    kwargs = model.worker_description()["kwargs"]
    assert kwargs["processor_kwargs"] == {"padding_side": "left"}
    assert kwargs["model_kwargs"] == {"attn_implementation": "eager"}
    rebuilt = sentfuse.Encoder(**kwargs, device="cpu")
    assert rebuilt.tokenizer.padding_side == "left" and rebuilt.config._attn_implementation == "eager"


# --- hub names ---------------------------------------------------------------------------------------------


def test_downloads_are_on_by_default_as_in_sentence_transformers():
    for cls in (sentfuse.Encoder, sentfuse.SparseEncoder):
        assert inspect.signature(cls.__init__).parameters["local_files_only"].default is False


def test_a_hub_name_not_cached_says_how_to_download(tmp_path, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(ModelFolderError, match=r"local_files_only=False to download it"):
        sentfuse.Encoder("BAAI/bge-small-en-v1.5", device="cpu", local_files_only=True, cache_folder=str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFolderError, match=r"downloads are off \(HF_HUB_OFFLINE is set\); unset HF_HUB_OFFLINE"):
        sentfuse.Encoder("BAAI/bge-small-en-v1.5", device="cpu", cache_folder=str(tmp_path))
