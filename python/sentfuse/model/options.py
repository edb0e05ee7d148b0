"""The keywords sentence-transformers' model constructors (and predict / rank) take, parsed in one place for
every model type: Encoder, SparseEncoder and CrossEncoder.

sentence-transformers hands model_kwargs to AutoModel.from_pretrained, processor_kwargs to the tokenizer and
config_kwargs to AutoConfig; sentfuse does the same, except that the dtype and a single-device device_map
become its own dtype and device (it places the model itself, and its kernels follow the backbone's dtype).
sentfuse runs the backbone in PyTorch with its own kernels around it, so backend must be "torch".
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from .._checks import parse_dtype
from .compute import COMPUTE_MODES, ComputeMode

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Dtypes a backbone may be loaded in: the kernels' three, float64 (pooled in float32, see encode.pooling), and
# the CPU compute modes (float32 models whose linear layers multiply in bf16 / int8, see model.compute).
LOAD_DTYPES = ("float32", "float16", "bfloat16", "float64", *COMPUTE_MODES)
# model_kwargs keys that name the dtype (transformers renamed torch_dtype to dtype; both are still seen).
DTYPE_KEYS = ("dtype", "torch_dtype")
OTHER_BACKENDS = {
    "onnx": "sentence_transformers.SentenceTransformer(..., backend='onnx') with onnxruntime",
    "openvino": "sentence_transformers.SentenceTransformer(..., backend='openvino') with OpenVINO",
}


# sentence-transformers' deprecated keyword spellings (old -> current name), per model type and method.
RENAMED_INIT = {"tokenizer_kwargs": "processor_kwargs", "use_auth_token": "token"}  # SentenceTransformer, Sparse
RENAMED_CROSS_ENCODER_INIT = {
    "model_name": "model_name_or_path",
    "automodel_args": "model_kwargs",
    "tokenizer_args": "processor_kwargs",
    "tokenizer_kwargs": "processor_kwargs",
    "config_args": "config_kwargs",
    "cache_dir": "cache_folder",
    "default_activation_function": "activation_fn",
}
RENAMED_ENCODE = {"sentences": "inputs"}
RENAMED_PREDICT = {"sentences": "inputs", "activation_fct": "activation_fn"}
# Call keywords sentence-transformers' CrossEncoder still accepts, with a warning, and ignores.
NO_EFFECT_PREDICT = ("num_workers",)
NO_EFFECT_RANK = (*NO_EFFECT_PREDICT, "apply_softmax", "convert_to_numpy", "convert_to_tensor")

_WARNED: set[tuple[str, str]] = set()

# processing_kwargs settings (sentence-transformers 6's per-call tokenizer overrides) that change no result here:
# sentfuse pads each batch itself and the attention mask hides padding.
_NO_EFFECT_PROCESSING = ("padding", "pad_to_multiple_of")
_TRUNCATING = (True, "longest_first")


def processing_token_limit(processing_kwargs: Any, where: str) -> int | None:
    """The per-call token limit in sentence-transformers' processing_kwargs ({"text": {...}, "common": {...}},
    text's settings over common's): max_length, truncating longest first as sentfuse always does. Padding
    settings are accepted (no effect on results); any other setting is an error naming it."""
    if processing_kwargs is None:
        return None
    if not isinstance(processing_kwargs, dict):
        raise TypeError(f"{where}: processing_kwargs must be a dict such as {{'text': {{'max_length': 256}}}}, "
                        f"got {type(processing_kwargs).__name__}")
    merged: dict[str, Any] = {}
    for key in ("common", "text"):
        settings = processing_kwargs.get(key, {})
        if not isinstance(settings, dict):
            raise TypeError(f"{where}: processing_kwargs[{key!r}] must be a dict, got {type(settings).__name__}")
        merged.update(settings)
    others = sorted(set(processing_kwargs) - {"common", "text"})
    unsupported = sorted(set(merged) - {"max_length", "truncation", *_NO_EFFECT_PROCESSING})
    if others or unsupported:
        raise NotImplementedError(f"{where}: processing_kwargs {others + unsupported} are not supported; sentfuse "
                                  "takes text's (or common's) max_length and truncation=True")
    if merged.get("truncation", True) not in _TRUNCATING:
        raise NotImplementedError(f"{where}: processing_kwargs truncation={merged['truncation']!r} is not "
                                  "supported: sentfuse always truncates (longest first) at the token limit")
    from .._checks import positive_int

    return positive_int(merged.get("max_length"), "processing_kwargs max_length")


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Accept each old keyword (a deprecated sentence-transformers spelling) as its new name, with a warning;
    giving both is an error. The old names are kept on the wrapper as `renamed_keywords`."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{func.__qualname__}: give {new} or its deprecated name {old}, not both")
                    if (func.__qualname__, old) not in _WARNED:  # once per process, as sentence-transformers
                        _WARNED.add((func.__qualname__, old))
                        logger.warning("%s: %s was renamed to %s; %s is deprecated (as in sentence-transformers)",
                                       func.__qualname__, old, new, old)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        wrapper.renamed_keywords = dict(renames)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def check_extra_keywords(extra: dict[str, Any], no_effect: tuple[str, ...], where: str) -> None:
    """The keywords a method took beyond its signature: those in no_effect are dropped with a warning (as
    sentence-transformers does), any other is an error naming it."""
    for name in no_effect:
        if name in extra:
            logger.warning("%s: %s is deprecated and has no effect", where, name)
    unknown = sorted(set(extra) - set(no_effect))
    if unknown:
        raise TypeError(f"{where} got unexpected keyword arguments {unknown}")


@dataclass(frozen=True)
class LoadOptions:
    """How the Hugging Face parts of a model folder are loaded (see load_pretrained)."""

    dtype: torch.dtype | ComputeMode | None = None  # None: as transformers loads the checkpoint
    token: bool | str | None = None
    trust_remote_code: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # for AutoModel.from_pretrained, dtype taken out
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)
    config_kwargs: dict[str, Any] = field(default_factory=dict)

    def constructor_kwargs(self) -> dict[str, Any]:
        """Keywords that give these options to another encoder's constructor (pool workers); dtype is apart."""
        return {
            "token": self.token,
            "trust_remote_code": self.trust_remote_code,
            "model_kwargs": dict(self.model_kwargs),
            "processor_kwargs": dict(self.tokenizer_kwargs),
            "config_kwargs": dict(self.config_kwargs),
        }


