#include "tokenizer.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <list>
#include <stdexcept>
#include <string_view>

namespace qwen {

Tokenizer::Tokenizer(const llama_vocab* vocab) : vocab_(vocab), bpe_(llama_vocab_type(vocab) == LLAMA_VOCAB_TYPE_BPE) {
  if (!bpe_) return;
  const int32_t n = llama_vocab_n_tokens(vocab);
  for (llama_token id = 0; id < n; id++) {
    const int32_t attr = (int32_t)llama_vocab_get_attr(vocab, id);
    if (attr & (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_USER_DEFINED | LLAMA_TOKEN_ATTR_UNKNOWN)) specials_.push_back({id, llama_vocab_get_text(vocab, id), attr});
  }
  // the same (unstable) sort on the same sequence in id order as llama.cpp's, so tokens of equal length keep its order
  std::sort(specials_.begin(), specials_.end(), [](const Special& a, const Special& b) { return a.text.size() > b.text.size(); });
}

void Tokenizer::AppendText(const char* text, size_t length, bool parseSpecial, std::vector<llama_token>& out) const {
  if (length > (size_t)INT32_MAX) throw std::length_error("text is too long to tokenize");
  const size_t start = out.size();
  out.resize(start + length + 8);
  int32_t n = llama_tokenize(vocab_, text, (int32_t)length, out.data() + start, (int32_t)(out.size() - start), false, parseSpecial);
  if (n == INT32_MIN) throw std::length_error("text is too long to tokenize");
  if (n < 0) {
    out.resize(start + (size_t)-n);
    n = llama_tokenize(vocab_, text, (int32_t)length, out.data() + start, -n, false, parseSpecial);
  }
  out.resize(start + (size_t)std::max(n, 0));
}

std::vector<std::string> Tokenizer::ControlTexts() const {
  std::vector<std::string> out;
  for (const Special& s : specials_) {
    if ((s.attr & (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_UNKNOWN)) && !s.text.empty()) out.push_back(s.text);
  }
  return out;
}

std::vector<llama_token> Tokenizer::TokenizeWithLlama(const std::string& text, bool parseSpecial) const {
  std::vector<llama_token> out;
  if (!text.empty()) AppendText(text.data(), text.size(), parseSpecial, out);
  return out;
}

std::vector<llama_token> Tokenizer::Tokenize(const std::string& text, bool parseSpecial) const {
  std::vector<llama_token> out;
  if (text.empty()) return out;
  if (!bpe_ || specials_.empty()) return TokenizeWithLlama(text, parseSpecial);
  struct Fragment {
    size_t offset, length;
    llama_token token;  // LLAMA_TOKEN_NULL: text
  };
  std::list<Fragment> fragments{{0, text.size(), LLAMA_TOKEN_NULL}};
  const std::string_view all(text);
  std::vector<Fragment> pieces;
  for (const Special& s : specials_) {
    if (!parseSpecial && (s.attr & (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_UNKNOWN))) continue;
    if (s.text.empty()) continue;  // would match everywhere (llama.cpp loops on it); the GGUF check refuses these
    for (auto it = fragments.begin(); it != fragments.end();) {
      if (it->token != LLAMA_TOKEN_NULL) {
        ++it;
        continue;
      }
      size_t base = it->offset, length = it->length;
      size_t match = all.substr(0, base + length).find(s.text, base);
      if (match == std::string_view::npos) {
        ++it;
        continue;
      }
      // the fragment becomes [text before, token]… then what is left after the last occurrence
      pieces.clear();
      for (;;) {
        if (match > base) {
          size_t left = match - base;
          if (s.attr & LLAMA_TOKEN_ATTR_LSTRIP) {
            while (left > 0 && std::isspace((unsigned char)text[base + left - 1])) left--;
          }
          if (left > 0) pieces.push_back({base, left, LLAMA_TOKEN_NULL});
        }
        pieces.push_back({0, 0, s.id});
        if (match + s.text.size() >= base + length) break;
        size_t rightOffset = match + s.text.size();
        size_t rightLength = base + length - rightOffset;
        if (s.attr & LLAMA_TOKEN_ATTR_RSTRIP) {
          while (rightLength > 0 && std::isspace((unsigned char)text[rightOffset])) {
            rightOffset++;
            rightLength--;
          }
        }
        base = rightOffset;
        length = rightLength;
        if (length == 0) break;
        match = all.substr(0, base + length).find(s.text, base);
        if (match == std::string_view::npos) {
          pieces.push_back({base, length, LLAMA_TOKEN_NULL});
          break;
        }
      }
      it = fragments.erase(it);
      fragments.insert(it, pieces.begin(), pieces.end());
    }
  }
  // each text fragment holds no special token any more: llama_tokenize tokenizes it as llama.cpp would have
  for (const Fragment& f : fragments) {
    if (f.token != LLAMA_TOKEN_NULL) out.push_back(f.token);
    else AppendText(text.data() + f.offset, f.length, false, out);
  }
  return out;
}

}  // namespace qwen
