// AddonModel: one llama_model (weights + vocabulary), shared by every context created on it.
#pragma once

#include <napi.h>

#include <atomic>
#include <memory>
#include <string>

#include "llama.h"
#include "tokenizer.h"

namespace qwen {

class AddonModel : public Napi::ObjectWrap<AddonModel> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AddonModel(const Napi::CallbackInfo& info);
  ~AddonModel() override;

  llama_model* model() const { return model_; }
  const llama_vocab* vocab() const { return llama_model_get_vocab(model_); }
  // Frees the weights; called by dispose() and by the environment cleanup hook.
  void Free();

  std::atomic<int> contexts{0};  // live contexts; the model cannot be freed under them

 private:
  friend class LoadWorker;
  Napi::Value Load(const Napi::CallbackInfo& info);
  void AbortLoad(const Napi::CallbackInfo& info);
  void Dispose(const Napi::CallbackInfo& info);
  Napi::Value Tokenize(const Napi::CallbackInfo& info);
  Napi::Value Detokenize(const Napi::CallbackInfo& info);
  Napi::Value TokenPiece(const Napi::CallbackInfo& info);
  Napi::Value Metadata(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value IsEog(const Napi::CallbackInfo& info);

  void RequireLoaded(Napi::Env env) const;

  llama_model* model_ = nullptr;
  std::atomic<bool> loading_{false};
  std::atomic<bool> abortLoad_{false};
  int64_t externalBytes_ = 0;
  int32_t maxTokenBytes_ = 0;  // bytes of the longest token (with special tokens' text)
  std::unique_ptr<Tokenizer> tokenizer_;
  Napi::Env env_;
};

}  // namespace qwen
