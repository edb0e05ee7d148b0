"""Saving a MultiVectorEncoder: sentfuse never changes weights, so its folder is the source folder's files
with config_sentence_transformers.json rewritten for the current prompts and similarity."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def save_multi_vector_folder(path: str | os.PathLike, source: Path, settings: dict[str, Any]) -> Path:
    """Copy source into path with settings merged into config_sentence_transformers.json. The copy is built in a
    temporary folder beside path and each entry replaces its namesake, so a failure leaves path as it was."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"path {target} is a file; expected a folder to save the model in")
    if target.resolve() == source.resolve():
        raise ValueError(f"path {target} is the folder the model was loaded from")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        config_path = staging / "config_sentence_transformers.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        config.update({"model_type": "MultiVectorEncoder", **settings})
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        target.mkdir(exist_ok=True)
        for entry in staging.iterdir():
            if (target / entry.name).is_dir():
                shutil.rmtree(target / entry.name)
            os.replace(entry, target / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
