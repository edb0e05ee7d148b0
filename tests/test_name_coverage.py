"""sentfuse answers to every public name of sentence-transformers 6.3 a script may use, or says why not.

Covered: what SentenceTransformer defines itself or inherits from sentence-transformers' own base classes
(not torch's nn.Module / nn.Sequential), what SparseEncoder defines itself, both constructors, every
public name of sentence_transformers.util and of the package itself, and every training loss and evaluator (with
its constructor's parameters). Each must exist in sentfuse (Encoder, SparseEncoder,
sentfuse.util) with the same parameter names, positions and defaults (deprecated keyword spellings
included), or be listed in the README's "Not supported" list with its reason. A listed name that sentfuse
does have fails too, so the list and the code cannot drift apart.
"""

from __future__ import annotations

import inspect
import re
from enum import Enum
from pathlib import Path

import pytest
import torch

st = pytest.importorskip("sentence_transformers")

from sentence_transformers.sentence_transformer import evaluation as st_evaluation  # noqa: E402
from sentence_transformers.sentence_transformer import losses as st_losses  # noqa: E402

import sentfuse  # noqa: E402
from sentfuse import evaluation as sf_evaluation  # noqa: E402
from sentfuse import losses as sf_losses  # noqa: E402
from sentfuse import util as sf_util  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_SUPPORTED_HEADING = "### Not supported"
ENTRY = re.compile(r"^- ((?:`[^`]+`, )*`[^`]+`): (\S.*)$")


def not_supported() -> dict[str, str]:
    """README entries: `Owner.name` (the name is missing) or `Owner.name(param)` (that parameter differs)."""
    text = README.read_text(encoding="utf-8")
    assert NOT_SUPPORTED_HEADING in text, f"README.md has no {NOT_SUPPORTED_HEADING!r} section"
    section = text.split(NOT_SUPPORTED_HEADING, 1)[1].split("\n#", 1)[0]
    entries = {}
    for line in section.splitlines():
        if line.startswith("- "):
            match = ENTRY.match(line)
            assert match, f"README {NOT_SUPPORTED_HEADING} entry not in the form '- `Owner.name`, ...: reason': {line}"
            for name in re.findall(r"`([^`]+)`", match.group(1)):
                entries[name] = match.group(2)
    return entries


def st_public_names(cls: type, own_module_prefix: str) -> dict[str, object]:
    """Public names cls defines, or inherits from classes of modules under own_module_prefix, first found."""
    names: dict[str, object] = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith(own_module_prefix):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_"):
                names.setdefault(name, value)
    return names


def st_util_names() -> dict[str, object]:
    return {name: getattr(st.util, name) for name in st.util.__all__ if not name.startswith("_")}


def _function(value: object) -> object:
    return value.__func__ if isinstance(value, (staticmethod, classmethod)) else value


def _same_default(a: object, b: object) -> bool:
    if isinstance(b, Enum) and not isinstance(a, Enum):
        # sentfuse's distance enums have callable members; sentence-transformers' class of the same name holds
        # plain functions (lambdas) under the same member names.
        return vars(getattr(st_losses, type(b).__name__, object)).get(b.name) is a
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):  # sentfuse's defaults are tuples, never lists
        return list(a) == list(b)
    if isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module):  # e.g. loss_fct=nn.MSELoss()
        return repr(a) == repr(b)
    if callable(a) and callable(b):  # e.g. score_function=cos_sim: sentence-transformers' and sentfuse's own
        return getattr(a, "__name__", a) == getattr(b, "__name__", b)
    return a is b or a == b


def parameter_differences(st_func: object, sf_func: object) -> dict[str, str]:
    """{parameter: what differs} between sentence-transformers' function and sentfuse's."""
    st_sig = inspect.signature(_function(st_func))
    sf_sig = inspect.signature(_function(sf_func))
    renamed = getattr(_function(sf_func), "renamed_keywords", {})
    sf_params = [p for p in sf_sig.parameters.values() if p.name not in ("self", "cls")]
    st_params = [p for p in st_sig.parameters.values() if p.name not in ("self", "cls")]
    differences = {}
    for position, param in enumerate(st_params):
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name in renamed:
            continue
        ours = sf_sig.parameters.get(param.name)
        if ours is None:
            differences[param.name] = "missing"
        elif not _same_default(param.default, ours.default):
            differences[param.name] = f"default {ours.default!r}, sentence-transformers {param.default!r}"
        elif param.kind == param.POSITIONAL_OR_KEYWORD and sf_params.index(ours) != position:
            differences[param.name] = f"position {sf_params.index(ours)}, sentence-transformers {position}"
    return differences


