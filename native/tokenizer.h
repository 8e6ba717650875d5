// Tokenizer: llama_tokenize's results for BPE vocabularies (Qwen's) in time linear in the special tokens a text
// holds. llama.cpp's special-token partition (tokenizer_st_partition in llama-vocab.cpp) finds each occurrence by
// walking its fragment list from the start (std::distance / std::next on a forward_list), so a text with n special
// tokens costs O(n²): 200,000 "<|im_end|>" in a prompt or a rendered chat template hold the event loop for minutes.
// The partition here is the same algorithm (same token order, same LSTRIP/RSTRIP handling) on a list spliced in
// place; each remaining text fragment goes to llama_tokenize without special parsing, which is what llama.cpp does
// with it after its own partition. Other vocabulary types use llama_tokenize unchanged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "llama.h"

namespace qwen {

class Tokenizer {
 public:
  // Reads the special tokens (control, user-defined, unknown) of the vocabulary: 151,936 attribute reads for
  // Qwen, so build it on the load thread.
  explicit Tokenizer(const llama_vocab* vocab);

  // Tokens of `text` without BOS/EOS, as llama_tokenize(vocab, text, add_special = false, parseSpecial).
  // Throws std::length_error when the text is longer than llama_tokenize accepts.
  std::vector<llama_token> Tokenize(const std::string& text, bool parseSpecial) const;
  // Texts of the tokens special parsing decides on (control and unknown): what a literal text must not become.
  std::vector<std::string> ControlTexts() const;

  // llama_tokenize itself (the reference the tests compare Tokenize with).
  std::vector<llama_token> TokenizeWithLlama(const std::string& text, bool parseSpecial) const;

 private:
  struct Special {
    llama_token id;
    std::string text;
    int32_t attr;
  };
  void AppendText(const char* text, size_t length, bool parseSpecial, std::vector<llama_token>& out) const;

  const llama_vocab* vocab_;
  bool bpe_;
  std::vector<Special> specials_;  // llama.cpp's cache_special_tokens order: longest text first
};

}  // namespace qwen
