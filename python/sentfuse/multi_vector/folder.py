"""Reading sentence-transformers MultiVectorEncoder folders: the backbone Transformer (with its per-task
lengths and ColBERT query expansion), then token-level Dense projections, the MultiVectorMask (skiplist) and
Normalize, in modules.json order.

PyLate's checkpoints (most ColBERT models on the hub) are read as sentence-transformers reads them: their
settings sit at the top of config_sentence_transformers.json (query_prefix / document_prefix, query_length,
document_length, do_query_expansion, attend_to_expansion_tokens, skiplist_words) and become the prompts, the
lengths and the query expansion; a save that lists only [Transformer, Dense] gets the skiplist and the token
Normalize PyLate applied inline. Stanford-NLP ColBERT checkpoints (config.json architectures HF_ColBERT, the
projection as linear.weight beside the encoder's weights, settings in artifact.metadata; colbertv2.0's layout)
are built as sentence-transformers builds them.
"""

from __future__ import annotations

import string
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
    read_tensor,
)

SIMILARITY_FN_NAMES = ("maxsim", "meanmaxsim")
EXPANSION_STRATEGIES = ("fixed", "min")
EXPANSION_KEYS = {"strategy", "length", "attend", "token"}
# Top-level keys of config_sentence_transformers.json that mark a PyLate (or Stanford-style) save.
PYLATE_LENGTHS = ("query_length", "document_length", "query_expansion")
PYLATE_MARKERS = (*PYLATE_LENGTHS, "do_query_expansion", "attend_to_expansion_tokens", "attend_to_mask_tokens",
                  "query_prefix", "document_prefix", "skiplist_words")
COLBERT_QUERY_LENGTH = 32  # ColBERT's query length where a PyLate save names none


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
    # Prefix tokens a PyLate save inserted as tokens ([unused0], "[Q] "): the prompts now carry them as text, so
    # the tokenizer must keep each one piece (MultiVectorEncoder registers them as special tokens).
    prefix_tokens: list[str] = field(default_factory=list)


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
    unknown = sorted(set(value) - EXPANSION_KEYS)
    if unknown:
        raise ModelFolderError(f"{where}: query_expansion has unknown keys {unknown}; it takes {sorted(EXPANSION_KEYS)}")
    length = _positive(value.get("length"), "query_expansion['length']", where)
    if length is None:
        raise ModelFolderError(f"{where}: query_expansion needs a 'length'")
    if not isinstance(value.get("attend", False), bool):
        raise ModelFolderError(f"{where}: query_expansion['attend'] must be a bool, got {value['attend']!r}")
    return QueryExpansion(value["strategy"], length, value.get("attend", False), value.get("token"))


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


def _stanford_colbert(folder: Path) -> MultiVectorFolder:
    """A Stanford-NLP ColBERT checkpoint: the encoder, the root linear.weight as a bias-free projection, the
    punctuation skiplist (unless artifact.metadata turns mask_punctuation off) and Normalize; the [unused0] /
    [unused1] markers (or the metadata's) as prompts, queries expanded to query_maxlen (32) with [MASK]."""
    import torch

    weight = read_tensor(folder, "linear.weight")  # the projection alone: the encoder's weights load with it
    if weight is None:
        raise ModelFolderError(f"{folder}: a HF_ColBERT checkpoint needs its projection as linear.weight")
    out_features, in_features = weight.shape
    dense = DenseModule(in_features, out_features, bias=False, activation=torch.nn.Identity())
    dense.load_state_dict({"linear.weight": weight})
    path = folder / "artifact.metadata"
    metadata = _object(path) if path.is_file() else {}
    markers = {"query": (metadata.get("query_token_id") or "[unused0]") + " ",
               "document": (metadata.get("doc_token_id") or "[unused1]") + " "}
    mask = TokenMask(list(string.punctuation) if metadata.get("mask_punctuation", True) else [])
    mv = MultiVectorFolder(folder, load_transformer(folder), [dense.eval(), mask, NormalizeModule()],
                           prompts=dict(markers), prefix_tokens=list(markers.values()))
    mv.document_length = _positive(metadata.get("doc_maxlen"), "doc_maxlen", path)
    length = _positive(metadata.get("query_maxlen"), "query_maxlen", path) or COLBERT_QUERY_LENGTH
    mv.query_expansion = QueryExpansion("fixed", length, bool(metadata.get("attend_to_mask_tokens")))
    return mv


