// PromptCache: saved KV states of evicted sequences (llama_state_seq_get_data) in host memory, optionally
// persisted to a directory, so a long system prompt survives eviction and restarts without being decoded again.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <vector>

#include "llama.h"

namespace qwen {

struct PromptCacheConfig {
  size_t maxBytes = 0;  // 0: off
  std::string dir;      // empty: memory only
};

class PromptCache {
 public:
  static constexpr size_t kMinTokens = 32;  // shorter sequences are cheaper to decode again than to save
  static constexpr size_t kMinGain = 16;    // restore only when it saves at least this many tokens

  struct Entry {
    std::vector<llama_token> tokens;
    std::vector<uint8_t> state;  // empty when only on disk
    std::string file;            // path on disk, if persisted
    size_t stateBytes = 0;
  };

  PromptCache(PromptCacheConfig config, std::string modelIdentity);
  bool persistent() const { return !config_.dir.empty(); }
  size_t bytes() const { return bytes_; }
  // True when an entry already holds these tokens or a longer run starting with them.
  bool Covers(const std::vector<llama_token>& tokens) const;
  void Store(const std::vector<llama_token>& tokens, std::vector<uint8_t>&& state);
  // The entry sharing the longest prefix with `prompt`; `common` receives that length.
  const Entry* Find(const std::vector<llama_token>& prompt, size_t* common);
  bool Load(const Entry* entry, std::vector<uint8_t>& out);

 private:
  void Evict();
  void WriteFile(Entry& entry);
  void ScanDirectory();

  PromptCacheConfig config_;
  std::string identity_;
  std::list<Entry> entries_;  // most recently used first
  size_t bytes_ = 0;
};

}  // namespace qwen
