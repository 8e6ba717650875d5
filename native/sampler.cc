#include "sampler.h"

#include "llama-grammar.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace qwen {

llama_token ArgMax(const float* row, int32_t n) {
  float best = row[0];
#pragma omp simd reduction(max : best)
  for (int32_t i = 0; i < n; i++) best = row[i] > best ? row[i] : best;
  for (int32_t i = 0; i < n; i++) {
    if (row[i] == best) return i;
  }
  return 0;
}

float LogSumExp(const float* row, int32_t n) {
  float max = row[0];
#pragma omp simd reduction(max : max)
  for (int32_t i = 0; i < n; i++) max = row[i] > max ? row[i] : max;
  double sum = 0;
  for (int32_t i = 0; i < n; i++) sum += std::exp((double)row[i] - max);
  return max + (float)std::log(sum);
}

namespace {
// QWEN_GGUF_VERIFY_GRAMMAR_MASKS (tests only): every grammar mask is also computed over the whole vocabulary and
// compared; a difference fails the request. 0 off, 1 on, 2 ("corrupt") on with one bit flipped first.
int VerifyGrammarMasks() {
  static const int verify = [] {
    const char* v = std::getenv("QWEN_GGUF_VERIFY_GRAMMAR_MASKS");
    return !v ? 0 : std::string(v) == "corrupt" ? 2 : 1;
  }();
  return verify;
}
}  // namespace

namespace {

// The code point at b[at] as llama-grammar.cpp's decode_utf8 reads it (the lead byte sets the length, continuation
// bytes are taken as they are, 6 bits each, a NUL ends the text); the bytes it takes, or 0 when the text has no
// complete character there.
int CodePointAt(const unsigned char* b, int len, int at, uint32_t* cp) {
  static const int kLength[] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4};
  if (at >= len || b[at] == 0) return 0;
  const int need = kLength[b[at] >> 4];
  if (need == 0 || at + need > len) return 0;
  uint32_t value = b[at] & ((1u << (8 - need)) - 1);
  for (int k = 1; k < need; k++) {
    if (b[at + k] == 0) return 0;
    value = (value << 6) + (b[at + k] & 0x3F);
  }
  *cp = value;
  return need;
}

// The character sets at the tops of a grammar's parse stacks, read as llama-grammar.cpp's llama_grammar_match_char
// reads them. A character no set accepts cannot start any text the grammar takes next.
struct StackTops {
  struct Set {
    bool positive;
    bool any = false;
    std::vector<std::pair<uint32_t, uint32_t>> ranges;
  };
  std::vector<Set> sets;
  bool everything = false;  // a stack expects a token element (<[id]>): characters decide nothing

  explicit StackTops(const llama_grammar_stacks& stacks) {
    for (const auto& stack : stacks) {
      if (stack.empty()) continue;  // a finished parse takes no more text (end-of-generation is always checked)
      const llama_grammar_element* pos = stack.back();
      if (pos->type != LLAMA_GRETYPE_CHAR && pos->type != LLAMA_GRETYPE_CHAR_NOT && pos->type != LLAMA_GRETYPE_CHAR_ANY) {
        everything = true;
        return;
      }
      Set set{pos->type != LLAMA_GRETYPE_CHAR_NOT};
      do {
        if (pos[1].type == LLAMA_GRETYPE_CHAR_RNG_UPPER) {
          set.ranges.emplace_back(pos->value, pos[1].value);
          pos += 2;
        } else if (pos->type == LLAMA_GRETYPE_CHAR_ANY) {
          set.any = true;
          pos += 1;
        } else {
          set.ranges.emplace_back(pos->value, pos->value);
          pos += 1;
        }
      } while (pos->type == LLAMA_GRETYPE_CHAR_ALT);
      sets.push_back(std::move(set));
    }
  }

  bool Accepts(uint32_t cp) const {
    for (const auto& set : sets) {
      bool found = set.any;
      for (const auto& [lo, hi] : set.ranges) found = found || (lo <= cp && cp <= hi);
      if (found == set.positive) return true;
    }
    return false;
  }
};

}  // namespace

