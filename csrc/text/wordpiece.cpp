// BERT WordPiece on ASCII texts (see wordpiece.h), and its Python binding: one call per chunk of texts, run
// without the GIL, returning token ids as flat arrays.
#include "text/wordpiece.h"

#include <algorithm>
#include <cstdint>
#include <memory>
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

}  // namespace

WordPiece::WordPiece(const std::vector<std::string>& pieces, const std::vector<int64_t>& ids, const std::string& prefix,
                     WordPieceConfig config)
    : config_(std::move(config)) {
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
  if (static_cast<int64_t>(word.size()) > config_.max_chars) {
    out.push_back(config_.unk_id);
    return;
  }
  const size_t mark = out.size();
  size_t start = 0;
  while (start < word.size()) {
    const PieceMap& pieces = start == 0 ? first_ : continuation_;
    // No piece is longer than `longest`, so the longest match starts no further out.
    size_t end = std::min(word.size(), start + (start == 0 ? longest_first_ : longest_continuation_));
    int64_t id = -1;
    for (; end > start; --end) {
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

bool WordPiece::encode(std::string_view text, std::vector<int64_t>& out) const {
  for (unsigned char c : text)
    if (c >= 128 || reject_[c]) return false;
  if (config_.cls_id >= 0) out.push_back(config_.cls_id);
  const size_t body = out.size();
  // Tokens the text itself may keep: truncation (on the right) cuts the rest, so words past it are skipped.
  const int64_t specials = (config_.cls_id >= 0) + (config_.sep_id >= 0);
  const size_t limit =
      config_.max_length < 0 ? SIZE_MAX : static_cast<size_t>(std::max<int64_t>(config_.max_length - specials, 0));
  thread_local std::string word;
  word.clear();
  auto flush = [&] {
    if (!word.empty()) encode_word(word, out);
    word.clear();
  };
  for (size_t i = 0; i < text.size() && out.size() - body < limit; ++i) {
    const unsigned char c = text[i];
    if (is_removed(c)) continue;  // removed before splitting: the characters around it stay one word
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      flush();
    } else if (is_punctuation(c)) {
      flush();
      if (out.size() - body < limit) encode_word(std::string_view(text.data() + i, 1), out);
    } else {
      const bool upper = c >= 'A' && c <= 'Z';
      word.push_back(static_cast<char>(config_.lowercase && upper ? c - 'A' + 'a' : c));
    }
  }
  if (out.size() - body < limit) flush();
  if (out.size() - body > limit) out.resize(body + limit);
  if (config_.sep_id >= 0) out.push_back(config_.sep_id);
  return true;
}

}  // namespace sentfuse::text

namespace py = pybind11;

namespace sentfuse {

// The Python class sentfuse._C.WordPiece: encode_batch(texts) -> (ids int64 [total], offsets int64 [n + 1],
// rejected int64 [r]); a rejected text (not a str, not ASCII, or holding a reject char) has no ids, for the
// caller's Hugging Face tokenizer.
void bind_wordpiece(py::module_& m) {
  py::class_<text::WordPiece, std::shared_ptr<text::WordPiece>>(m, "WordPiece")
      .def(py::init([](const std::vector<std::string>& pieces, const std::vector<int64_t>& ids, const std::string& prefix,
                       int64_t unk_id, int64_t max_chars, bool lowercase, int64_t cls_id, int64_t sep_id,
                       int64_t max_length, const std::string& reject_chars) {
             return std::make_shared<text::WordPiece>(
                 pieces, ids, prefix,
                 text::WordPieceConfig{unk_id, max_chars, lowercase, cls_id, sep_id, max_length, reject_chars});
           }),
           py::arg("pieces"), py::arg("ids"), py::arg("prefix"), py::arg("unk_id"), py::arg("max_chars"),
           py::arg("lowercase"), py::arg("cls_id"), py::arg("sep_id"), py::arg("max_length"), py::arg("reject_chars"))
      .def("encode_batch", [](const text::WordPiece& wp, const py::list& texts) {
        const size_t n = texts.size();
        // Strong references and views taken with the GIL; the work runs without it.
        std::vector<py::object> keep;
        std::vector<std::string_view> views(n);
        std::vector<bool> usable(n, false);
        keep.reserve(n);
        for (size_t i = 0; i < n; ++i) {
          py::object item = texts[i];
          PyObject* s = item.ptr();
          if (PyUnicode_Check(s) && PyUnicode_IS_READY(s) && PyUnicode_IS_ASCII(s)) {
            views[i] = std::string_view(static_cast<const char*>(PyUnicode_DATA(s)),
                                        static_cast<size_t>(PyUnicode_GET_LENGTH(s)));
            usable[i] = true;
          }
          keep.push_back(std::move(item));
        }
        std::vector<int64_t> ids, offsets(n + 1, 0), rejected;
        {
          py::gil_scoped_release release;
          ids.reserve(n * 24);
          for (size_t i = 0; i < n; ++i) {
            if (!usable[i] || !wp.encode(views[i], ids)) rejected.push_back(static_cast<int64_t>(i));
            offsets[i + 1] = static_cast<int64_t>(ids.size());
          }
        }
        auto as_array = [](const std::vector<int64_t>& v) {
          py::array_t<int64_t> a(static_cast<py::ssize_t>(v.size()));
          std::copy(v.begin(), v.end(), a.mutable_data());
          return a;
        };
        return py::make_tuple(as_array(ids), as_array(offsets), as_array(rejected));
      });
}

}  // namespace sentfuse
