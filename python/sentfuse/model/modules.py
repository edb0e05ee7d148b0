"""Reading model folders: sentence-transformers pipelines (modules.json) and plain Hugging Face models.

Only what inference needs is read: the backbone folder and its tokenizer settings (or a static-embedding
table and its tokenizer.json), the pooling modes, Dense projections and whether a Normalize module sits
at the end. Every file is checked while loading, so a broken folder fails with the file's name before
any model weights are touched.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

# sentence-transformers' legacy boolean keys, in the order it concatenates the modes they switch on.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

# Older sentence-transformers releases named the Transformer's config file after the architecture.
TRANSFORMER_CONFIG_FILES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)

SIMILARITY_FN_NAMES = ("cosine", "dot", "euclidean", "manhattan")


def merge_prompts(prompts: Any, folder_prompts: dict[str, str],
                  always: tuple[str, ...] = ("query", "document")) -> dict[str, str]:
    """sentence-transformers' prompt precedence: the caller's prompts, then the folder's, and the `always`
    names present (empty unless set) so that encode_query never falls back to default_prompt_name (a
    cross-encoder has none of these)."""
    if prompts is not None and (
        not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())
    ):
        raise TypeError("prompts must be a dict mapping prompt names to prompt strings")
    merged: dict[str, str | None] = {**dict.fromkeys(always), **(prompts or {})}
    for name, text in folder_prompts.items():
        if merged.get(name) is None:
            merged[name] = text
    return {k: v or "" for k, v in merged.items()}


def check_prompt_name(name: str, prompts: dict[str, str], what: str = "prompt_name") -> None:
    if name not in prompts:
        raise ValueError(f"{what} {name!r} is not one of the prompts {list(prompts)}")


def choose_prompt(prompts: dict[str, str], default_prompt_name: str | None, prompt: str | None,
                  prompt_name: str | None) -> str | None:
    """The prompt text of one encode call, as sentence-transformers picks it: prompt as given, else the
    named prompt, else the default prompt (None: no prompt)."""
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if prompt_name is not None:
            logger.warning("both prompt and prompt_name given; using prompt and ignoring prompt_name")
        return prompt
    if prompt_name is not None:
        check_prompt_name(prompt_name, prompts)
        return prompts[prompt_name]
    return prompts.get(default_prompt_name) if default_prompt_name is not None else None


def check_similarity_fn_name(value: Any, names: tuple[str, ...]) -> str:
    """value when it is one of the encoder's similarity function names."""
    if value not in names:
        raise ValueError(f"similarity_fn_name must be one of {', '.join(names)}, got {value!r}")
    return value


class ModelFolderError(ValueError):
    """A model folder is missing a file, or one of its files cannot be used."""


@dataclass
class TransformerModule:
    """The backbone: a Hugging Face model folder plus the tokenizer settings sentence-transformers keeps."""

    path: Path
    max_seq_length: int | None = None
    do_lower_case: bool = False
    # Whether its sentence-transformers config names the modalities (sentence-transformers 6 writes it); without,
    # sentence-transformers infers them, and renders inputs through the tokenizer's chat template if it has one.
    modality_pinned: bool = False


@dataclass
class PoolingModule:
    """Token embeddings -> sentence embedding; several modes are concatenated in the listed order."""

    modes: tuple[str, ...]
    include_prompt: bool = True


@dataclass
class NormalizeModule:
    """L2 normalization of the sentence embedding."""


