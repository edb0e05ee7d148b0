"""The tokenize stage's native WordPiece (csrc/text/wordpiece.h) for BERT-family tokenizers.

The Hugging Face tokenizer spends most of a short text's time outside its Rust core's WordPiece: a Python
object per text and a list per text's ids, made while holding the GIL, which caps how many threads help
(7x on 16 threads on the 2026-12-04 H200 run, where tokenizing, not the model, bounded encode). The native
path encodes a whole chunk of texts without the GIL straight into flat id arrays.

It is used only where the tokenizer's configuration is one it reproduces exactly: BertNormalizer with
clean_text, BertPreTokenizer, a WordPiece model, [CLS] $A [SEP] (or nothing) around a single text with type
id 0, or [CLS] $A [SEP] $B [SEP] with types 0 then 1 around a cross-encoder's pair (truncated longest first),
right-side truncation. Anything else (other normalizers, added tokens it cannot rule out) keeps the Hugging
Face tokenizer, and so do the texts it rejects: those holding a character outside ASCII and
the table of TABLE_RANGES' characters (built from the tokenizer's own normalizer and pre-tokenizer, one
character at a time), CJK ideographs and Hangul syllables, or an added token (or, for one matched after normalization, its
first character). SENTFUSE_NATIVE_TOKENIZER=0 turns it off.
"""

from __future__ import annotations

import json
import os
import unicodedata
from functools import cache
from typing import Any

import numpy as np

from ..model.pretrained import UNBOUNDED_LENGTH

ENV = "SENTFUSE_NATIVE_TOKENIZER"
# Code points beyond ASCII the native path may take: Latin, IPA, Greek, Cyrillic; the punctuation, currency,
# letter-like, number, arrow, mathematical, technical, shape and dingbat blocks; CJK punctuation, hiragana,
# katakana and Hangul jamo (conjoining and compatibility); fullwidth forms (what English and European text
# holds, and the odd East Asian character beside them).
TABLE_RANGES = [(0x80, 0x530), (0x1100, 0x1200), (0x1E00, 0x2800), (0x3000, 0x3190), (0xFF00, 0xFFF0)]
# CJK ideographs (Extension A and the Unified block): BertNormalizer's handle_chinese_chars puts spaces around
# each, so each is a word of its own; the native path takes them by that rule (csrc/text/wordpiece.h) once a
# sample of them, read through the tokenizer, follows it.
IDEOGRAPH_RANGES = [(0x3400, 0x4DC0), (0x4E00, 0xA000)]
IDEOGRAPH_SAMPLE_STEP = 61
# Hangul syllables: too many to table (start-up would take 5x longer); the normalizer keeps each or, where it
# applies NFD (stripping accents), makes it its two or three conjoining jamo by Unicode's arithmetic rule. The
# native path follows whichever of the two a sample read through the tokenizer shows (csrc/text/wordpiece.h
# HangulMode).
HANGUL_RANGE = (0xAC00, 0xD7A4)
HANGUL_SAMPLE_STEP = 37
HANGUL_REJECT, HANGUL_KEEP, HANGUL_DECOMPOSE = 0, 1, 2
WORD, SPACE, PUNCTUATION = 0, 1, 2  # csrc/text/wordpiece.h CharKind

CharTable = tuple[dict[int, list[tuple[str, int]]], bool, int]
_TABLES: dict[str, CharTable] = {}  # per normalizer + pre-tokenizer


def _char_table(backend: Any, spec: dict) -> CharTable:
    """(code point -> what the tokenizer's own normalizer makes of it, each resulting character with how its
    pre-tokenizer takes it; whether CJK ideographs become words of their own; the HANGUL_* mode that Hangul
    syllables follow). Left out of the table:
    combining marks (NFD reorders them across characters) and characters whose normalized form keeps one or
    whose treatment is anything else. Built once per process for each normalizer and pre-tokenizer (spec: the
    tokenizer's JSON, parsed)."""
    key = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")], sort_keys=True)
    if key not in _TABLES:
        _TABLES[key] = _build_char_table(backend)
    return _TABLES[key]


def _build_char_table(backend: Any) -> CharTable:
    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer

    @cache
    def kind(x: str) -> int | None:
        parts = [p for p, _ in pre_tokenizer.pre_tokenize_str("a" + x + "b")]
        return {("a" + x + "b",): WORD, ("a", "b"): SPACE, ("a", x, "b"): PUNCTUATION}.get(tuple(parts))

    table = {}
    for lo, hi in TABLE_RANGES:
        for cp in range(lo, hi):
            c = chr(cp)
            if unicodedata.category(c) in ("Mn", "Mc", "Me", "Cs", "Cn"):
                continue
            normal = normalizer.normalize_str(c)
            kinds = [kind(x) for x in normal]
            if None not in kinds and not any(unicodedata.combining(x) for x in normal):
                table[cp] = list(zip(normal, kinds))
    sample = [chr(cp) for lo, hi in IDEOGRAPH_RANGES for cp in [*range(lo, hi, IDEOGRAPH_SAMPLE_STEP), hi - 1]]
    ideographs = all(normalizer.normalize_str(c) == f" {c} " and kind(c) == WORD for c in sample)
    return table, ideographs, _hangul_mode(normalizer, kind)


def _hangul_mode(normalizer: Any, kind: Any) -> int:
    """The HANGUL_* mode a sample of syllables shows the normalizer following, words all (HANGUL_REJECT if neither)."""
    lo, hi = HANGUL_RANGE
    sample = [chr(cp) for cp in [*range(lo, hi, HANGUL_SAMPLE_STEP), hi - 1]]
    for mode, form in ((HANGUL_KEEP, lambda c: c), (HANGUL_DECOMPOSE, lambda c: unicodedata.normalize("NFD", c))):
        if all(normalizer.normalize_str(c) == form(c) and all(kind(x) == WORD for x in form(c)) for c in sample):
            return mode
    return HANGUL_REJECT


