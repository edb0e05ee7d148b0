// BERT WordPiece (see wordpiece.h) for single texts and pairs, and its Python binding: one call per chunk of
// texts or pairs, run without the GIL, returning token ids (and a pair's type ids) as flat arrays.
#include "text/wordpiece.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace sentfuse::text {
namespace {

// Rust's char::is_ascii_punctuation, which BertPreTokenizer cuts out as words of their own.
bool is_punctuation(unsigned char c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
}

// What BertNormalizer's clean_text removes in ASCII: control characters other than \t \n \r.
bool is_removed(unsigned char c) { return (c < 32 && c != '\t' && c != '\n' && c != '\r') || c == 127; }

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// The code point starting at text[i] and its length in bytes; length 0 for invalid or overlong UTF-8.
std::pair<uint32_t, size_t> decode(std::string_view text, size_t i) {
  const auto c = static_cast<unsigned char>(text[i]);
  const size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (n == 0 || i + n > text.size()) return {0, 0};
  uint32_t cp = c & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(text[i + k]);
    if (!is_continuation(b)) return {0, 0};
    cp = (cp << 6) | (b & 0x3F);
  }
  const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < least[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {0, 0};
  return {cp, n};
}

constexpr uint32_t kHangulFirst = 0xAC00, kHangulEnd = 0xD7A4;

void append_utf8(uint32_t cp, std::string& out) {  // cp < 0x10000
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Unicode's arithmetic decomposition of a Hangul syllable: leading consonant, vowel, optional trailing consonant.
void append_hangul_jamo(uint32_t cp, std::string& out) {
  const uint32_t s = cp - kHangulFirst;
  append_utf8(0x1100 + s / (21 * 28), out);
  append_utf8(0x1161 + (s % (21 * 28)) / 28, out);
  if (s % 28 != 0) append_utf8(0x11A7 + s % 28, out);
}

std::pair<size_t, size_t> longest_first(size_t n1, size_t n2, size_t budget) {
  if (n1 + n2 <= budget) return {n1, n2};
  // The shorter text keeps its tokens if they fit in half the budget and the longer takes the rest; else the
  // shorter gets the lower half and the longer the upper (the first text on equal lengths), as the Hugging
  // Face tokenizer's longest_first strategy does.
  const bool swap = n1 > n2;
  const size_t shorter = swap ? n2 : n1;
  const auto [s, l] = 2 * shorter <= budget ? std::pair{shorter, budget - shorter}
                                            : std::pair{budget / 2, budget / 2 + budget % 2};
  return swap ? std::pair{l, s} : std::pair{s, l};
}

}  // namespace

WordPiece::WordPiece(const std::vector<std::string>& pieces, const std::vector<int64_t>& ids, const std::string& prefix,
                     WordPieceConfig config, std::unordered_map<uint32_t, std::vector<NormalChar>> table)
    : table_(std::move(table)), config_(std::move(config)) {
  for (size_t i = 0; i < pieces.size() && i < ids.size(); ++i) {
    const std::string& piece = pieces[i];
    if (!prefix.empty() && piece.size() > prefix.size() && piece.compare(0, prefix.size(), prefix) == 0) {
      const std::string rest = piece.substr(prefix.size());
      continuation_.emplace(rest, ids[i]);
      longest_continuation_ = std::max(longest_continuation_, rest.size());
    } else {
      first_.emplace(piece, ids[i]);
      longest_first_ = std::max(longest_first_, piece.size());
    }
  }
  for (unsigned char c : config_.reject_chars)
    if (c < 128) reject_[c] = true;
}

void WordPiece::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  int64_t chars = 0;
  for (unsigned char c : word) chars += !is_continuation(c);
  if (chars > config_.max_chars) {
    out.push_back(config_.unk_id);
    return;
  }
  // Back to the first byte of a character: pieces are whole UTF-8 characters.
  auto boundary = [&](size_t end, size_t start) {
    while (end > start && end < word.size() && is_continuation(static_cast<unsigned char>(word[end]))) --end;
    return end;
  };
  const size_t mark = out.size();
  size_t start = 0;
  while (start < word.size()) {
    const PieceMap& pieces = start == 0 ? first_ : continuation_;
    // No piece is longer than `longest` bytes, so the longest match ends no further out.
    size_t end = boundary(std::min(word.size(), start + (start == 0 ? longest_first_ : longest_continuation_)), start);
    int64_t id = -1;
    for (; end > start; end = boundary(end - 1, start)) {
      const auto it = pieces.find(word.substr(start, end - start));
      if (it != pieces.end()) {
        id = it->second;
        break;
      }
    }
    if (id < 0) {  // no complete split: the whole word is unknown
      out.resize(mark);
      out.push_back(config_.unk_id);
      return;
    }
    out.push_back(id);
    start = end;
  }
}

bool WordPiece::in_word_ranges(uint32_t cp) const {
  for (const auto& [lo, hi] : config_.word_ranges)
    if (cp >= lo && cp < hi) return true;
  return false;
}