def _keyword_dict(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict of keyword arguments, got {type(value).__name__}")
    return dict(value)


def check_backend(backend: Any) -> None:
    if backend == "torch":
        return
    if backend in OTHER_BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not supported: sentfuse runs the model in PyTorch (backend='torch') with its "
            f"own fused kernels. Drop the backend keyword (or pass dtype='bfloat16' / 'float16' for speed), or use "
            f"{OTHER_BACKENDS[backend]}"
        )
    raise ValueError(f"backend must be 'torch' (sentfuse runs the model in PyTorch), got {backend!r}")


def _dtype_from(dtype: Any, model_kwargs: dict[str, Any]) -> torch.dtype | ComputeMode | None:
    """The backbone dtype from the dtype keyword and model_kwargs' dtype / torch_dtype ("auto": the checkpoint's)."""
    chosen = parse_dtype(dtype, "dtype", LOAD_DTYPES)
    for key in DTYPE_KEYS:
        if key not in model_kwargs:
            continue
        value = model_kwargs.pop(key)
        parsed = None if value in (None, "auto") else parse_dtype(value, f"model_kwargs[{key!r}]", LOAD_DTYPES)
        if chosen is not None and parsed is not None and parsed != chosen:
            raise ValueError(f"dtype={chosen} and model_kwargs[{key!r}]={value!r} disagree; give one of them")
        chosen = chosen or parsed
    return chosen


def _device_from(device: Any, model_kwargs: dict[str, Any]) -> Any:
    """device, or model_kwargs' device_map when it names one device (it takes precedence, as in
    sentence-transformers); a map over several devices is refused."""
    if "device_map" not in model_kwargs:
        return device
    device_map = model_kwargs.pop("device_map")
    if device_map is None:
        return device
    if isinstance(device_map, (str, torch.device, int)) and device_map not in ("auto", "balanced", "sequential"):
        if device is not None:
            logger.warning("device=%s ignored: model_kwargs['device_map']=%r takes precedence", device, device_map)
        return f"cuda:{device_map}" if isinstance(device_map, int) else device_map
    raise ValueError(
        f"model_kwargs['device_map']={device_map!r} is not supported: sentfuse keeps the whole model on one device; "
        "pass device='cuda:0' (or a single device as device_map), or a list of devices to encode(device=[...])"
    )


def parse_load_options(
    *,
    device: Any = None,
    dtype: Any = None,
    model_kwargs: Any = None,
    processor_kwargs: Any = None,
    config_kwargs: Any = None,
    token: Any = None,
    trust_remote_code: Any = False,
    backend: Any = "torch",
    use_kernels: Any = False,
    kernel_config: Any = None,
    modules: Any = None,
) -> tuple[LoadOptions, Any]:
    """(LoadOptions, device) from a constructor's keywords, each checked and named in its error."""
    check_backend(backend)
    if modules is not None:
        raise ValueError(
            "modules is not supported: sentfuse builds its modules from a model folder; save the modules with "
            "sentence_transformers.SentenceTransformer(modules=...).save(path) and load that folder"
        )
    if token is not None and not isinstance(token, (bool, str)):
        raise TypeError(f"token must be a str, a bool or None, got {type(token).__name__}")
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be a bool, got {type(trust_remote_code).__name__}")
    if not isinstance(use_kernels, bool):
        raise TypeError(f"use_kernels must be a bool, got {type(use_kernels).__name__}")
    model = _keyword_dict(model_kwargs, "model_kwargs")
    if use_kernels or kernel_config is not None:  # transformers' Hub kernels for the backbone, as in sentence-transformers
        model.setdefault("use_kernels", True)
        if kernel_config is not None:
            model.setdefault("kernel_config", kernel_config)
    chosen_dtype = _dtype_from(dtype, model)
    device = _device_from(device, model)
    options = LoadOptions(
        dtype=chosen_dtype,
        token=token,
        trust_remote_code=trust_remote_code,
        model_kwargs=model,
        tokenizer_kwargs=_keyword_dict(processor_kwargs, "processor_kwargs"),
        config_kwargs=_keyword_dict(config_kwargs, "config_kwargs"),
    )
    return options, device