class DenseModule(nn.Module):
    """A linear projection of the sentence embedding followed by an activation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        activation: nn.Module,
        use_residual: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation
        self.use_residual = use_residual
        if use_residual and in_features != out_features:
            self.residual = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in_features] -> [N, out_features]
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


@dataclass
class StaticEmbeddingModule:
    """The backbone of a static-embedding model: a token-embedding table whose rows are averaged over a
    text's tokens, no transformer (sentence-transformers' StaticEmbedding, model2vec folders). path holds
    tokenizer.json, run as saved: no special tokens, its own truncation (model.static runs it)."""

    path: Path
    table: torch.Tensor = field(repr=False)  # [vocab, dim], model2vec's token mapping and weights folded in


Module = TransformerModule | StaticEmbeddingModule | PoolingModule | DenseModule | NormalizeModule


@dataclass
class ModelFolder:
    """Everything read from a model folder, in pipeline order."""

    path: Path
    modules: list[Module]
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    truncate_dim: int | None = None

    @property
    def transformer(self) -> TransformerModule | StaticEmbeddingModule:
        return self.modules[0]  # load_model_folder guarantees the pipeline starts with the backbone


def read_json(path: Path, what: str = "") -> Any:
    """Parse a JSON file, naming the file in any error."""
    if not path.is_file():
        raise ModelFolderError(f"{path.name} not found in {path.parent}{what}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{path.name} in {path.parent} is not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path.name} in {path.parent} cannot be read ({e})") from None


def _expect_object(value: Any, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path.name} in {path.parent} must hold a JSON object, got {type(value).__name__}")
    return value


def read_json_object(path: Path) -> dict[str, Any]:
    """read_json for a file that must hold a JSON object."""
    return _expect_object(read_json(path), path)


def parse_pooling_config(config: dict[str, Any], where: str) -> PoolingModule:
    """Pooling config in either form: `pooling_mode` (str or list) or the legacy `pooling_mode_*` booleans."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else raw
        if not isinstance(modes, (list, tuple)) or not modes or not all(isinstance(m, str) for m in modes):
            raise ModelFolderError(f"{where}: pooling_mode must be a mode name or a non-empty list of them, got {raw!r}")
        modes = tuple(modes)
    else:
        modes = tuple(mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key, False))
        modes = modes or ("mean",)  # sentence-transformers' default when no flag is set
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ModelFolderError(f"{where}: unknown pooling mode {mode!r}; known modes: {', '.join(POOLING_MODES)}")
    return PoolingModule(modes=modes, include_prompt=bool(config.get("include_prompt", True)))


def _resolve_activation(name: str | None, where: str) -> nn.Module:
    if name is None:
        return nn.Tanh()  # sentence-transformers' Dense default
    activation = torch_activation(name, where)
    if activation is None:
        logger.warning("%s: activation %r is not a torch class; using Tanh as sentence-transformers does", where, name)
        return nn.Tanh()
    return activation


def torch_activation(name: str, where: str) -> nn.Module | None:
    """An instance of the torch.nn.Module class a config names by its dotted path; None when the path is
    outside torch. Only torch.nn classes are built: a config must not be able to run arbitrary code."""
    module_name, _, class_name = name.rpartition(".")
    if not module_name.startswith("torch."):
        return None
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ModelFolderError(f"{where}: activation_function {name!r} does not exist in this torch") from None
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ModelFolderError(f"{where}: activation_function {name!r} is not a torch.nn.Module class")
    return cls()


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    safetensors_file = folder / "model.safetensors"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise ModelFolderError(f"no model.safetensors or pytorch_model.bin in {folder}")


def read_tensor(folder: Path, name: str) -> torch.Tensor | None:
    """One tensor of folder's weights (None where it has no tensor of that name): read alone from
    model.safetensors, without loading the rest."""
    safetensors_file = folder / "model.safetensors"
    if not safetensors_file.is_file():
        return read_state_dict(folder).get(name)
    from safetensors import safe_open

    with safe_open(str(safetensors_file), framework="pt") as f:
        return f.get_tensor(name) if name in f.keys() else None


