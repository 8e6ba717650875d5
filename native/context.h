// AddonContext: one llama_context (the shared KV cache, compute buffers, ggml thread pools) on a model, and the
// Engine thread that runs every request on it. JS submits requests with numeric ids and receives the events of
// each decode step in one call of a thread-safe function; nothing here waits for JS between tokens.
#pragma once

#include <napi.h>

#include <memory>

#include "engine.h"
#include "ggml-cpu.h"
#include "llama.h"

namespace qwen {

class AddonModel;

class AddonContext : public Napi::ObjectWrap<AddonContext> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonContext(const Napi::CallbackInfo& info);
  ~AddonContext() override;

  // Stops the engine (the running decode is aborted), joins its thread and frees the context.
  void Shutdown();
  // Stops every engine in the process. Registered with std::atexit: process.exit() does not always run env
  // cleanup hooks, and an engine thread still decoding while exit() runs static destructors crashes the process.
  static void StopAllAtExit();

 private:
  friend class ContextWorker;
  Napi::Value InitContext(const Napi::CallbackInfo& info);
  void Submit(const Napi::CallbackInfo& info);
  void Cancel(const Napi::CallbackInfo& info);
  void KeepAlive(const Napi::CallbackInfo& info);
  void LetGo(const Napi::CallbackInfo& info);
  void Dispose(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);

  AddonModel* model_;
  Napi::ObjectReference modelRef_;
  Napi::Env env_;
  llama_context* ctx_ = nullptr;
  ggml_threadpool* pool_ = nullptr;
  ggml_threadpool* poolBatch_ = nullptr;
  std::unique_ptr<Engine> engine_;
  Napi::ThreadSafeFunction events_;
  void ReleaseModel();
  bool initializing_ = false;
  bool disposed_ = false;
  EngineConfig config_;
  int64_t externalBytes_ = 0;
};

}  // namespace qwen
