"""sentence-transformers' CrossEncoder keywords that sentfuse maps onto its own, renames they deprecate, and
the ones it cannot honour (each refused with an error naming it)."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# Old constructor names -> current ones (sentence-transformers warns and renames the same way).
RENAMED_INIT = {
    "model_name": "model_name_or_path",
    "automodel_args": "model_kwargs",
    "tokenizer_args": "processor_kwargs",
    "tokenizer_kwargs": "processor_kwargs",
    "config_args": "config_kwargs",
    "cache_dir": "cache_folder",
    "default_activation_function": "activation_fn",
}
RENAMED_CALL = {"sentences": "inputs", "activation_fct": "activation_fn"}
NO_EFFECT_CALL = ("num_workers",)  # accepted by predict and rank with a warning, as sentence-transformers does
NO_EFFECT_RANK = ("apply_softmax", "convert_to_numpy", "convert_to_tensor")

# Entries of config_kwargs that change the loaded model; others are refused. classifier_dropout only acts in
# training, so it is accepted and has no effect at inference.
CONFIG_KEYS = ("num_labels", "classifier_dropout")
DTYPE_KEYS = ("dtype", "torch_dtype")  # model_kwargs entries sentfuse honours


def rename(kwargs: dict[str, Any], renamed: dict[str, str], where: str) -> dict[str, Any]:
    """kwargs with deprecated names moved to their new ones (a warning for each); the new name wins."""
    out = dict(kwargs)
    for old, new in renamed.items():
        if old in out:
            value = out.pop(old)
            logger.warning("%s: `%s` was renamed to `%s`; please use `%s`", where, old, new, new)
            out.setdefault(new, value)
    return out


def drop_no_effect(kwargs: dict[str, Any], names: tuple[str, ...], where: str) -> None:
    for name in names:
        if name in kwargs:
            kwargs.pop(name)
            logger.warning("%s: `%s` is deprecated and has no effect", where, name)


def refuse_unknown(kwargs: dict[str, Any], where: str) -> None:
    if kwargs:
        raise TypeError(f"{where} got unexpected keyword arguments {sorted(kwargs)}")


def refuse(name: str, value: Any, accepted: tuple, why: str) -> None:
    """Raise ValueError naming a keyword whose value sentfuse cannot honour (any value outside accepted)."""
    if not any(value is a or (a is not None and not isinstance(a, bool) and value == a) for a in accepted):
        raise ValueError(f"{name}={value!r} is not supported: {why}")


def split_model_kwargs(model_kwargs: dict[str, Any] | None) -> Any:
    """The dtype model_kwargs asks for (None if none); any other entry is refused by name."""
    model_kwargs = dict(model_kwargs or {})
    dtype = None
    for key in DTYPE_KEYS:
        if key in model_kwargs:
            dtype = model_kwargs.pop(key)
    if model_kwargs:
        raise ValueError(f"model_kwargs {sorted(model_kwargs)} are not supported: sentfuse honours only "
                         f"{' / '.join(DTYPE_KEYS)} there (or pass dtype=)")
    return None if dtype == "auto" else dtype


def split_processor_kwargs(processor_kwargs: dict[str, Any] | None) -> int | None:
    """The token limit processor_kwargs asks for (model_max_length); any other entry is refused by name."""
    processor_kwargs = dict(processor_kwargs or {})
    limit = processor_kwargs.pop("model_max_length", None)
    if processor_kwargs:
        raise ValueError(f"processor_kwargs {sorted(processor_kwargs)} are not supported: sentfuse honours only "
                         "model_max_length there (or pass max_length=)")
    return limit


def split_config_kwargs(config_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    config_kwargs = dict(config_kwargs or {})
    unknown = sorted(set(config_kwargs) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config_kwargs {unknown} are not supported: sentfuse honours only {', '.join(CONFIG_KEYS)}")
    return config_kwargs