GrammarVocab::GrammarVocab(const llama_vocab* vocab) {
  const int32_t n = llama_vocab_n_tokens(vocab);
  pieces.resize(n);
  struct Entry { uint32_t first, second; llama_token id; };
  std::vector<Entry> entries;
  entries.reserve(n);
  char buf[256];
  for (int32_t i = 0; i < n; i++) {
    int32_t len = llama_token_to_piece(vocab, i, buf, sizeof buf, 0, false);
    if (len > 0) pieces[i].assign(buf, len);
    // the text the grammar decodes (its token_to_piece renders special tokens too)
    len = llama_token_to_piece(vocab, i, buf, sizeof buf, 0, true);
    const auto* b = reinterpret_cast<const unsigned char*>(buf);
    uint32_t first = 0, second = kNoSecond;
    const int taken = len > 0 ? CodePointAt(b, len, 0, &first) : 0;
    if (taken == 0 || llama_vocab_is_eog(vocab, i)) {
      alwaysCheck.push_back(i);
      continue;
    }
    if (CodePointAt(b, len, taken, &second) == 0) second = kNoSecond;
    entries.push_back({first, second, i});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.first != b.first ? a.first < b.first : a.second != b.second ? a.second < b.second : a.id < b.id;
  });
  for (size_t i = 0; i < entries.size(); i++) {
    if (i == 0 || entries[i].first != entries[i - 1].first) {
      groupCodePoint.push_back(entries[i].first);
      groupBegin.push_back((uint32_t)i);
    }
    byFirstCodePoint.push_back(entries[i].id);
    secondCodePoint.push_back(entries[i].second);
  }
  groupBegin.push_back((uint32_t)entries.size());
}

int SequenceSampler::Utf8After(llama_token token) const {
  int need = utf8Need_;
  for (unsigned char c : grammarVocab_->pieces[token]) {
    if (need > 0) {
      if ((c & 0xC0) != 0x80) return -1;
      need--;
    } else if (c < 0x80) {
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
    } else {
      return -1;  // a stray continuation byte, an overlong lead (C0, C1) or beyond U+10FFFF
    }
  }
  return need;
}

SequenceSampler::SequenceSampler(const llama_vocab* vocab, const SamplingOptions& o, const std::vector<llama_token>& prompt,
                                 GrammarVocab* grammarVocab)
    : grammarVocab_(grammarVocab), vocab_(vocab), options_(o), nVocab_(llama_vocab_n_tokens(vocab)) {
  const bool penalties = o.repeatPenalty != 1.0f || o.presencePenalty != 0.0f || o.frequencyPenalty != 0.0f;
  // Greedy without penalties, bias or grammar needs no candidate list: an argmax over the row saves building a
  // 151,936-entry array every token (about half a millisecond on small models).
  plainGreedy_ = o.temperature <= 0.0f && !penalties && o.logitBias.empty() && o.grammar.empty() && o.reasoningBudget < 0;
  chain_ = llama_sampler_chain_init(llama_sampler_chain_default_params());
  if (!o.logitBias.empty()) {
    std::vector<llama_logit_bias> bias;
    for (const auto& [token, value] : o.logitBias) bias.push_back({token, value});
    llama_sampler_chain_add(chain_, llama_sampler_init_logit_bias(nVocab_, (int32_t)bias.size(), bias.data()));
  }
  if (penalties) {
    llama_sampler_chain_add(chain_, llama_sampler_init_penalties(nVocab_, o.penaltyLastN, o.repeatPenalty, o.frequencyPenalty, o.presencePenalty));
  }
  if (o.temperature <= 0.0f) {
    llama_sampler_chain_add(chain_, llama_sampler_init_greedy());
  } else {
    if (o.topK > 0) llama_sampler_chain_add(chain_, llama_sampler_init_top_k(o.topK));
    if (o.topP < 1.0f) llama_sampler_chain_add(chain_, llama_sampler_init_top_p(o.topP, 1));
    if (o.minP > 0.0f) llama_sampler_chain_add(chain_, llama_sampler_init_min_p(o.minP, 1));
    llama_sampler_chain_add(chain_, llama_sampler_init_temp(o.temperature));
    llama_sampler_chain_add(chain_, llama_sampler_init_dist(o.seed));
  }
  if (penalties) {
    for (llama_token t : prompt) llama_sampler_accept(chain_, t);
  }
  if (!o.grammar.empty()) {
    grammar_ = llama_grammar_init_impl(vocab, o.grammar.c_str(), "root", false, nullptr, 0, nullptr, 0);
    if (!grammar_) {
      llama_sampler_free(chain_);
      chain_ = nullptr;
      throw std::runtime_error("the grammar does not parse");
    }
    masks_ = grammarVocab_->MasksFor(o.grammar);
    for (uint32_t r = 0; r < grammar_->rules.size(); r++) ruleStarts_.emplace_back(grammar_->rules[r].data(), r);
    std::sort(ruleStarts_.begin(), ruleStarts_.end());
  }
  // A prompt that already closed the thinking block (Qwen3 with thinking off renders "<think>\n\n</think>\n\n").
  if (o.thinkEnd >= 0 && std::find(prompt.begin(), prompt.end(), o.thinkEnd) != prompt.end()) {
    // only the last turn matters: the generation prompt ends with the closed block
    auto lastEnd = std::find(prompt.rbegin(), prompt.rend(), o.thinkEnd);
    thinkClosed_ = lastEnd != prompt.rend() && (size_t)(lastEnd - prompt.rbegin()) < 8;
  }
}

