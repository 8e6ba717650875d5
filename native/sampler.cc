#include "sampler.h"

#include <algorithm>
#include <cmath>
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

std::vector<std::string> TokenPieces(const llama_vocab* vocab) {
  const int32_t n = llama_vocab_n_tokens(vocab);
  std::vector<std::string> pieces(n);
  char buf[256];
  for (int32_t i = 0; i < n; i++) {
    int32_t len = llama_token_to_piece(vocab, i, buf, sizeof buf, 0, false);
    if (len > 0) pieces[i].assign(buf, len);
  }
  return pieces;
}

int SequenceSampler::Utf8After(llama_token token) const {
  int need = utf8Need_;
  for (unsigned char c : (*pieces_)[token]) {
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
                                 const std::vector<std::string>* pieces)
    : vocab_(vocab), options_(o), nVocab_(llama_vocab_n_tokens(vocab)), pieces_(pieces) {
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
    grammar_ = llama_sampler_init_grammar(vocab, o.grammar.c_str(), "root");
    if (!grammar_) {
      llama_sampler_free(chain_);
      chain_ = nullptr;
      throw std::runtime_error("the grammar does not parse");
    }
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
  if (grammar_) llama_sampler_free(grammar_);
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
      // Grammar last, and only when needed (as llama.cpp's common sampler does): check the chosen token alone and
      // constrain the whole row only if the grammar rejects it. Keeps a grammar's cost per token small.
      llama_token_data single{token, 1.0f, 0.0f};
      llama_token_data_array one{&single, 1, -1, false};
      llama_sampler_apply(grammar_, &one);
      if (single.logit == -INFINITY || Utf8After(token) < 0) {
        Fill(logits);
        llama_token_data_array all{candidates_.data(), candidates_.size(), -1, false};
        llama_sampler_apply(grammar_, &all);
        for (size_t i = 0; i < all.size; i++) {
          if (all.data[i].logit != -INFINITY && Utf8After(all.data[i].id) < 0) all.data[i].logit = -INFINITY;
        }
        llama_sampler_apply(chain_, &all);
        if (all.selected < 0 || all.data[all.selected].logit == -INFINITY) throw std::runtime_error("the grammar allows no token here");
        token = all.data[all.selected].id;
      }
    }
  }
  if (!plainGreedy_) llama_sampler_accept(chain_, token);
  if (GrammarActive()) {
    llama_sampler_accept(grammar_, token);  // throws when the grammar cannot take the token
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
