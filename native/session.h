// AddonSession: one llama_context (KV cache + compute buffers) on a model, and the generation thread that
// decodes on it. A generation runs on its own std::thread, never on a libuv pool thread, and hands text to JS
// through a thread-safe function without waiting for JS between tokens.
#pragma once

#include <napi.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ggml-cpu.h"
#include "llama.h"

namespace qwen {

class AddonModel;

struct SamplingOptions {
  int32_t maxTokens = 256;
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
  bool cachePrompt = true;
  std::vector<std::string> stop;
};

class AddonSession : public Napi::ObjectWrap<AddonSession> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonSession(const Napi::CallbackInfo& info);
  ~AddonSession() override;

  // Stops a running generation (within one decode step), waits for its thread and frees the context.
  void Shutdown();
  // Stops and joins every running generation thread in the process. Registered with std::atexit: process.exit()
  // does not always run env cleanup hooks, and a generation thread still decoding while exit() runs static
  // destructors crashes the process.
  static void StopAllAtExit();

 private:
  friend class ContextWorker;
  friend class LogitsWorker;
  friend class Generation;
  Napi::Value InitContext(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Logits(const Napi::CallbackInfo& info);
  void Abort(const Napi::CallbackInfo& info);
  void Dispose(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);

  void RequireIdle(Napi::Env env);
  void JoinGeneration();
  // Decodes tokens [from, to) of `tokens` at positions continuing the cache, in batches of n_batch.
  // Returns llama_decode's code; on failure the cache is trimmed back to what `cached_` records.
  int32_t DecodeRange(const std::vector<llama_token>& tokens, size_t from, size_t to, bool allLogits, float* logitsOut);
  void RunGeneration(std::vector<llama_token> prompt, SamplingOptions opts, Napi::ThreadSafeFunction tsfn);

  AddonModel* model_;
  Napi::ObjectReference modelRef_;
  Napi::Env env_;
  llama_context* ctx_ = nullptr;
  llama_batch batch_{};
  bool hasBatch_ = false;
  // Persistent ggml thread pools (generation, prompt): without them ggml starts threads for every decode, and
  // their polling hand-off is what llama-bench measures with.
  ggml_threadpool* pool_ = nullptr;
  ggml_threadpool* poolBatch_ = nullptr;
  std::atomic<bool> abort_{false};
  std::atomic<bool> busy_{false};   // a generation or a logits task owns the context
  std::thread thread_;
  size_t contextLimit_ = 0;  // the context size asked for (llama.cpp may round its own n_ctx up)
  std::vector<llama_token> cached_;  // tokens whose K/V are in the cache, in position order (prefix reuse)
  // cached_.size() for stats(), which JS may call while a worker thread changes cached_ (PublishCachedCount)
  std::atomic<size_t> cachedCount_{0};
  void PublishCachedCount() { cachedCount_.store(cached_.size(), std::memory_order_relaxed); }
  int64_t externalBytes_ = 0;
};

}  // namespace qwen
