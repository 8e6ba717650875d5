#include "prompt_cache.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace qwen {

namespace {

constexpr char kMagic[4] = {'Q', 'G', 'P', 'C'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxTokens = 1u << 24;

uint64_t Fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)v);
  return buf;
}

size_t CommonPrefix(const std::vector<llama_token>& a, const std::vector<llama_token>& b) {
  size_t n = std::min(a.size(), b.size()), i = 0;
  while (i < n && a[i] == b[i]) i++;
  return i;
}

// Reads a saved state's header (and, with `state`, its data). A file of another model, version or a damaged
// one is rejected: the caller ignores it.
bool ReadFile(const std::string& path, const std::string& identity, std::vector<llama_token>& tokens, std::vector<uint8_t>* state, size_t* stateBytes) {
  std::ifstream in(path, std::ios::binary);
  char magic[4];
  uint32_t version = 0, idLen = 0, n = 0;
  uint64_t size = 0;
  if (!in.read(magic, 4) || std::memcmp(magic, kMagic, 4) != 0) return false;
  if (!in.read(reinterpret_cast<char*>(&version), 4) || version != kVersion) return false;
  if (!in.read(reinterpret_cast<char*>(&idLen), 4) || idLen != identity.size()) return false;
  std::string id(idLen, '\0');
  if (!in.read(id.data(), idLen) || id != identity) return false;
  if (!in.read(reinterpret_cast<char*>(&n), 4) || n == 0 || n > kMaxTokens) return false;
  tokens.resize(n);
  if (!in.read(reinterpret_cast<char*>(tokens.data()), n * sizeof(llama_token))) return false;
  if (!in.read(reinterpret_cast<char*>(&size), 8) || size == 0) return false;
  const auto here = in.tellg();
  in.seekg(0, std::ios::end);
  if (in.tellg() - here != (std::streamoff)size) return false;  // truncated or padded
  *stateBytes = size;
  if (!state) return true;
  in.seekg(here);
  state->resize(size);
  return (bool)in.read(reinterpret_cast<char*>(state->data()), size);
}

}  // namespace

PromptCache::PromptCache(PromptCacheConfig config, std::string modelIdentity) : config_(std::move(config)), identity_(std::move(modelIdentity)) {
  if (persistent()) ScanDirectory();
}

void PromptCache::ScanDirectory() {
  std::error_code ec;
  std::filesystem::create_directories(config_.dir, ec);
  const std::string prefix = Hex(Fnv1a(identity_.data(), identity_.size())) + "-";
  for (const auto& f : std::filesystem::directory_iterator(config_.dir, ec)) {
    const std::string name = f.path().filename().string();
    if (name.rfind(prefix, 0) != 0 || f.path().extension() != ".qgpc") continue;
    Entry e;
    if (!ReadFile(f.path().string(), identity_, e.tokens, nullptr, &e.stateBytes)) {
      std::fprintf(stderr, "qwen-gguf: ignoring prompt cache file %s (damaged or of another model)\n", f.path().c_str());
      continue;
    }
    e.file = f.path().string();
    entries_.push_back(std::move(e));
  }
}

bool PromptCache::Covers(const std::vector<llama_token>& tokens) const {
  for (const auto& e : entries_) {
    if (e.tokens.size() >= tokens.size() && CommonPrefix(e.tokens, tokens) == tokens.size()) return true;
  }
  return false;
}

void PromptCache::Store(const std::vector<llama_token>& tokens, std::vector<uint8_t>&& state) {
  if (state.size() > config_.maxBytes) return;
  // An entry that is a prefix of the new one is superseded by it.
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->tokens.size() <= tokens.size() && CommonPrefix(it->tokens, tokens) == it->tokens.size()) {
      bytes_ -= it->state.size();
      if (!it->file.empty()) std::remove(it->file.c_str());
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
  Entry e;
  e.tokens = tokens;
  e.stateBytes = state.size();
  e.state = std::move(state);
  bytes_ += e.state.size();
  if (persistent()) WriteFile(e);
  entries_.push_front(std::move(e));
  Evict();
}

void PromptCache::Evict() {
  // Memory budget: drop the in-memory copy of the least recently used entries (a persisted one stays on disk).
  for (auto it = entries_.rbegin(); it != entries_.rend() && bytes_ > config_.maxBytes; ++it) {
    bytes_ -= it->state.size();
    it->state.clear();
    it->state.shrink_to_fit();
  }
  entries_.remove_if([](const Entry& e) { return e.state.empty() && e.file.empty(); });
}

void PromptCache::WriteFile(Entry& e) {
  const std::string name = Hex(Fnv1a(identity_.data(), identity_.size())) + "-" +
                           Hex(Fnv1a(e.tokens.data(), e.tokens.size() * sizeof(llama_token))) + ".qgpc";
  const std::string path = (std::filesystem::path(config_.dir) / name).string();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    const uint32_t idLen = (uint32_t)identity_.size(), n = (uint32_t)e.tokens.size();
    const uint64_t size = e.state.size();
    out.write(kMagic, 4);
    out.write(reinterpret_cast<const char*>(&kVersion), 4);
    out.write(reinterpret_cast<const char*>(&idLen), 4);
    out.write(identity_.data(), idLen);
    out.write(reinterpret_cast<const char*>(&n), 4);
    out.write(reinterpret_cast<const char*>(e.tokens.data()), n * sizeof(llama_token));
    out.write(reinterpret_cast<const char*>(&size), 8);
    out.write(reinterpret_cast<const char*>(e.state.data()), size);
    if (!out) {
      std::remove(tmp.c_str());
      std::fprintf(stderr, "qwen-gguf: could not write the prompt cache file %s\n", tmp.c_str());
      return;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return;
  }
  e.file = path;
}

const PromptCache::Entry* PromptCache::Find(const std::vector<llama_token>& prompt, size_t* common) {
  Entry* best = nullptr;
  size_t bestLen = 0;
  for (auto& e : entries_) {
    size_t n = CommonPrefix(e.tokens, prompt);
    if (n > bestLen) best = &e, bestLen = n;
  }
  *common = bestLen;
  return best;
}

bool PromptCache::Load(const Entry* entry, std::vector<uint8_t>& out) {
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) { return &e == entry; });
  if (it == entries_.end()) return false;
  if (!it->state.empty()) {
    out = it->state;
  } else {
    std::vector<llama_token> tokens;
    size_t size = 0;
    if (!ReadFile(it->file, identity_, tokens, &out, &size) || tokens != it->tokens) {
      std::fprintf(stderr, "qwen-gguf: ignoring prompt cache file %s (changed or damaged)\n", it->file.c_str());
      entries_.erase(it);
      return false;
    }
    it->state = out;  // keep it in memory from now on, within the budget
    bytes_ += out.size();
  }
  entries_.splice(entries_.begin(), entries_, it);
  Evict();
  return true;
}

}  // namespace qwen
