// BERT WordPiece tokenization without the GIL: the encode pipeline's tokenize stage for the tokenizers that
// python/sentfuse/encode/wordpiece.py finds equivalent (BertNormalizer with clean_text, BertPreTokenizer, a
// WordPiece model, [CLS] $A [SEP] or nothing around the text).
//
// On ASCII text those steps reduce to: drop control characters, turn \t \n \r into spaces, lower-case (if
// the normalizer does), split on spaces and cut out each ASCII punctuation character as a word of its own,
// then greedy longest-prefix WordPiece per word (a word longer than max_chars characters, or one with no
// complete split, becomes the unknown token). Beyond ASCII, BertNormalizer works character by character
// (cleaning, CJK spacing, NFD with nonspacing marks dropped, lower-casing) as long as no combining mark
// follows: the characters of `table` carry what the tokenizer's own normalizer made of each, with how its
// pre-tokenizer treats every resulting character, and Hangul syllables are decomposed by rule. Texts this cannot take (a character neither ASCII nor in
// the table, invalid UTF-8, an added token or a character one starts with: the Hugging Face tokenizer would
// match those first) are reported back for the Hugging Face tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sentfuse::text {

// Heterogeneous lookup: pieces are found by string_view, without building a std::string per try.
struct PieceHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int64_t, PieceHash, std::equal_to<>>;

// One character of a table entry's normalized form and how the pre-tokenizer takes it.
enum class CharKind : uint8_t { kWord = 0, kSpace = 1, kPunctuation = 2 };

// What the normalizer makes of a Hangul syllable (U+AC00..U+D7A3; 11,172 of them, computed, not tabled):
// unknown (a text holding one goes to the Hugging Face tokenizer), the syllable itself, or its conjoining jamo
// (the NFD that BertNormalizer applies when it strips accents). Either way a word character.
enum class HangulMode : uint8_t { kReject = 0, kKeep = 1, kDecompose = 2 };
struct NormalChar {
  std::string utf8;
  CharKind kind;
};

struct WordPieceConfig {
  int64_t unk_id = 0;
  int64_t max_chars = 100;       // longer words become unk_id
  bool lowercase = true;
  int64_t cls_id = -1;           // -1: no token before the text
  int64_t sep_id = -1;           // -1: no token after it
  int64_t max_length = -1;       // most tokens per text, special ones included; -1: no limit
  std::string reject_chars;      // a text holding any of these goes to the Hugging Face tokenizer
  std::vector<std::string> reject_tokens;  // and so does one holding any of these strings
  // Code point ranges [lo, hi) whose characters are each a word of their own (BertNormalizer's spaces around
  // CJK ideographs), taken without table entries.
  std::vector<std::pair<uint32_t, uint32_t>> word_ranges;
  HangulMode hangul = HangulMode::kReject;
};

class WordPiece {
 public:
  // pieces[i] has id ids[i]; those starting with `prefix` continue a word (keyed without the prefix).
  // table: non-ASCII code point -> its normalized characters (empty: removed).
  WordPiece(const std::vector<std::string>& pieces, const std::vector<int64_t>& ids, const std::string& prefix,
            WordPieceConfig config, std::unordered_map<uint32_t, std::vector<NormalChar>> table = {});

  // Appends the ids of one UTF-8 text to out; false (out untouched) if the text needs the Hugging Face
  // tokenizer: a character neither ASCII nor in the table, invalid UTF-8, one of reject_chars, or one of
  // reject_tokens.
  bool encode(std::string_view text, std::vector<int64_t>& out) const;

  // A cross-encoder's pair: [CLS] first [SEP] second [SEP], token types 0 up to the first [SEP] and 1 after,
  // the two texts truncated longest-first to max_length; appends ids to out and types to types, or returns
  // false (both untouched) as encode does. Needs cls_id and sep_id.
  bool encode_pair(std::string_view first, std::string_view second, std::vector<int64_t>& out,
                   std::vector<int64_t>& types) const;

 private:
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;
  // The text's word pieces, no special tokens, the first `limit` of them; the text must be accepted.
  void pieces(std::string_view text, std::vector<int64_t>& out, size_t limit) const;
  bool accepts(std::string_view text) const;
  bool in_word_ranges(uint32_t cp) const;
  bool takes_hangul(uint32_t cp) const;

  std::unordered_map<uint32_t, std::vector<NormalChar>> table_;

  PieceMap first_;         // pieces that begin a word
  PieceMap continuation_;  // pieces that continue one, without the prefix
  size_t longest_first_ = 0, longest_continuation_ = 0;
  WordPieceConfig config_;
  bool reject_[128] = {};
};

}  // namespace sentfuse::text