bool WordPiece::takes_hangul(uint32_t cp) const {
  return config_.hangul != HangulMode::kReject && cp >= kHangulFirst && cp < kHangulEnd;
}

bool WordPiece::accepts(std::string_view text) const {
  for (const std::string& token : config_.reject_tokens)
    if (text.find(token) != std::string_view::npos) return false;
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 128) {
      if (reject_[c]) return false;
      ++i;
      continue;
    }
    const auto [cp, n] = decode(text, i);
    if (n == 0 || (table_.find(cp) == table_.end() && !in_word_ranges(cp) && !takes_hangul(cp))) return false;
    i += n;
  }
  return true;
}

void WordPiece::pieces(std::string_view text, std::vector<int64_t>& out, size_t limit) const {
  const size_t body = out.size();
  // Truncation (on the right) cuts what passes the limit, so words past it are skipped.
  thread_local std::string word;
  word.clear();
  auto flush = [&] {
    if (!word.empty()) encode_word(word, out);
    word.clear();
  };
  auto punctuation = [&](std::string_view p) {
    flush();
    if (out.size() - body < limit) encode_word(p, out);
  };
  for (size_t i = 0; i < text.size() && out.size() - body < limit;) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 128) {  // accepts() found it in the table, the word ranges or the Hangul syllables
      const auto [cp, n] = decode(text, i);
      if (takes_hangul(cp)) {
        if (config_.hangul == HangulMode::kDecompose) {
          append_hangul_jamo(cp, word);
        } else {
          word.append(text.substr(i, n));
        }
        i += n;
        continue;
      }
      const auto entry = table_.find(cp);
      if (entry == table_.end()) {  // a word of its own, as the normalizer's spaces around it make it
        punctuation(text.substr(i, n));
        i += n;
        continue;
      }
      for (const NormalChar& x : entry->second) {
        if (x.kind == CharKind::kSpace) {
          flush();
        } else if (x.kind == CharKind::kPunctuation) {
          punctuation(x.utf8);
        } else {
          word += x.utf8;
        }
      }
      i += n;
      continue;
    }
    ++i;
    if (is_removed(c)) continue;  // removed before splitting: the characters around it stay one word
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      flush();
    } else if (is_punctuation(c)) {
      punctuation(std::string_view(text.data() + i - 1, 1));
    } else {
      const bool upper = c >= 'A' && c <= 'Z';
      word.push_back(static_cast<char>(config_.lowercase && upper ? c - 'A' + 'a' : c));
    }
  }
  if (out.size() - body < limit) flush();
  if (out.size() - body > limit) out.resize(body + limit);
}

bool WordPiece::encode(std::string_view text, std::vector<int64_t>& out) const {
  if (!accepts(text)) return false;
  const int64_t specials = (config_.cls_id >= 0) + (config_.sep_id >= 0);
  const size_t limit =
      config_.max_length < 0 ? SIZE_MAX : static_cast<size_t>(std::max<int64_t>(config_.max_length - specials, 0));
  if (config_.cls_id >= 0) out.push_back(config_.cls_id);
  pieces(text, out, limit);
  if (config_.sep_id >= 0) out.push_back(config_.sep_id);
  return true;
}

bool WordPiece::encode_pair(std::string_view first, std::string_view second, std::vector<int64_t>& out,
                            std::vector<int64_t>& types) const {
  if (!accepts(first) || !accepts(second)) return false;
  // Longest-first truncation needs both texts' whole lengths.
  thread_local std::vector<int64_t> a, b;
  a.clear();
  b.clear();
  pieces(first, a, SIZE_MAX);
  pieces(second, b, SIZE_MAX);
  size_t n1 = a.size(), n2 = b.size();
  if (config_.max_length >= 0)
    std::tie(n1, n2) = longest_first(n1, n2, static_cast<size_t>(std::max<int64_t>(config_.max_length - 3, 0)));
  out.push_back(config_.cls_id);
  out.insert(out.end(), a.begin(), a.begin() + static_cast<std::ptrdiff_t>(n1));
  out.push_back(config_.sep_id);
  out.insert(out.end(), b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n2));
  out.push_back(config_.sep_id);
  types.insert(types.end(), n1 + 2, 0);
  types.insert(types.end(), n2 + 1, 1);
  return true;
}

}  // namespace sentfuse::text

namespace py = pybind11;

namespace sentfuse {

namespace {

// UTF-8 views of a list's texts (items of `width` strings each when width > 1), taken with the GIL and kept
// valid by strong references, so the work can run without it. An item that is not a str (or a list / tuple of
// width strs), or that has no UTF-8 form (a lone surrogate), is unusable: the Hugging Face tokenizer reports it.
struct Views {
  Views(const py::list& items, size_t width) : n(items.size()), width_(width), views_(n * width), usable_(n, false) {
    keep_.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      py::object item = items[i];
      PyObject* o = item.ptr();
      if (width == 1) {
        usable_[i] = view(o, views_[i]);
      } else if ((PyTuple_Check(o) || PyList_Check(o)) && static_cast<size_t>(PySequence_Size(o)) == width) {
        bool all = true;
        for (size_t k = 0; k < width && all; ++k) {
          PyObject* s = PyTuple_Check(o) ? PyTuple_GET_ITEM(o, k) : PyList_GET_ITEM(o, k);
          all = view(s, views_[i * width + k]);
        }
        usable_[i] = all;
      }
      keep_.push_back(std::move(item));
    }
  }
  bool usable(size_t i) const { return usable_[i]; }
  std::string_view text(size_t i, size_t k) const { return views_[i * width_ + k]; }