def load_dense(folder: Path, features: str = "sentence_embedding") -> DenseModule:
    """A Dense folder that projects `features` (sentence_embedding, or token_embeddings in multi-vector models)."""
    config_path = folder / "config.json"
    config = _expect_object(read_json(config_path), config_path)
    where = str(config_path)
    for key in ("in_features", "out_features"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise ModelFolderError(f"{where}: {key} must be a positive integer, got {config.get(key)!r}")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, features) not in (features, None):
            raise ModelFolderError(f"{where}: Dense on {config[key]!r} is not supported here, only {features}")
    dense = DenseModule(
        config["in_features"],
        config["out_features"],
        bias=bool(config.get("bias", True)),
        activation=_resolve_activation(config.get("activation_function"), where),
        use_residual=bool(config.get("use_residual", False)),
    )
    state = read_state_dict(folder)
    expected = {name: tuple(p.shape) for name, p in dense.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        raise ModelFolderError(f"Dense weights in {folder} do not match config.json: expected {expected}, found {found}")
    dense.load_state_dict(state)
    return dense.eval()


def _model2vec_table(state: dict[str, torch.Tensor], where: Path) -> torch.Tensor:
    """One row per token id from model2vec's tensors: row t = embeddings[mapping[t]] * weights[t], each part
    optional, at least float32 where token weights scale the rows (what sentence-transformers averages)."""
    table = state["embeddings"]
    mapping, weights = state.get("mapping"), state.get("weights")
    if mapping is not None:
        if mapping.dim() != 1 or mapping.is_floating_point():
            raise ModelFolderError(f"{where}: model2vec 'mapping' must be a 1-D integer tensor, got {mapping.dtype} "
                                   f"{tuple(mapping.shape)}")
        if len(mapping) and not 0 <= int(mapping.min()) <= int(mapping.max()) < len(table):
            raise ModelFolderError(f"{where}: model2vec 'mapping' points outside the {len(table)} embeddings")
        table = table[mapping.long()]
    if weights is not None:
        if weights.shape != (len(table),):
            raise ModelFolderError(f"{where}: model2vec 'weights' must hold one weight per token ({len(table)}), "
                                   f"got shape {tuple(weights.shape)}")
        dtype = torch.promote_types(table.dtype, torch.float32)
        table = (table.to(dtype) * weights[:, None]).to(dtype)
    return table.contiguous()


def load_static_embedding(folder: Path) -> StaticEmbeddingModule:
    """A StaticEmbedding's folder: tokenizer.json and the table, under sentence-transformers' key
    'embedding.weight' or model2vec's 'embeddings' (with optional 'mapping' and 'weights')."""
    if not (folder / "tokenizer.json").is_file():
        raise ModelFolderError(f"tokenizer.json not found in {folder} (the StaticEmbedding module's tokenizer)")
    state = read_state_dict(folder)
    if "embedding.weight" in state:
        table = state["embedding.weight"]
    elif "embeddings" in state:
        table = _model2vec_table(state, folder)
    else:
        raise ModelFolderError(f"{folder}: StaticEmbedding weights need 'embedding.weight' (sentence-transformers) "
                               f"or 'embeddings' (model2vec), found {sorted(state)}")
    if table.dim() != 2 or not table.is_floating_point():
        raise ModelFolderError(f"{folder}: the StaticEmbedding table must be a 2-D floating-point tensor, got "
                               f"{table.dtype} {tuple(table.shape)}")
    return StaticEmbeddingModule(path=folder, table=table)


def _model2vec_folder(folder: Path) -> ModelFolder | None:
    """A bare model2vec folder (config.json with model_type "model2vec", no modules.json) as StaticEmbedding,
    then Normalize where its config asks for normalized embeddings (as model2vec's encode does); None for
    any other folder."""
    config = read_json(folder / "config.json")
    if not isinstance(config, dict) or config.get("model_type") != "model2vec":
        return None
    modules: list[Module] = [load_static_embedding(folder)]
    if config.get("normalize", False):
        modules.append(NormalizeModule())
    return ModelFolder(path=folder, modules=modules)


def load_transformer(folder: Path, task: str = "feature-extraction", output: str = "last_hidden_state") -> TransformerModule:
    """The backbone in folder; its sentence-transformers config (if any) must run `task` with forward()
    giving `output` (a cross-encoder's is sequence-classification giving logits)."""
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"config.json not found in {folder} (the Transformer module's Hugging Face model)")
    module = TransformerModule(path=folder)
    for name in TRANSFORMER_CONFIG_FILES:
        path = folder / name
        if path.is_file():
            config = _expect_object(read_json(path), path)
            max_len = config.get("max_seq_length")
            if max_len is not None and (not isinstance(max_len, int) or max_len <= 0):
                raise ModelFolderError(f"{path}: max_seq_length must be a positive integer, got {max_len!r}")
            module.max_seq_length = max_len
            module.do_lower_case = bool(config.get("do_lower_case", False))
            module.modality_pinned = module.modality_pinned or "modality_config" in config
            found = config.get("transformer_task", "feature-extraction")
            text = (config.get("modality_config") or {}).get("text", {})
            if found != task or text.get("method", "forward") != "forward" or text.get(
                "method_output_name", output
            ) not in (output, [output]):
                raise ModelFolderError(
                    f"{path}: only {task} backbones whose forward() gives {output} are "
                    f"supported here (transformer_task={found!r}, text modality={text!r})"
                )
            break
    return module