SequenceSampler::~SequenceSampler() {
  if (chain_) llama_sampler_free(chain_);
  if (grammar_) llama_grammar_free_impl(grammar_);
}

size_t GrammarStateHash::operator()(const std::vector<uint64_t>& key) const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the words
  for (uint64_t w : key) h = (h ^ w) * 1099511628211ull;
  return (size_t)h;
}

std::shared_ptr<GrammarMasks> GrammarVocab::MasksFor(const std::string& grammar) {
  for (auto it = recentMasks.begin(); it != recentMasks.end(); ++it) {
    if (it->first == grammar) {
      recentMasks.splice(recentMasks.begin(), recentMasks, it);
      return it->second;
    }
  }
  recentMasks.emplace_front(grammar, std::make_shared<GrammarMasks>());
  if (recentMasks.size() > kMaxGrammars) recentMasks.pop_back();  // a sampler still using it keeps its own reference
  return recentMasks.front().second;
}

std::vector<uint64_t> SequenceSampler::GrammarState() const {
  // llama.cpp leaves the last character's value in partial_utf8 when it is complete (n_remain 0); only an
  // unfinished character's bits matter
  const llama_partial_utf8 partial = grammar_->partial_utf8;
  std::vector<uint64_t> key{partial.n_remain > 0 ? partial.value : 0, (uint64_t)(int64_t)partial.n_remain, (uint64_t)utf8Need_};
  for (const auto& stack : grammar_->stacks) {
    key.push_back(stack.size());
    for (const llama_grammar_element* e : stack) {
      auto rule = std::upper_bound(ruleStarts_.begin(), ruleStarts_.end(), e, [](const llama_grammar_element* p, const auto& r) { return p < r.first; });
      --rule;  // stack elements always point into a rule
      key.push_back((uint64_t)rule->second << 32 | (uint64_t)(e - rule->first));
    }
  }
  return key;
}

std::vector<uint64_t> SequenceSampler::MaskOf(std::vector<llama_token_data>& candidates) const {
  llama_token_data_array array{candidates.data(), candidates.size(), -1, false};
  llama_grammar_apply_impl(*grammar_, &array);
  std::vector<uint64_t> mask((nVocab_ + 63) / 64, 0);
  for (const auto& c : candidates) {
    // llama.cpp's grammar decodes invalid bytes leniently: tokens that would make the output invalid UTF-8 are out
    if (c.logit != -INFINITY && Utf8After(c.id) >= 0) mask[c.id >> 6] |= 1ull << (c.id & 63);
  }
  return mask;
}

const std::vector<uint64_t>& SequenceSampler::AllowedTokens() {
  std::vector<uint64_t> key = GrammarState();
  auto found = masks_->byState.find(key);
  const std::vector<uint64_t>* mask;
  if (found != masks_->byState.end()) {
    mask = &found->second;
  } else {
    GrammarCandidates(maskScratch_);
    if (maskScratch_.size() < GrammarMasks::kWorthKeeping) {
      // few tokens passed the prefilter (between JSON fields, in bounded whitespace): cheap to compute again, and
      // such states are many (each count of a repetition is one)
      cheapMask_ = MaskOf(maskScratch_);
      mask = &cheapMask_;
    } else {
      if (masks_->byState.size() >= GrammarMasks::kMaxStates) masks_->byState.clear();  // bound the memory
      mask = &masks_->byState.emplace(std::move(key), MaskOf(maskScratch_)).first->second;
    }
  }
  if (VerifyGrammarMasks()) {
    // test mode (test/grammar.test.ts): the mask, computed now or by an earlier generation under the same grammar,
    // must equal the grammar's verdict on every token
    maskScratch_.resize(nVocab_);
    for (int32_t i = 0; i < nVocab_; i++) maskScratch_[i] = {i, 0.0f, 0.0f};
    std::vector<uint64_t> copy = *mask;
    if (VerifyGrammarMasks() == 2) copy[0] ^= 1;  // "corrupt": proves a difference is caught
    if (MaskOf(maskScratch_) != copy) throw std::runtime_error("grammar mask differs from the grammar's verdict on the whole vocabulary");
  }
  return *mask;
}

