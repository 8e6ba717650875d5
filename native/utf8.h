// Assembles token pieces (raw bytes that may end inside a UTF-8 character) into text that holds only complete
// characters, and holds back text that may be the start of a stop string so that a stop string spanning pieces
// is never emitted.
#pragma once

#include <string>
#include <vector>

namespace qwen {

// Length of the longest prefix of `bytes` that ends on a complete UTF-8 character. Invalid bytes (which a
// model with random weights can produce) count as complete so they never block the stream; the JS side decodes
// them to U+FFFD as TextDecoder would.
inline size_t CompleteUtf8Prefix(const std::string& bytes) {
  size_t n = bytes.size();
  // Look back at most 3 bytes for the lead byte of a trailing, possibly incomplete, sequence.
  for (size_t back = 1; back <= 3 && back <= n; back++) {
    unsigned char c = static_cast<unsigned char>(bytes[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return back < need ? n - back : n;
  }
  return n;
}

class TextAssembler {
 public:
  explicit TextAssembler(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // Adds a piece; returns the text that is safe to emit now. Sets stopped() once a stop string appears.
  std::string Push(const std::string& piece) {
    bytes_ += piece;
    size_t complete = CompleteUtf8Prefix(bytes_);
    text_ += bytes_.substr(0, complete);
    bytes_.erase(0, complete);
    for (const auto& stop : stops_) {
      size_t at = text_.find(stop);
      if (at != std::string::npos) {
        stopped_ = true;
        std::string out = text_.substr(0, at);
        text_.clear();
        bytes_.clear();
        return out;
      }
    }
    size_t hold = HeldBackLength();
    std::string out = text_.substr(0, text_.size() - hold);
    text_.erase(0, text_.size() - hold);
    return out;
  }

  // Everything still held back, at the end of a generation.
  std::string Flush() {
    std::string out = text_ + bytes_;
    text_.clear();
    bytes_.clear();
    return out;
  }

  bool stopped() const { return stopped_; }

 private:
  // Longest suffix of text_ that is a proper prefix of some stop string.
  size_t HeldBackLength() const {
    size_t best = 0;
    for (const auto& stop : stops_) {
      size_t max = std::min(stop.size() - 1, text_.size());
      for (size_t len = max; len > best; len--) {
        if (text_.compare(text_.size() - len, len, stop, 0, len) == 0) {
          best = len;
          break;
        }
      }
    }
    return best;
  }

  std::vector<std::string> stops_;
  std::string bytes_;  // raw bytes not yet forming a complete character
  std::string text_;   // complete characters not yet emitted (possible stop-string prefix)
  bool stopped_ = false;
};

}  // namespace qwen
