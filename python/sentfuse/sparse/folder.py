"""Reading sentence-transformers sparse model folders (SparseEncoder) into routes sentfuse can run.

A route is what one task's texts go through: a masked-LM backbone followed by SpladePooling, or a
SparseStaticEmbedding (one fixed weight per vocabulary token, for inference-free query encoders). A plain
SPLADE folder has one route; a Router folder maps tasks ("query", "document") to routes, as
sentence-transformers' Router does.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model.modules import TRANSFORMER_CONFIG_FILES, ModelFolderError, read_json, read_st_config

SPLADE_ACTIVATIONS = ("relu", "log1p_relu")
SPLADE_POOLINGS = ("max", "sum")
SIMILARITY_FN_NAMES = ("dot", "cosine", "euclidean", "manhattan")
DISTANCE_NORMS = {"euclidean": 2.0, "manhattan": 1.0}  # scored as the negative distance, as sentence-transformers does


@dataclass
class SpladeRoute:
    """Masked-LM backbone (Hugging Face folder) + SpladePooling."""

    path: Path
    activation: str = "relu"
    pooling: str = "max"
    max_seq_length: int | None = None
    do_lower_case: bool = False


@dataclass
class StaticRoute:
    """SparseStaticEmbedding: a text's vector holds weight[token] for each distinct token it contains."""

    path: Path
    weight: torch.Tensor  # [V] fp32


@dataclass
class SparseFolder:
    path: Path
    routes: dict[str, SpladeRoute | StaticRoute]
    default_route: str | None = None
    route_mappings: dict[tuple[str | None, str | None], str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    max_active_dims: int | None = None


def _object(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path.name} in {path.parent} must hold a JSON object, got {type(value).__name__}")
    return value


def _kind(type_name: Any, where: str) -> str:
    """The module class name, whatever package path sentence-transformers saved it under."""
    if not isinstance(type_name, str):
        raise ModelFolderError(f"{where}: type must be a string, got {type_name!r}")
    return type_name.rpartition(".")[2]


def _subfolder(folder: Path, rel: Any, where: str) -> Path:
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ModelFolderError(f"{where}: path {rel!r} must be a folder inside the model folder")
    return folder / rel


def _splade_backbone(folder: Path, kind: str) -> SpladeRoute:
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"config.json not found in {folder} (the {kind} module's Hugging Face model)")
    route = SpladeRoute(path=folder)
    for name in TRANSFORMER_CONFIG_FILES:
        if (folder / name).is_file():
            config = _object(folder / name)
            task = config.get("transformer_task", "fill-mask" if kind == "MLMTransformer" else "feature-extraction")
            if task != "fill-mask":
                raise ModelFolderError(
                    f"{folder / name}: a SparseEncoder backbone must have transformer_task 'fill-mask' (a masked-LM "
                    f"head feeding SpladePooling), got {task!r}"
                )
            max_len = config.get("max_seq_length")
            if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= 0):
                raise ModelFolderError(f"{folder / name}: max_seq_length must be a positive integer, got {max_len!r}")
            route.max_seq_length = max_len
            route.do_lower_case = bool(config.get("do_lower_case", False))
            break
    return route


def _splade_pooling(route: SpladeRoute, folder: Path) -> None:
    path = folder / "config.json"
    config = _object(path)
    route.pooling = config.get("pooling_strategy", "max")
    route.activation = config.get("activation_function", "relu")
    if route.pooling not in SPLADE_POOLINGS:
        raise ModelFolderError(f"{path}: pooling_strategy must be one of {SPLADE_POOLINGS}, got {route.pooling!r}")
    if route.activation not in SPLADE_ACTIVATIONS:
        raise ModelFolderError(
            f"{path}: activation_function must be one of {SPLADE_ACTIVATIONS}, got {route.activation!r}"
        )


def _static_embedding(folder: Path) -> StaticRoute:
    config = _object(folder / "config.json") if (folder / "config.json").is_file() else {}
    if isinstance(config.get("path"), str) and config["path"].endswith(".json"):
        raise ModelFolderError(f"{folder}: SparseStaticEmbedding from an IDF json ({config['path']}) is not supported; "
                               "save the model with sentence-transformers to write its weights")
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ModelFolderError(f"no model.safetensors or pytorch_model.bin in {folder} (SparseStaticEmbedding weights)")
    weight = state.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise ModelFolderError(f"{folder}: SparseStaticEmbedding weights must hold a 1-D 'weight', found {list(state)}")
    return StaticRoute(path=folder, weight=weight.float())