def _module_kind(type_name: Any, where: str) -> str:
    if not isinstance(type_name, str):
        raise ModelFolderError(f"{where}: type must be a string, got {type_name!r}")
    kind = type_name.rpartition(".")[2]
    if kind not in ("Transformer", "StaticEmbedding", "Pooling", "Dense", "Normalize"):
        raise ModelFolderError(
            f"{where}: module type {type_name!r} is not supported (sentfuse runs Transformer, StaticEmbedding, "
            "Pooling, Dense, Normalize)"
        )
    return kind


ST_CONFIG = "config_sentence_transformers.json"
# Module types only a SparseEncoder folder holds (sentence-transformers' SPLADE and inference-free heads).
SPARSE_MODULE_TYPES = ("SpladePooling", "SparseStaticEmbedding", "MLMTransformer")


@dataclass
class STConfig:
    """The fields of config_sentence_transformers.json an encoder honours (the rest is version metadata).

    truncate_dim is a SentenceTransformer field and max_active_dims a SparseEncoder one, as
    sentence-transformers writes them; each encoder reads its own.
    """

    model_type: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    truncate_dim: int | None = None
    max_active_dims: int | None = None


def _optional_positive(config: dict[str, Any], key: str, path: Path) -> int | None:
    value = config.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ModelFolderError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def read_st_config(folder: Path, similarity_names: tuple[str, ...]) -> STConfig:
    """folder's config_sentence_transformers.json (dense or sparse: similarity_names are the encoder's),
    checked; every field None or empty when the file is absent."""
    path = folder / ST_CONFIG
    if not path.is_file():
        return STConfig()
    config = _expect_object(read_json(path), path)
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ModelFolderError(f"{path}: prompts must map names to prompt strings")
    default_prompt_name = config.get("default_prompt_name")
    if default_prompt_name is not None and not isinstance(default_prompt_name, str):
        raise ModelFolderError(f"{path}: default_prompt_name must be a string, got {default_prompt_name!r}")
    similarity = config.get("similarity_fn_name")
    if similarity is not None and similarity not in similarity_names:
        raise ModelFolderError(f"{path}: similarity_fn_name {similarity!r} is not one of {similarity_names}")
    model_type = config.get("model_type")
    return STConfig(model_type if isinstance(model_type, str) else None, dict(prompts), default_prompt_name,
                    similarity, _optional_positive(config, "truncate_dim", path),
                    _optional_positive(config, "max_active_dims", path))


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def is_sparse_folder(folder: Path) -> bool:
    """Whether folder holds a sentence-transformers SparseEncoder, by its model_type or its modules (unreadable
    files count as not sparse: the loader reports them)."""
    config = _json_or_none(folder / ST_CONFIG)
    if isinstance(config, dict) and config.get("model_type") == "SparseEncoder":
        return True
    entries = _json_or_none(folder / "modules.json")
    return isinstance(entries, list) and any(
        isinstance(e, dict) and str(e.get("type", "")).rpartition(".")[2] in SPARSE_MODULE_TYPES for e in entries)


