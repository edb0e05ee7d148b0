"""Reading sentence-transformers MultiVectorEncoder folders: the backbone Transformer (with its per-task
lengths and ColBERT query expansion), then token-level Dense projections, the MultiVectorMask (skiplist) and
Normalize, in modules.json order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.modules import (
    TRANSFORMER_CONFIG_FILES,
    DenseModule,
    ModelFolderError,
    NormalizeModule,
    TransformerModule,
    load_dense,
    load_transformer,
    read_json,
    read_st_config,
)

SIMILARITY_FN_NAMES = ("maxsim", "meanmaxsim")
EXPANSION_STRATEGIES = ("fixed", "min")


@dataclass
class QueryExpansion:
    """ColBERT query expansion: queries are padded to `length` tokens and the pads become `token` (default the
    tokenizer's mask token), scored but (unless attend) not attended to. "fixed" also truncates to `length`."""

    strategy: str
    length: int
    attend: bool = False
    token: str | None = None


@dataclass
class TokenMask:
    """MultiVectorMask: token ids dropped from scoring for the listed tasks (no task counts as "document")."""

    skiplist_words: list[str] = field(default_factory=list)
    skiplist_tasks: list[str] = field(default_factory=lambda: ["document"])
    keep_only_token_ids: list[int] | None = None


@dataclass
class MultiVectorFolder:
    path: Path
    transformer: TransformerModule
    head: list[DenseModule | TokenMask | NormalizeModule]  # after the backbone, in order
    query_length: int | None = None
    document_length: int | None = None
    query_expansion: QueryExpansion | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    truncate_dim: int | None = None


def _object(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _positive(value: Any, name: str, where: Path) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ModelFolderError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def _expansion(value: Any, where: Path) -> QueryExpansion | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("strategy") not in EXPANSION_STRATEGIES:
        raise ModelFolderError(f"{where}: query_expansion must have strategy in {EXPANSION_STRATEGIES}, got {value!r}")
    length = _positive(value.get("length"), "query_expansion['length']", where)
    if length is None:
        raise ModelFolderError(f"{where}: query_expansion needs a 'length'")
    return QueryExpansion(value["strategy"], length, bool(value.get("attend", False)), value.get("token"))


def _token_mask(folder: Path) -> TokenMask:
    config = _object(folder / "config.json") if (folder / "config.json").is_file() else {}
    tasks = config.get("skiplist_tasks") or ["document"]
    return TokenMask(list(config.get("skiplist_words") or []), [tasks] if isinstance(tasks, str) else list(tasks),
                     config.get("keep_only_token_ids"))


def _normalize(folder: Path) -> NormalizeModule:
    path = folder / "config.json"
    if path.is_file() and _object(path).get("module_input_name", "token_embeddings") != "token_embeddings":
        raise ModelFolderError(f"{path}: a multi-vector Normalize must act on token_embeddings")
    return NormalizeModule()


def _head_module(kind: str, sub: Path, where: str) -> DenseModule | TokenMask | NormalizeModule:
    if kind == "Dense":
        return load_dense(sub, features="token_embeddings")
    if kind == "MultiVectorMask":
        return _token_mask(sub)
    if kind == "Normalize":
        return _normalize(sub)
    raise ModelFolderError(f"{where}: module type {kind!r} is not supported in a multi-vector model (sentfuse runs "
                           "Transformer, Dense, MultiVectorMask and Normalize; token pooling is not supported yet)")


def load_multi_vector_folder(folder: Path) -> MultiVectorFolder:
    """Read a MultiVectorEncoder folder (modules.json, config_sentence_transformers.json)."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        raise ModelFolderError(f"{folder} is not a MultiVectorEncoder folder: modules.json not found")
    entries = read_json(modules_path)
    if not isinstance(entries, list) or not entries:
        raise ModelFolderError(f"{modules_path} must hold a non-empty JSON list of modules")
    head = []
    for i, entry in enumerate(entries):
        where = f"{modules_path}, entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ModelFolderError(f"{where}: each module needs a 'type'")
        rel = entry.get("path", "")
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ModelFolderError(f"{where}: path {rel!r} must be a folder inside the model folder")
        kind = entry["type"].rpartition(".")[2]
        if (i == 0) != (kind == "Transformer"):
            raise ModelFolderError(f"{where}: the Transformer must be the first module and only the first")
        if i > 0:
            head.append(_head_module(kind, folder / rel, where))
    transformer_dir = folder / entries[0].get("path", "")
    mv = MultiVectorFolder(folder, load_transformer(transformer_dir), head)
    for name in TRANSFORMER_CONFIG_FILES:
        path = transformer_dir / name
        if path.is_file():
            config = _object(path)
            mv.query_length = _positive(config.get("query_length"), "query_length", path)
            mv.document_length = _positive(config.get("document_length"), "document_length", path)
            mv.query_expansion = _expansion(config.get("query_expansion"), path)
            break
    st = read_st_config(folder, SIMILARITY_FN_NAMES)
    mv.prompts, mv.default_prompt_name, mv.similarity_fn_name = st.prompts, st.default_prompt_name, st.similarity_fn_name
    mv.truncate_dim = st.truncate_dim
    return mv
