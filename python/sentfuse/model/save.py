"""Writing a model folder in sentence-transformers' layout, which sentfuse and sentence-transformers both load.

The backbone is read again from the folder the model came from (at the dtype it runs in), so parts the
running backbone dropped for inference (the pooler) are written as they were; weights the caller passes
(a fine-tuned backbone's, under transformers' names) replace the ones read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .modules import (
    ST_CONFIG, DenseModule, ModelFolder, NormalizeModule, PoolingModule, StaticEmbeddingModule, TransformerModule,
)
from .pretrained import load_pretrained, quiet_progress_bars
from .static import save_static

# Module type names as sentence-transformers writes them (and reads them back, in every release).
_ST_TYPES = {
    TransformerModule: "sentence_transformers.models.Transformer",
    PoolingModule: "sentence_transformers.models.Pooling",
    DenseModule: "sentence_transformers.models.Dense",
    NormalizeModule: "sentence_transformers.models.Normalize",
    StaticEmbeddingModule: "sentence_transformers.models.StaticEmbedding",
}
OMITTED_WHEN_UNSET = ("truncate_dim",)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Put a running model's weights (backbone_state_dict) into a fresh load of its folder; all of them must fit
    (a pooler the running model dropped as unused keeps the folder's)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any("pooler" not in k.split(".")[:2] for k in missing):
        raise ValueError(f"the model's weights do not fit {source}: missing {missing}, unexpected {unexpected}")


def _write_backbone(out: Path, module: TransformerModule, tokenizer: Any, dtype: torch.dtype,
                    weights: dict[str, torch.Tensor] | None = None) -> int:
    """The Hugging Face model and tokenizer into out; returns the hidden size."""
    _, model = load_pretrained(module.path, dtype)
    if weights is not None:
        load_weights(model, weights, module.path)
    with quiet_progress_bars():  # a checkpoint every few hundred steps: no "Writing model shards" bar each time
        model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": tokenizer.model_max_length, "do_lower_case": module.do_lower_case},
    )
    config = model.config
    return getattr(config, "hidden_size", None) or getattr(config, "dim")


def _write_module(out: Path, module: Any, hidden: int, dtype: torch.dtype) -> None:
    out.mkdir()
    if isinstance(module, PoolingModule):
        write_json(out / "config.json", {
            "embedding_dimension": hidden,
            "pooling_mode": list(module.modes) if len(module.modes) > 1 else module.modes[0],
            "include_prompt": module.include_prompt,
        })
    elif isinstance(module, DenseModule):
        from safetensors.torch import save_model

        activation = type(module.activation)
        config = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.linear.bias is not None,
            "activation_function": f"{activation.__module__}.{activation.__qualname__}",
        }
        if module.use_residual:
            config["use_residual"] = True
        write_json(out / "config.json", config)
        save_model(module.to(dtype), str(out / "model.safetensors"))


def _fill_folder(out: Path, folder: ModelFolder, tokenizer: Any, dtype: torch.dtype, settings: dict[str, Any],
                 weights: dict[str, torch.Tensor] | None = None) -> None:
    first = folder.transformer
    if isinstance(first, StaticEmbeddingModule):
        hidden = save_static(out, first, tokenizer, dtype)
    else:
        hidden = _write_backbone(out, first, tokenizer, dtype, weights)
    entries = [{"idx": 0, "name": "0", "path": "", "type": _ST_TYPES[type(first)]}]
    for idx, module in enumerate(folder.modules[1:], start=1):
        name = f"{idx}_{type(module).__name__.removesuffix('Module')}"
        _write_module(out / name, module, hidden, dtype)
        entries.append({"idx": idx, "name": str(idx), "path": name, "type": _ST_TYPES[type(module)]})
    write_json(out / "modules.json", entries)
    from importlib.metadata import version

    # As sentence-transformers writes the file: truncate_dim only when set, the other settings always.
    write_json(out / ST_CONFIG, {
        "model_type": "SentenceTransformer",
        "__version__": {"sentfuse": version("sentfuse"), "pytorch": torch.__version__},
        **{k: v for k, v in settings.items() if v is not None or k not in OMITTED_WHEN_UNSET},
    })


def save_model_folder(
    path: str | os.PathLike, folder: ModelFolder, tokenizer: Any, dtype: torch.dtype, settings: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write folder's pipeline to path with this tokenizer (its current max length) and backbone dtype;
    settings (prompts, default_prompt_name, similarity_fn_name, truncate_dim) go to
    config_sentence_transformers.json; weights, when given, are the backbone's (else the folder's own).

    Everything is written to a temporary folder beside path first, then each file or module folder
    replaces its namesake in path: a failure leaves path as it was, and other files there stay.
    """
    return replace_folder_entries(path, lambda out: _fill_folder(out, folder, tokenizer, dtype, settings, weights))


def replace_folder_entries(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """fill(staging) writes a model into a temporary folder beside path; then each of its files or folders
    replaces its namesake in path (created if missing). A failure leaves path as it was."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"path {target} is a file; expected a folder to save the model in")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(staging)
        target.mkdir(exist_ok=True)
        for entry in staging.iterdir():
            if (target / entry.name).is_dir():
                shutil.rmtree(target / entry.name)
            os.replace(entry, target / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