void SequenceSampler::GrammarCandidates(std::vector<llama_token_data>& out) {
  out.clear();
  const GrammarVocab& v = *grammarVocab_;
  const StackTops tops(grammar_->stacks);
  // an invalid byte sequence, or a token element: no prefilter
  if (grammar_->partial_utf8.n_remain < 0 || tops.everything) {
    out.resize(nVocab_);
    for (int32_t i = 0; i < nVocab_; i++) out[i] = {i, 0.0f, 0.0f};
    return;
  }
  for (llama_token t : v.alwaysCheck) out.push_back({t, 0.0f, 0.0f});
  // A character split across tokens: only a text that starts with its continuation bytes can follow, and those
  // texts have no complete first character (they are all in alwaysCheck; any other is an invalid sequence).
  if (grammar_->partial_utf8.n_remain > 0) return;
  for (size_t g = 0; g < v.groupCodePoint.size(); g++) {
    if (!tops.Accepts(v.groupCodePoint[g])) continue;
    const uint32_t begin = v.groupBegin[g], end = v.groupBegin[g + 1];
    const auto take = [&](uint32_t k) { out.push_back({v.byFirstCodePoint[k], 0.0f, 0.0f}); };
    if (end - begin < 64) {
      for (uint32_t k = begin; k < end; k++) take(k);
      continue;
    }
    // A large group (a space starts 40% of a BPE vocabulary): filter by the second character too, against the
    // stacks after the first (their union over all stacks, so never narrower than the grammar's own walk).
    llama_grammar_stacks saved = grammar_->stacks;
    llama_grammar_accept(grammar_, v.groupCodePoint[g]);
    const StackTops next(grammar_->stacks);
    grammar_->stacks = std::move(saved);
    uint32_t lastSecond = GrammarVocab::kNoSecond;
    bool lastAccepted = true;
    for (uint32_t k = begin; k < end; k++) {
      const uint32_t second = v.secondCodePoint[k];
      if (second != lastSecond) {
        lastSecond = second;
        lastAccepted = second == GrammarVocab::kNoSecond || next.everything || next.Accepts(second);
      }
      if (lastAccepted) take(k);
    }
  }
}

void SequenceSampler::Fill(const float* logits) {
  candidates_.resize(nVocab_);
  for (int32_t i = 0; i < nVocab_; i++) candidates_[i] = {i, logits[i], 0.0f};
}

llama_token SequenceSampler::Sample(const float* logits) {
  llama_token token;
  const bool forceThinkEnd = options_.thinkEnd >= 0 && !thinkClosed_ && options_.reasoningBudget >= 0 && generated_ >= options_.reasoningBudget;
  if (forceThinkEnd) {
    token = options_.thinkEnd;
  } else if (plainGreedy_) {
    token = ArgMax(logits, nVocab_);
  } else {
    Fill(logits);
    llama_token_data_array arr{candidates_.data(), candidates_.size(), -1, false};
    llama_sampler_apply(chain_, &arr);
    token = arr.data[arr.selected].id;
    if (GrammarActive()) {
      // Grammar last, and only when needed (as llama.cpp's common sampler does): check the chosen token and
      // constrain the whole row only if the grammar rejects it. Keeps a grammar's cost per token small.
      if (VerifyGrammarMasks()) AllowedTokens();  // test mode: check a mask at every step, not only at rejections
      llama_token_data single{token, 1.0f, 0.0f};
      llama_token_data_array one{&single, 1, -1, false};
      llama_grammar_apply_impl(*grammar_, &one);
      if (single.logit == -INFINITY || Utf8After(token) < 0) {
        const std::vector<uint64_t>& allowed = AllowedTokens();
        const auto ok = [&](llama_token t) { return (allowed[t >> 6] >> (t & 63)) & 1; };
        Fill(logits);
        for (auto& c : candidates_) {
          if (!ok(c.id)) c.logit = -INFINITY;
        }
        llama_token_data_array all{candidates_.data(), candidates_.size(), -1, false};
        llama_sampler_apply(chain_, &all);
        if (all.selected < 0 || all.data[all.selected].logit == -INFINITY) throw std::runtime_error("the grammar allows no token here");
        token = all.data[all.selected].id;
      }
    }
  }
  if (!plainGreedy_) llama_sampler_accept(chain_, token);
  if (GrammarActive()) {
    llama_grammar_accept_impl(*grammar_, token);  // throws when the grammar cannot take the token
    utf8Need_ = std::max(0, Utf8After(token));
  }
  if (token == options_.thinkEnd) thinkClosed_ = true;
  generated_++;
  return token;
}

TokenLogprob SequenceSampler::Logprobs(const float* logits, llama_token token, int32_t top) const {
  const float lse = LogSumExp(logits, nVocab_);
  TokenLogprob out{token, logits[token] - lse, {}};
  if (top > 0) {
    std::vector<std::pair<float, llama_token>> best;
    best.reserve(top + 1);
    for (int32_t i = 0; i < nVocab_; i++) {
      if ((int32_t)best.size() == top && logits[i] <= best.back().first) continue;
      auto at = std::upper_bound(best.begin(), best.end(), std::make_pair(logits[i], i), [](const auto& a, const auto& b) { return a.first > b.first; });
      best.insert(at, {logits[i], i});
      if ((int32_t)best.size() > top) best.pop_back();
    }
    for (const auto& [value, id] : best) out.top.push_back({id, value - lse});
  }
  return out;
}

}  // namespace qwen
