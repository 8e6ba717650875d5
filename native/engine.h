// Engine: the one thread that owns a llama_context and runs every request on it with continuous batching.
// Each step: admit waiting requests (prefix cache lookup) → build one llama_batch (one token per generating
// sequence, then prompt chunks) → llama_decode once → sample or score every sequence at its row → post all
// events of the step to JS at once → retire finished requests (their sequence stays cached, idle).
// Pure C++: the N-API side (AddonContext) hands requests in and receives events through a sink.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "llama.h"
#include "prompt_cache.h"
#include "sampler.h"

namespace qwen {

enum class RequestKind { Generate, Logits, Score };

struct EngineRequest {
  uint64_t id = 0;
  RequestKind kind = RequestKind::Generate;
  std::vector<llama_token> prompt;
  SamplingOptions sampling;                      // Generate
  std::vector<std::vector<llama_token>> labels;  // Score: continuations scored after the prompt
  bool cachePrompt = true;                       // start from the longest cached prefix
};

struct EngineEvent {
  enum Kind { Start, Piece, Done, Error } kind;
  uint64_t id = 0;
  std::string text;  // piece text; error message
  std::string code;  // done: finish reason ("stop" | "length" | "abort"); error: error code
  std::vector<llama_token> tokens;
  std::vector<TokenLogprob> logprobs;
  std::vector<float> floats;  // Logits: rows × vocab; Score: one log-probability per label token, label after label
  double promptMs = 0, genMs = 0;
  int32_t promptTokens = 0, cachedTokens = 0;
};

struct EngineConfig {
  int32_t parallel = 4;        // generations decoding together
  size_t contextSize = 4096;   // tokens one generation may hold (prompt + reply)
  size_t poolCells = 16384;    // KV cells shared by all sequences (llama n_ctx)
  int32_t batchSize = 512;     // tokens per decode step
  int32_t maxOutputs = 32;     // logits rows per decode step
  int32_t sequences = 64;      // llama sequence ids (generations, idle cached prompts, label scoring)
  PromptCacheConfig promptCache;
  std::string modelIdentity;   // names saved prompt states (disk prompt cache)
};

struct EngineStats {
  int32_t active = 0, queued = 0, idleSequences = 0;
  size_t cachedTokens = 0, cellsUsed = 0;
  uint64_t decodes = 0, promptCacheHits = 0, promptCacheStored = 0;
  size_t promptCacheBytes = 0;
};

class Engine {
 public:
  using Sink = std::function<void(std::vector<EngineEvent>&&)>;
  Engine(llama_context* ctx, const llama_vocab* vocab, EngineConfig config, Sink sink);
  ~Engine();  // stops and joins

  void Submit(EngineRequest request);
  // Ends a waiting or running request between steps (its sequence is kept as cached, idle).
  void Cancel(uint64_t id);
  // Stops the thread: the running decode is aborted (abort callback), every request ends with ERR_DISPOSED.
  void Stop();
  EngineStats Stats();
  // The abort flag wired to llama_set_abort_callback: true only while stopping.
  std::atomic<bool>& abortFlag() { return stopping_; }

 private:
  struct Sequence;
  struct Active;
  void Run();
  void Step(std::vector<EngineEvent>& events);
  bool Admit(EngineRequest& request, std::vector<EngineEvent>& events);
  Sequence* EmptySequence(const Sequence* keep);  // a sequence id holding no tokens, or null
  std::vector<size_t> AttachLabels(Active& a, int32_t spareTokens, int32_t spareRows);
  void ReleaseLabelSequence(Sequence*& seq);      // emptied and given back
  Sequence* FreeSequence(const Sequence* keep);     // EmptySequence, else the LRU idle one evicted
  void ClearSequence(Sequence& seq, bool saveState);
  void TrimSequence(Sequence& seq, size_t keep);
  void CopyPrefix(Sequence& from, Sequence& to, size_t n);
  bool EnsureRoom(size_t tokens);
  void Finish(Active& a, const std::string& reason, std::vector<EngineEvent>& events);
  void Fail(Active& a, const std::string& code, const std::string& message, std::vector<EngineEvent>& events);
  void Retire(Active& a);
  void SampleGeneration(Active& a, int32_t row, std::vector<EngineEvent>& events);
  void PublishStats();

  // cell bookkeeping: a mirror of llama's unified KV cache (cells are shared between sequences by seq_cp)
  uint32_t NewCell();
  void ReleaseCells(const std::vector<uint32_t>& cells, size_t from);

  llama_context* ctx_;
  const llama_vocab* vocab_;
  llama_memory_t mem_;
  EngineConfig config_;
  Sink sink_;
  int32_t nVocab_;
  llama_batch batch_;

  std::vector<std::unique_ptr<Sequence>> sequences_;
  std::list<std::unique_ptr<Active>> actives_;  // admission order
  std::vector<uint32_t> cellRefs_;
  std::vector<uint32_t> freeCellIds_;
  size_t cellsUsed_ = 0;
  uint64_t useClock_ = 0;
  std::unique_ptr<PromptCache> promptCache_;
  std::unique_ptr<GrammarVocab> grammarVocab_;  // null until a grammar is used
  // Tokens a second that decodes with prompt chunks in them achieved (moving average; 0 until measured): sizes the
  // chunk that runs beside generating sequences so that their next token waits about kChunkTargetMs at most.
  double promptRate_ = 0;

  std::mutex mutex_;  // guards pending_, cancels_, stats_
  std::condition_variable wake_;
  std::deque<EngineRequest> pending_;
  std::unordered_set<uint64_t> cancels_;
  EngineStats stats_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace qwen
