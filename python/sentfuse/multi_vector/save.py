"""Saving a MultiVectorEncoder: sentfuse never changes its weights, so its folder is the source folder's files
with config_sentence_transformers.json rewritten for the current prompts and similarity."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..model.modules import ST_CONFIG
from ..model.save import replace_folder_entries, write_json


def save_multi_vector_folder(path: str | os.PathLike, source: Path, settings: dict[str, Any]) -> Path:
    """Copy source into path with settings merged into config_sentence_transformers.json, atomically per entry
    (model.save.replace_folder_entries): a failure leaves path as it was."""
    target = Path(path).expanduser()
    if target.exists() and target.is_dir() and target.resolve() == source.resolve():
        raise ValueError(f"path {target} is the folder the model was loaded from")

    def fill(staging: Path) -> None:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        config_path = staging / ST_CONFIG
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        write_json(config_path, config | {"model_type": "MultiVectorEncoder", **settings})

    return replace_folder_entries(target, fill)
