// SequenceSampler: the sampling state of one generation (llama.cpp sampler chain, optional grammar, logit bias,
// Qwen3 thinking gate and reasoning budget). Owned and used by the engine thread only.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "llama.h"

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

class SequenceSampler {
 public:
  // Throws std::runtime_error when the grammar does not parse. `pieces` (every token's bytes, see TokenPieces) is
  // needed only with a grammar and must outlive the sampler.
  SequenceSampler(const llama_vocab* vocab, const SamplingOptions& options, const std::vector<llama_token>& prompt,
                  const std::vector<std::string>* pieces);
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

  const std::vector<std::string>* pieces_;  // bytes of every token (the engine's table)
  int utf8Need_ = 0;  // continuation bytes the output still expects
  const llama_vocab* vocab_;
  SamplingOptions options_;
  int32_t nVocab_;
  llama_sampler* chain_ = nullptr;
  llama_sampler* grammar_ = nullptr;
  bool plainGreedy_ = false;
  bool thinkClosed_ = false;
  int32_t generated_ = 0;
  std::vector<llama_token_data> candidates_;
};

// The bytes of every token of a vocabulary (a few MB for Qwen's 151,936).
std::vector<std::string> TokenPieces(const llama_vocab* vocab);

// Index of the largest value (SIMD max, then an early-exit index pass).
llama_token ArgMax(const float* row, int32_t n);
// log(sum(exp(row))) computed stably.
float LogSumExp(const float* row, int32_t n);

}  // namespace qwen