def _architectures(folder: Path) -> list[str]:
    path = folder / "config.json"
    return list(_object(path).get("architectures") or []) if path.is_file() else []


def load_multi_vector_folder(folder: Path) -> MultiVectorFolder:
    """Read a MultiVectorEncoder folder (modules.json, config_sentence_transformers.json), or a Stanford-NLP
    ColBERT checkpoint."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file() and "HF_ColBERT" in _architectures(folder):
        return _stanford_colbert(folder)
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
    saved: set[str] = set()  # the length settings the Transformer's own config names (they win over PyLate's)
    for name in TRANSFORMER_CONFIG_FILES:
        path = transformer_dir / name
        if path.is_file():
            config = _object(path)
            saved = {key for key in PYLATE_LENGTHS if key in config}
            mv.query_length = _positive(config.get("query_length"), "query_length", path)
            mv.document_length = _positive(config.get("document_length"), "document_length", path)
            mv.query_expansion = _expansion(config.get("query_expansion"), path)
            break
    st_path = folder / "config_sentence_transformers.json"
    raw = _object(st_path) if st_path.is_file() else {}
    similarity = raw.get("similarity_fn_name")
    legacy_similarity = isinstance(similarity, str) and similarity not in SIMILARITY_FN_NAMES
    st = read_st_config(folder, SIMILARITY_FN_NAMES + ((similarity,) if legacy_similarity else ()))
    mv.prompts, mv.default_prompt_name = st.prompts, st.default_prompt_name
    # A similarity a multi-vector model cannot use (PyLate saved "MaxSim", older ones "cosine") leaves MaxSim,
    # as sentence-transformers ignores it.
    mv.similarity_fn_name = None if legacy_similarity else st.similarity_fn_name
    mv.truncate_dim = st.truncate_dim
    if any(key in raw for key in PYLATE_MARKERS) or raw.get("model_type") == "ColBERT":
        _pylate_settings(mv, raw, saved, st_path)
    expansion = mv.query_expansion
    if expansion is not None and mv.query_length is not None and mv.query_length < expansion.length:
        raise ModelFolderError(f"{folder}: query_length {mv.query_length} is below query_expansion's length "
                               f"{expansion.length}, the width every query is expanded to")
    return mv


def _pylate_settings(mv: MultiVectorFolder, raw: dict[str, Any], saved: set[str], where: Path) -> None:
    """A PyLate save's top-level settings into mv (see the module's docstring)."""
    for key, task in (("query_prefix", "query"), ("document_prefix", "document")):
        if key in raw:
            prefix = raw[key] or ""
            if not isinstance(prefix, str):
                raise ModelFolderError(f"{where}: {key} must be a string, got {prefix!r}")
            mv.prompts[task] = prefix + mv.prompts.get(task, "").removeprefix(prefix)
            if prefix.strip():
                mv.prefix_tokens.append(prefix)
    lengths = {key: raw[key] for key in PYLATE_LENGTHS if key in raw and (raw[key] is not None or key == "query_expansion")}
    if "query_expansion" not in lengths:  # PyLate's flat flags; expansion on (to a fixed length) unless turned off
        if raw.get("do_query_expansion") is False:
            lengths["query_expansion"] = None
        else:
            attend = raw.get("attend_to_expansion_tokens", raw.get("attend_to_mask_tokens"))
            length = lengths.pop("query_length", None) or COLBERT_QUERY_LENGTH
            lengths["query_expansion"] = {"strategy": "fixed", "attend": bool(attend), "length": length}
    if "query_length" in lengths and "query_length" not in saved:
        mv.query_length = _positive(lengths["query_length"], "query_length", where)
    if "document_length" in lengths and "document_length" not in saved:
        mv.document_length = _positive(lengths["document_length"], "document_length", where)
    if "query_expansion" not in saved:
        mv.query_expansion = _expansion(lengths["query_expansion"], where)
    # PyLate masked and normalized inline and listed only [Transformer, Dense]: the modules it did not list, as
    # sentence-transformers adds them (its punctuation skiplist unless the save names one).
    if raw.get("model_type") != "MultiVectorEncoder" and not any(
            isinstance(m, (TokenMask, NormalizeModule)) for m in mv.head):
        words = raw.get("skiplist_words")
        if words is None:
            words = list(string.punctuation) if raw.get("model_type") == "ColBERT" or mv.prefix_tokens else []
        mv.head += [TokenMask(list(words)), NormalizeModule()]