def _route(folder: Path, entries: list[tuple[str, Path]], where: str) -> SpladeRoute | StaticRoute:
    """One route from its modules in order: [SparseStaticEmbedding] or [Transformer/MLMTransformer, SpladePooling]."""
    kinds = [kind for kind, _ in entries]
    if kinds == ["SparseStaticEmbedding"]:
        return _static_embedding(entries[0][1])
    if kinds in (["Transformer", "SpladePooling"], ["MLMTransformer", "SpladePooling"]):
        route = _splade_backbone(entries[0][1], kinds[0])
        _splade_pooling(route, entries[1][1])
        return route
    raise ModelFolderError(
        f"{where}: modules {kinds} are not supported; sentfuse runs SPLADE (Transformer with a masked-LM head + "
        "SpladePooling) and SparseStaticEmbedding routes"
    )


def _router(folder: Path) -> tuple[dict[str, SpladeRoute | StaticRoute], str | None, dict]:
    path = folder / "router_config.json"
    config = _object(path if path.is_file() else folder / "config.json")
    types, structure = config.get("types"), config.get("structure")
    if not isinstance(types, dict) or not isinstance(structure, dict) or not structure:
        raise ModelFolderError(f"{path}: a Router config needs 'types' and 'structure' objects")
    routes = {}
    for name, module_ids in structure.items():
        entries = [(_kind(types.get(m), f"{path}, module {m!r}"), _subfolder(folder, m, str(path))) for m in module_ids]
        routes[name] = _route(folder, entries, f"{path}, route {name!r}")
    parameters = config.get("parameters") or {}
    default = parameters.get("default_route")
    if default is None and parameters.get("allow_empty_key", True):
        default = next(iter(routes))
    if default is not None and default not in routes:
        raise ModelFolderError(f"{path}: default_route {default!r} is not one of the routes {list(routes)}")
    mappings = {}
    for key, target in (parameters.get("route_mappings") or {}).items():
        task, modality = ast.literal_eval(key)
        mappings[(task, modality)] = target
    return routes, default, mappings


def _masked_lm(folder: Path) -> bool:
    """Whether folder's config.json names a *ForMaskedLM architecture."""
    path = folder / "config.json"
    if not path.is_file():
        return False
    architectures = read_json(path).get("architectures") or []
    return any(isinstance(a, str) and a.endswith("ForMaskedLM") for a in architectures)


def load_sparse_folder(folder: Path) -> SparseFolder:
    """Read a sentence-transformers SparseEncoder folder, or a plain Hugging Face masked-LM folder (SPLADE with
    max pooling and relu on it, as sentence-transformers builds one); any other layout raises ModelFolderError."""
    result = SparseFolder(path=folder, routes={}, default_route="default")
    if not (folder / "modules.json").is_file() and _masked_lm(folder):
        result.routes = {"default": SpladeRoute(path=folder)}
    else:
        entries = read_json(folder / "modules.json", " (a sentence-transformers SparseEncoder folder)")
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise ModelFolderError(f"modules.json in {folder} must hold a non-empty JSON list of modules")
        where = f"modules.json in {folder}"
        modules = [(_kind(e.get("type"), where), _subfolder(folder, e.get("path", ""), where)) for e in entries]
        if [kind for kind, _ in modules] == ["Router"]:
            result.routes, result.default_route, result.route_mappings = _router(modules[0][1])
        else:
            result.routes = {"default": _route(folder, modules, where)}
    config = read_st_config(folder, SIMILARITY_FN_NAMES)
    result.prompts, result.default_prompt_name = config.prompts, config.default_prompt_name
    result.similarity_fn_name, result.max_active_dims = config.similarity_fn_name, config.max_active_dims
    return result
    entries = read_json(folder / "modules.json", " (a sentence-transformers SparseEncoder folder)")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ModelFolderError(f"modules.json in {folder} must hold a non-empty JSON list of modules")
    where = f"modules.json in {folder}"
    modules = [(_kind(e.get("type"), where), _subfolder(folder, e.get("path", ""), where)) for e in entries]
    result = SparseFolder(path=folder, routes={})
    if [kind for kind, _ in modules] == ["Router"]:
        result.routes, result.default_route, result.route_mappings = _router(modules[0][1])
    else:
        result.routes = {"default": _route(folder, modules, where)}
        result.default_route = "default"
    config = read_st_config(folder, SIMILARITY_FN_NAMES)
    result.prompts, result.default_prompt_name = config.prompts, config.default_prompt_name
    result.similarity_fn_name, result.max_active_dims = config.similarity_fn_name, config.max_active_dims
    return result