def _template_ids(items: list, table: dict, kinds: list[str], types: list[int]) -> list[int] | None:
    """The special tokens' ids of a TemplateProcessing template whose items are kinds ("S": a special token,
    "A" / "B": a text) with types as their type ids, each special token a single id; None if it differs."""
    kind_names = {"S": "SpecialToken", "A": "Sequence", "B": "Sequence"}
    if [next(iter(item)) for item in items] != [kind_names[k] for k in kinds]:
        return None
    if any(item["Sequence"].get("id") != k for item, k in zip(items, kinds) if k != "S"):
        return None  # the texts in another order
    if [next(iter(item.values()))["type_id"] for item in items] != types:
        return None
    ids = [table.get(item["SpecialToken"]["id"], {}).get("ids") for item, k in zip(items, kinds) if k == "S"]
    if any(not isinstance(i, list) or len(i) != 1 for i in ids):
        return None
    return [int(i[0]) for i in ids]


def _specials(post: dict | None, pairs: bool = False) -> tuple[int, int] | None:
    """(cls id, sep id) the post-processor puts around one text (-1: none), or, with pairs, around and between
    two texts as [CLS] A [SEP] B [SEP] with types 0 then 1; None if it does anything else."""
    if post is None:
        return None if pairs else (-1, -1)
    if post.get("type") == "BertProcessing":
        return int(post["cls"][1]), int(post["sep"][1])
    if post.get("type") != "TemplateProcessing":
        return None
    table = post.get("special_tokens") or {}
    ids = _template_ids(post.get("single") or [], table, ["S", "A", "S"], [0, 0, 0])
    if ids is None:
        return None
    if pairs and _template_ids(post.get("pair") or [], table, ["S", "A", "S", "B", "S"], [0, 0, 0, 1, 1]) != ids + ids[1:]:
        return None
    return ids[0], ids[1]


def native_wordpiece(tokenizer: Any, max_length: int, special_tokens: bool = True, pairs: bool = False) -> Any | None:
    """A sentfuse._C.WordPiece equivalent to tokenizer (a fast Hugging Face tokenizer) on the texts it
    accepts (with pairs, on the (first, second) pairs its encode_pairs takes, truncated longest first),
    truncating at max_length tokens; None where it is not."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or os.environ.get(ENV, "1") == "0":
        return None
    from .. import _C

    spec = json.loads(backend.to_str())
    normalizer, model = spec.get("normalizer") or {}, spec.get("model") or {}
    if normalizer.get("type") != "BertNormalizer" or not normalizer.get("clean_text"):
        return None
    if (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer" or model.get("type") != "WordPiece":
        return None
    vocab = model.get("vocab") or {}
    if model.get("unk_token") not in vocab:
        return None
    if pairs and not special_tokens:
        return None
    specials = _specials(spec.get("post_processor"), pairs) if special_tokens else (-1, -1)
    if specials is None:
        return None
    bounded = max_length < UNBOUNDED_LENGTH
    added = 3 if pairs else sum(i >= 0 for i in specials)
    if bounded and (getattr(tokenizer, "truncation_side", "right") != "right" or max_length <= added):
        return None
    # The Hugging Face tokenizer matches added tokens in the text before anything else. One matched in the raw
    # text (normalized False, as BERT's [CLS] [SEP] [MASK] ...) can only be there if its content is: a text
    # holding it goes to the tokenizer. One matched in the normalized text could be made by the normalizer
    # from other characters: a text holding any case of its first character goes.
    added_tokens = [a for a in spec.get("added_tokens") or [] if a.get("content")]
    exact = sorted({a["content"] for a in added_tokens if a.get("normalized") is False})
    firsts = {c for a in added_tokens if a.get("normalized") is not False
              for c in (a["content"][0].lower(), a["content"][0].upper())}
    if any(ord(c) < 128 and (c.isalnum() or c.isspace()) for c in firsts):
        return None  # such a character is in nearly every text: nothing left for the native path
    table, ideographs, hangul = _char_table(backend, spec)
    ideographs = ideographs and not any(lo <= ord(c) < hi for c in firsts for lo, hi in IDEOGRAPH_RANGES)
    if any(HANGUL_RANGE[0] <= ord(c) < HANGUL_RANGE[1] for c in firsts):
        hangul = HANGUL_REJECT
    return _C.WordPiece(list(vocab), [int(i) for i in vocab.values()], model.get("continuing_subword_prefix") or "",
                        int(vocab[model["unk_token"]]), int(model.get("max_input_chars_per_word", 100)),
                        bool(normalizer.get("lowercase")), specials[0], specials[1],
                        max_length if bounded else -1, "".join(sorted(c for c in firsts if ord(c) < 128)),
                        {cp: v for cp, v in table.items() if chr(cp) not in firsts}, exact,
                        list(IDEOGRAPH_RANGES) if ideographs else [], hangul)


def splice(ids: np.ndarray, offsets: np.ndarray, rejected: np.ndarray,
           others: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids / offsets with the rejected texts' (empty) entries replaced by others' ids, in order."""
    lengths = np.diff(offsets)
    lengths[rejected] = [len(o) for o in others]
    parts, at = [], 0
    for index, other in zip(rejected.tolist(), others):
        parts += [ids[at:offsets[index]], np.asarray(other, dtype=np.int64)]
        at = offsets[index]
    parts.append(ids[at:])
    merged = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=merged[1:])
    return np.concatenate(parts), merged
