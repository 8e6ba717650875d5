// SequenceSampler: the sampling state of one generation (llama.cpp sampler chain, optional grammar, logit bias,
// Qwen3 thinking gate and reasoning budget). Owned and used by the engine thread only.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "llama.h"

struct llama_grammar;
struct llama_grammar_element;

namespace qwen {

struct SamplingOptions {
  int32_t maxTokens = 512;
  float temperature = 0.8f;
  int32_t topK = 40;
  float topP = 0.95f;
  float minP = 0.05f;
  float repeatPenalty = 1.0f;
  float presencePenalty = 0.0f;
  float frequencyPenalty = 0.0f;
  int32_t penaltyLastN = 64;
  uint32_t seed = LLAMA_DEFAULT_SEED;
  bool ignoreEos = false;
  std::vector<std::string> stop;
  std::map<llama_token, float> logitBias;
  std::string grammar;          // GBNF; empty: unconstrained
  int32_t logprobs = -1;        // -1: none; else the number of alternatives (top_logprobs) per token
  // Qwen3 thinking: the token ids of <think> / </think> (-1 when the vocabulary has none).
  llama_token thinkEnd = -1;
  bool grammarAfterThink = false;  // the grammar applies only after </think> (thinking on)
  int32_t reasoningBudget = -1;    // tokens before </think> is forced; -1 unlimited
};

struct TokenLogprob {
  llama_token token;
  float logprob;
  std::vector<std::pair<llama_token, float>> top;
};

struct GrammarStateHash {
  size_t operator()(const std::vector<uint64_t>& key) const;
};

// Allowed-token masks of one grammar text by parse state (one bit per token id), shared by every generation under
// that grammar: the server's response_format repeats one schema across requests, and computing a mask walks the
// grammar over all 151,936 tokens (up to ~20 ms inside a JSON string, more than a 0.6B model's whole token).
struct GrammarMasks {
  static constexpr size_t kMaxStates = 128;        // × 19 KB
  static constexpr size_t kWorthKeeping = 16384;  // tokens left by the prefilter from which a mask is kept
  std::unordered_map<std::vector<uint64_t>, std::vector<uint64_t>, GrammarStateHash> byState;
};

// What grammars need to know of a vocabulary, built once per engine on first use (a few MB for Qwen's 151,936),
// and the masks of the grammars used last. Engine thread only.
struct GrammarVocab {
  explicit GrammarVocab(const llama_vocab* vocab);
  // The masks of a grammar text; the least recently used of more than kMaxGrammars grammars are dropped.
  std::shared_ptr<GrammarMasks> MasksFor(const std::string& grammar);
  static constexpr size_t kMaxGrammars = 8;
  std::list<std::pair<std::string, std::shared_ptr<GrammarMasks>>> recentMasks;  // most recent first

  std::vector<std::string> pieces;  // every token's output bytes
  // Tokens grouped by the first code point of their text as llama.cpp's grammar decodes it, and within a group
  // ordered by the second: a grammar state whose every parse stack expects a character set rules out whole groups
  // without walking their tokens.
  static constexpr uint32_t kNoSecond = 0xFFFFFFFF;  // a one-character text (or no complete second character)
  std::vector<uint32_t> groupCodePoint;  // ascending
  std::vector<uint32_t> groupBegin;      // into byFirstCodePoint; one more entry than groups
  std::vector<llama_token> byFirstCodePoint;
  std::vector<uint32_t> secondCodePoint;  // of each token of byFirstCodePoint
  // Tokens the grammar must always see: end-of-generation and control tokens, and texts without a complete first
  // character (a lone UTF-8 lead byte, an invalid byte).
  std::vector<llama_token> alwaysCheck;
};

class SequenceSampler {
 public:
  // Throws std::runtime_error when the grammar does not parse. `grammarVocab` is needed only with a grammar and
  // must outlive the sampler.
  SequenceSampler(const llama_vocab* vocab, const SamplingOptions& options, const std::vector<llama_token>& prompt,
                  GrammarVocab* grammarVocab);
  ~SequenceSampler();
  SequenceSampler(const SequenceSampler&) = delete;
  SequenceSampler& operator=(const SequenceSampler&) = delete;

  // Picks the next token from a logits row and records it (penalty history, grammar state, thinking state).
  // Throws std::runtime_error when the grammar cannot accept the token.
  llama_token Sample(const float* logits);
  // log-probability of `token` and of the top alternatives under the raw logits row (before sampling transforms).
  TokenLogprob Logprobs(const float* logits, llama_token token, int32_t top) const;

 private:
  bool GrammarActive() const { return grammar_ && (!options_.grammarAfterThink || thinkClosed_); }
  void Fill(const float* logits);
  // UTF-8 state after appending `token`'s bytes to the output, or -1 when that makes the text invalid UTF-8.
  // llama.cpp's grammar decodes invalid bytes leniently, so under a grammar such tokens are excluded here.
  int Utf8After(llama_token token) const;
  // Which tokens the grammar (and the UTF-8 rule above) allows in its current state, one bit per token id.
  const std::vector<uint64_t>& AllowedTokens();
  std::vector<uint64_t> MaskOf(std::vector<llama_token_data>& candidates) const;  // the grammar's verdict on them
  // The tokens that can pass the grammar's current state: the groups whose first character some parse stack
  // accepts, and the tokens it must always see; every token when a stack expects something other than a character.
  void GrammarCandidates(std::vector<llama_token_data>& out);

  // The grammar's parse state in terms of its rules (rule index, element index) rather than addresses, so that it
  // names the same state in every instance of the same grammar text.
  std::vector<uint64_t> GrammarState() const;

  GrammarVocab* grammarVocab_;  // the engine's
  int utf8Need_ = 0;  // continuation bytes the output still expects
  const llama_vocab* vocab_;
  SamplingOptions options_;
  int32_t nVocab_;
  llama_sampler* chain_ = nullptr;
  // llama.cpp's grammar itself (its internal API, llama-grammar.h) rather than its sampler wrapper: the masks below
  // are keyed by its parse stacks.
  llama_grammar* grammar_ = nullptr;
  std::shared_ptr<GrammarMasks> masks_;
  std::vector<std::pair<const llama_grammar_element*, uint32_t>> ruleStarts_;  // ascending addresses, rule index
  std::vector<llama_token_data> maskScratch_;
  std::vector<uint64_t> cheapMask_;  // the last mask not worth keeping
  bool plainGreedy_ = false;
  bool thinkClosed_ = false;
  int32_t generated_ = 0;
  std::vector<llama_token_data> candidates_;
};

// Index of the largest value (SIMD max, then an early-exit index pass).
llama_token ArgMax(const float* row, int32_t n);
// log(sum(exp(row))) computed stably.
float LogSumExp(const float* row, int32_t n);

}  // namespace qwen
