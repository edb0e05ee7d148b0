"""Reading cross-encoder folders: sentence-transformers 6 CrossEncoder folders (modules.json holding one
Transformer that runs sequence classification) and plain Hugging Face sequence-classification folders
(what sentence-transformers 4-5 saved, and what the hub's rerankers hold).

What is read: the Hugging Face folder, the token limit and lower-casing, prompts, and the activation the
folder names for predict (config_sentence_transformers.json first, then the older places in config.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.modules import (
    ModelFolderError,
    TransformerModule,
    load_transformer,
    read_json,
    ST_CONFIG,
    read_json_object,
    read_st_config,
)

CLASSIFIER_TASK = "sequence-classification"
CLASSIFIER_OUTPUT = "logits"
CAUSAL_RERANKER_ERROR = (
    "{where} is a causal language model reranker (a LogitScore head over a *ForCausalLM backbone); sentfuse "
    "runs sequence-classification cross-encoders only (BERT, ModernBERT, XLM-R, ELECTRA, ...)"
)


@dataclass
class CrossEncoderFolder:
    path: Path
    transformer: TransformerModule  # the Hugging Face sequence-classification folder and its token settings
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    activation_paths: list[str] = field(default_factory=list)  # dotted class paths, the first that resolves wins
    # Whether config.json names a *ForSequenceClassification architecture: a bare backbone gets a new one-label
    # classifier unless num_labels says otherwise, as in sentence-transformers.
    has_classifier: bool = True


def _check_architecture(folder: Path) -> dict[str, Any]:
    """config.json of the Hugging Face model in folder, refused when it is a causal language model."""
    config = read_json_object(folder / "config.json")
    architectures = config.get("architectures") or []
    if any(isinstance(a, str) and a.endswith("ForCausalLM") for a in architectures):
        raise ModelFolderError(CAUSAL_RERANKER_ERROR.format(where=folder))
    return config


def _transformer_entry(folder: Path) -> Path:
    """The Transformer's folder from modules.json: one entry, the Transformer; anything else is refused."""
    entries = read_json(folder / "modules.json")
    if not isinstance(entries, list) or not entries:
        raise ModelFolderError(f"modules.json in {folder} must hold a non-empty JSON list of modules")
    kinds = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ModelFolderError(f"modules.json in {folder}, entry {i}: each module needs a 'type' string")
        kinds.append(entry["type"].rpartition(".")[2])
    if "LogitScore" in kinds:
        raise ModelFolderError(CAUSAL_RERANKER_ERROR.format(where=folder))
    if kinds != ["Transformer"]:
        raise ModelFolderError(
            f"modules.json in {folder} holds {kinds}; a cross-encoder folder holds one Transformer module "
            "(sentfuse runs its classifier's logits)"
        )
    rel = entries[0].get("path", "")
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ModelFolderError(f"modules.json in {folder}: path {rel!r} must be a folder inside the model folder")
    return folder / rel


def _st_settings(folder: Path) -> tuple[dict[str, str], str | None, list[str]]:
    """prompts, default_prompt_name and activation path of config_sentence_transformers.json, if any."""
    path = folder / ST_CONFIG
    if not path.is_file():
        return {}, None, []
    config = read_st_config(folder, ())
    if config.model_type not in (None, "CrossEncoder"):
        raise ModelFolderError(f"{path}: model_type is {config.model_type!r}; load it with Encoder / SparseEncoder "
                               "instead")
    activation = read_json_object(path).get("activation_fn")
    return config.prompts, config.default_prompt_name, [activation] if isinstance(activation, str) else []


def load_cross_encoder_folder(folder: Path) -> CrossEncoderFolder:
    """Read a cross-encoder folder; a broken or unsupported one fails naming its file before any weights load."""
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    if (folder / "modules.json").is_file():
        backbone = _transformer_entry(folder)
    elif (folder / "config.json").is_file():
        backbone = folder
    else:
        raise ModelFolderError(
            f"{folder} is not a model folder: it has neither modules.json (sentence-transformers) "
            "nor config.json (Hugging Face)"
        )
    if not (backbone / "config.json").is_file():
        raise ModelFolderError(f"config.json not found in {backbone} (the cross-encoder's Hugging Face model)")
    config = _check_architecture(backbone)
    transformer = load_transformer(backbone, task=CLASSIFIER_TASK, output=CLASSIFIER_OUTPUT)
    prompts, default_prompt_name, activations = _st_settings(folder)
    # sentence-transformers 4-5 kept the activation in config.json; older releases under another key.
    legacy = (config.get("sentence_transformers") or {}).get("activation_fn")
    activations += [a for a in (legacy, config.get("sbert_ce_default_activation_function")) if isinstance(a, str)]
    architectures = config.get("architectures") or []
    has_classifier = any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in architectures)
    return CrossEncoderFolder(folder, transformer, prompts, default_prompt_name, activations, has_classifier)