  const size_t n;

 private:
  static bool view(PyObject* s, std::string_view& out) {
    if (!PyUnicode_Check(s)) return false;
    // ASCII strings hand out their own bytes; others their cached UTF-8 (made once, with the GIL).
    Py_ssize_t size = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(s, &size);
    if (utf8 == nullptr) {
      PyErr_Clear();
      return false;
    }
    out = std::string_view(utf8, static_cast<size_t>(size));
    return true;
  }

  size_t width_;
  std::vector<py::object> keep_;
  std::vector<std::string_view> views_;
  std::vector<bool> usable_;
};

py::array_t<int64_t> as_array(const std::vector<int64_t>& v) {
  py::array_t<int64_t> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

}  // namespace

// The Python class sentfuse._C.WordPiece: encode_batch(texts) -> (ids int64 [total], offsets int64 [n + 1],
// rejected int64 [r]); encode_pairs(pairs) -> the same and types int64 [total]. A rejected item (not a str or
// a pair of them, or one WordPiece::encode / encode_pair declines) has no ids, for the caller's Hugging Face
// tokenizer.
void bind_wordpiece(py::module_& m) {
  py::class_<text::WordPiece, std::shared_ptr<text::WordPiece>>(m, "WordPiece")
      .def(py::init([](const std::vector<std::string>& pieces, const std::vector<int64_t>& ids, const std::string& prefix,
                       int64_t unk_id, int64_t max_chars, bool lowercase, int64_t cls_id, int64_t sep_id,
                       int64_t max_length, const std::string& reject_chars,
                       const std::map<uint32_t, std::vector<std::pair<std::string, int>>>& table,
                       const std::vector<std::string>& reject_tokens,
                       const std::vector<std::pair<uint32_t, uint32_t>>& word_ranges, int hangul) {
             if (hangul < 0 || hangul > 2) throw py::value_error("hangul must be 0, 1 or 2, got " + std::to_string(hangul));
             std::unordered_map<uint32_t, std::vector<text::NormalChar>> chars;
             for (const auto& [cp, normal] : table) {
               auto& entry = chars[cp];
               for (const auto& [utf8, kind] : normal) entry.push_back({utf8, static_cast<text::CharKind>(kind)});
             }
             return std::make_shared<text::WordPiece>(
                 pieces, ids, prefix,
                 text::WordPieceConfig{unk_id, max_chars, lowercase, cls_id, sep_id, max_length, reject_chars,
                                      reject_tokens, word_ranges, static_cast<text::HangulMode>(hangul)},
                 std::move(chars));
           }),
           py::arg("pieces"), py::arg("ids"), py::arg("prefix"), py::arg("unk_id"), py::arg("max_chars"),
           py::arg("lowercase"), py::arg("cls_id"), py::arg("sep_id"), py::arg("max_length"), py::arg("reject_chars"),
           py::arg("table") = std::map<uint32_t, std::vector<std::pair<std::string, int>>>{},
           py::arg("reject_tokens") = std::vector<std::string>{},
           py::arg("word_ranges") = std::vector<std::pair<uint32_t, uint32_t>>{}, py::arg("hangul") = 0)
      .def("encode_batch",
           [](const text::WordPiece& wp, const py::list& texts) {
             const Views views(texts, 1);
             std::vector<int64_t> ids, offsets(views.n + 1, 0), rejected;
             {
               py::gil_scoped_release release;
               ids.reserve(views.n * 24);
               for (size_t i = 0; i < views.n; ++i) {
                 if (!views.usable(i) || !wp.encode(views.text(i, 0), ids)) rejected.push_back(static_cast<int64_t>(i));
                 offsets[i + 1] = static_cast<int64_t>(ids.size());
               }
             }
             return py::make_tuple(as_array(ids), as_array(offsets), as_array(rejected));
           })
      .def("encode_pairs", [](const text::WordPiece& wp, const py::list& pairs) {
        const Views views(pairs, 2);
        std::vector<int64_t> ids, types, offsets(views.n + 1, 0), rejected;
        {
          py::gil_scoped_release release;
          ids.reserve(views.n * 64);
          types.reserve(views.n * 64);
          for (size_t i = 0; i < views.n; ++i) {
            if (!views.usable(i) || !wp.encode_pair(views.text(i, 0), views.text(i, 1), ids, types))
              rejected.push_back(static_cast<int64_t>(i));
            offsets[i + 1] = static_cast<int64_t>(ids.size());
          }
        }
        return py::make_tuple(as_array(ids), as_array(offsets), as_array(rejected), as_array(types));
      });
}

}  // namespace sentfuse