def cases() -> list[tuple[str, object, object]]:
    """(README name, sentence-transformers' object, sentfuse's owner) for every name to check."""
    out = []
    owners = (
        ("SentenceTransformer", st.SentenceTransformer, "sentence_transformers", sentfuse.Encoder),
        ("SparseEncoder", st.SparseEncoder, "sentence_transformers.sparse_encoder", sentfuse.SparseEncoder),
    )
    for label, cls, prefix, ours in owners:
        out.append((f"{label}.__init__", cls.__init__, ours))
        out += [(f"{label}.{name}", value, ours) for name, value in st_public_names(cls, prefix).items()]
    out += [(f"util.{name}", value, sf_util) for name, value in st_util_names().items()]
    out += [(f"sentence_transformers.{name}", getattr(st, name), sentfuse) for name in st.__all__]
    out += [(f"losses.{name}", getattr(st_losses, name), sf_losses) for name in st_losses.__all__]
    out += [(f"evaluation.{name}", getattr(st_evaluation, name), sf_evaluation) for name in st_evaluation.__all__]
    return out


# Modules whose classes are checked by their constructors' parameters.
CLASS_MODULES = (sf_losses, sf_evaluation)


CASES = cases()
NOT_SUPPORTED = not_supported()


@pytest.mark.parametrize(("name", "st_value", "owner"), CASES, ids=[c[0] for c in CASES])
def test_name_exists_with_the_same_parameters(name: str, st_value: object, owner: object) -> None:
    attribute = name.split(".", 1)[1]
    if attribute == "__init__":
        ours = owner.__init__
    elif inspect.ismodule(owner):  # a module may load a name on first use (sentfuse's trainer)
        ours = getattr(owner, attribute, None)
    else:
        ours = inspect.getattr_static(owner, attribute, None)
    if name in NOT_SUPPORTED:
        assert ours is None, f"{name} exists in sentfuse but README lists it as not supported; remove the entry"
        return
    assert ours is not None, f"sentfuse lacks {name}; add it or list it in README's {NOT_SUPPORTED_HEADING}"
    if isinstance(st_value, type) and owner in CLASS_MODULES:  # a loss or an evaluator: its constructor
        st_value, ours, label = st_value.__init__, getattr(owner, attribute).__init__, f"{name}.__init__"
    else:
        ours, label = getattr(owner, attribute), name
    st_callable = _function(st_value)
    if not callable(st_callable) or isinstance(st_value, (type, property)):
        return
    differences = parameter_differences(st_value, ours)
    listed = {p for p in differences if f"{label}({p})" in NOT_SUPPORTED}
    stale = [f"{label}({p})" for p in inspect.signature(st_callable).parameters
             if f"{label}({p})" in NOT_SUPPORTED and p not in differences]
    assert not stale, f"README lists {stale} as differing, but sentfuse matches; remove the entries"
    unexplained = {p: d for p, d in differences.items() if p not in listed}
    assert not unexplained, f"{label}: parameters differ from sentence-transformers 6.3: {unexplained}"


def test_readme_entries_name_real_sentence_transformers_names() -> None:
    known = {name for name, _, _ in CASES} | {f"{name}.__init__" for name, _, owner in CASES if owner in CLASS_MODULES}
    for entry in NOT_SUPPORTED:
        assert entry.split("(", 1)[0] in known, f"README {NOT_SUPPORTED_HEADING} entry {entry} is no sentence-transformers name"


def test_sentence_transformers_is_the_pinned_release() -> None:
    assert st.__version__.startswith("6.3."), f"the coverage list is for sentence-transformers 6.3, found {st.__version__}"
