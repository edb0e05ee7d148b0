"""Writing a cross-encoder folder in sentence-transformers 6's layout (both libraries load it back): the Hugging
Face sequence-classification model and tokenizer at the root, modules.json naming one Transformer, its
sentence_bert_config.json, and config_sentence_transformers.json with prompts and the activation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..model.options import LoadOptions
from ..model.pretrained import load_pretrained
from ..model.save import load_weights, quiet_progress_bars, replace_folder_entries, write_json
from .folder import CLASSIFIER_OUTPUT, CLASSIFIER_TASK, CrossEncoderFolder

# The module type sentence-transformers 6 writes for (and reads back as) its Transformer.
ST_TRANSFORMER_TYPE = "sentence_transformers.base.modules.transformer.Transformer"


def _fill(out: Path, folder: CrossEncoderFolder, tokenizer: Any, dtype: torch.dtype, settings: dict[str, Any],
          options: LoadOptions, weights: dict[str, torch.Tensor]) -> None:
    # The running model is prepared for inference (stand-in layers), so the checkpoint is a fresh load of the
    # source folder (its config, with the options' overrides) holding the running weights.
    _, model = load_pretrained(folder.transformer.path, dtype, options, "AutoModelForSequenceClassification")
    load_weights(model, weights, folder.transformer.path)
    with quiet_progress_bars():
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_json(out / "sentence_bert_config.json", {
        "transformer_task": CLASSIFIER_TASK,
        "modality_config": {"text": {"method": "forward", "method_output_name": CLASSIFIER_OUTPUT}},
        "module_output_name": "scores",
        "max_seq_length": tokenizer.model_max_length,
        "do_lower_case": folder.transformer.do_lower_case,
    })
    write_json(out / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER_TYPE}])
    from .. import __version__

    write_json(out / "config_sentence_transformers.json", {
        "model_type": "CrossEncoder",
        "__version__": {"sentfuse": __version__, "pytorch": torch.__version__},
        **settings,
    })


def save_cross_encoder(path: str | os.PathLike, folder: CrossEncoderFolder, tokenizer: Any, dtype: torch.dtype,
                       settings: dict[str, Any], options: LoadOptions, weights: dict[str, torch.Tensor]) -> Path:
    """Write the cross-encoder to path (atomically per file, as model.save.replace_folder_entries does) with this
    tokenizer (its current max length), dtype and weights (the running model's, under transformers' names);
    settings (prompts, default_prompt_name, activation_fn) go to config_sentence_transformers.json; options are
    the loading keywords it was loaded with (config_kwargs' overrides such as num_labels reach the saved
    config.json)."""
    return replace_folder_entries(path, lambda out: _fill(out, folder, tokenizer, dtype, settings, options, weights))