def _sentence_level(modules: list[Module]) -> bool:
    """Whether the modules so far give sentence embeddings: a Pooling, or a StaticEmbedding's bag."""
    return any(isinstance(m, (PoolingModule, StaticEmbeddingModule)) for m in modules)


def load_model_folder(folder: Path) -> ModelFolder:
    """Read a sentence-transformers folder, or treat a plain Hugging Face folder as Transformer + mean pooling
    (a bare model2vec folder as its StaticEmbedding)."""
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        if not (folder / "config.json").is_file():
            raise ModelFolderError(
                f"{folder} is not a model folder: it has neither modules.json (sentence-transformers) "
                "nor config.json (Hugging Face)"
            )
        return _model2vec_folder(folder) or ModelFolder(
            path=folder, modules=[load_transformer(folder), PoolingModule(modes=("mean",))]
        )

    if is_sparse_folder(folder):
        raise ModelFolderError(f"{folder} holds a SparseEncoder (SPLADE) model: load it with sentfuse.SparseEncoder")
    entries = read_json(modules_path)
    if not isinstance(entries, list) or not entries:
        raise ModelFolderError(f"modules.json in {folder} must hold a non-empty JSON list of modules")
    modules: list[Module] = []
    for i, entry in enumerate(entries):
        where = f"modules.json in {folder}, entry {i}"
        if not isinstance(entry, dict) or "type" not in entry:
            raise ModelFolderError(f"{where}: each module needs a 'type'")
        rel = entry.get("path", "")
        if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ModelFolderError(f"{where}: path {rel!r} must be a folder inside the model folder")
        sub = folder / rel
        kind = _module_kind(entry["type"], where)
        if kind == "Transformer":
            if i != 0:
                raise ModelFolderError(f"{where}: the Transformer must be the first module")
            modules.append(load_transformer(sub))
        elif kind == "StaticEmbedding":
            if i != 0:
                raise ModelFolderError(f"{where}: the StaticEmbedding must be the first module")
            modules.append(load_static_embedding(sub))
        elif i == 0:
            raise ModelFolderError(f"{where}: the first module must be a Transformer or a StaticEmbedding, got {kind}")
        elif kind == "Pooling" and isinstance(modules[0], StaticEmbeddingModule):
            raise ModelFolderError(f"{where}: Pooling after a StaticEmbedding, which gives sentence embeddings already")
        elif kind == "Pooling":
            config_path = sub / "config.json"
            config = _expect_object(read_json(config_path), config_path)
            modules.append(parse_pooling_config(config, str(config_path)))
        elif kind == "Dense":
            if not _sentence_level(modules):
                raise ModelFolderError(f"{where}: Dense must come after Pooling")
            modules.append(load_dense(sub))
        else:
            if not _sentence_level(modules):
                raise ModelFolderError(f"{where}: Normalize must come after Pooling")
            config_path = sub / "config.json"
            if config_path.is_file():
                config = _expect_object(read_json(config_path), config_path)
                if config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
                    raise ModelFolderError(f"{config_path}: Normalize on {config['module_input_name']!r} is not supported")
            modules.append(NormalizeModule())
    if not _sentence_level(modules):
        raise ModelFolderError(f"modules.json in {folder} has no Pooling module; sentfuse needs one")
    if sum(isinstance(m, PoolingModule) for m in modules) > 1:
        raise ModelFolderError(f"modules.json in {folder} has more than one Pooling module")
    config = read_st_config(folder, SIMILARITY_FN_NAMES)
    return ModelFolder(folder, modules, config.prompts, config.default_prompt_name, config.similarity_fn_name,
                       config.truncate_dim)
