"""What a saved embeddings file was built from, kept beside it in FILE.npy.json.

`sentfuse encode -o FILE.npy` and `sentfuse search --embeddings FILE.npy` write the record; search
reuses FILE.npy only when the record matches what it would encode now: the same texts (a hash),
the same model (the SHA-256 of its files) and the same options. Anything else would pair old
embeddings with new texts and give wrong answers without a word.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..model.fingerprint import model_sha256

RECORD_VERSION = 2  # 2: the model known by the SHA-256 of all its files
# The record keys that must match for a file to be reused, in the order mismatches are reported.
COMPARED = ("texts_sha256", "model_sha256", "prompt", "max_seq_length", "dtype", "normalize", "precision")
CHECKPOINT_DTYPE = "as in the checkpoint"  # the record's dtype when no --dtype was given
# How to resolve a mismatch, where the difference alone does not say.
HINTS = {
    "prompt": " (search embeds the corpus with the model's document prompt: sentfuse encode --prompt-name document)",
    "dtype": " (give search the same --dtype)",
    "max_seq_length": " (give search the same --max-seq-length)",
    "normalize": " (this model scores by dot product, where the length of an embedding counts)",
}


def record_path(npy: Path) -> Path:
    return npy.with_name(npy.name + ".json")


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def build_record(encoder: Any, source: str, texts: list[str], **options: Any) -> dict[str, Any]:
    """The record of embedding texts (read from source) with encoder; options: prompt, dtype, normalize, precision."""
    return {
        "sentfuse_embeddings": RECORD_VERSION,
        "source": source,
        "items": len(texts),
        "texts_sha256": texts_digest(texts),
        "model": str(encoder.model_path),
        "model_sha256": model_sha256(encoder.model_path),
        "max_seq_length": encoder.max_seq_length,
        **options,
    }


def read_record(npy: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(record_path(npy).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(key: str, stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    if key == "texts_sha256":
        return f"was built from other texts ({stored.get('source')}, {stored.get('items')} items)"
    if key == "model_sha256":
        return f"was built with another model ({stored.get('model')})"
    return f"was built with {key} {stored.get(key)!r}, this run uses {wanted[key]!r}{HINTS.get(key, '')}"


def mismatches(stored: dict[str, Any] | None, wanted: dict[str, Any], array: np.ndarray, npy: Path,
               ignored: tuple[str, ...] = ()) -> list[str]:
    """Why the embeddings in array (read from npy, described by stored) are not what wanted describes;
    keys in ignored may differ (options that cannot change the caller's results)."""
    if stored is None:
        return [f"has no readable {record_path(npy).name} beside it saying what it was built from"]
    if stored.get("sentfuse_embeddings") != RECORD_VERSION:
        return [f"has a {record_path(npy).name} of another format"]
    problems = [_describe(key, stored, wanted) for key in COMPARED
                if key not in ignored and stored.get(key) != wanted[key]]
    if not problems and array.shape[0] != stored.get("items"):
        problems.append(f"holds {array.shape[0]} rows, but {record_path(npy).name} says {stored.get('items')}: "
                        "it was changed after it was written")
    return problems
