#include "model.h"

#include <algorithm>

#include <vector>

#include "common.h"
#include "registry.h"

namespace qwen {

// Loads the weights on a libuv pool thread (a load is one bounded task, unlike a generation) and reports
// llama.cpp's progress callbacks back to JS; AbortLoad() makes the progress callback return false.
class LoadWorker : public Napi::AsyncProgressWorker<float> {
 public:
  LoadWorker(Napi::Env env, AddonModel* owner, std::string path, bool mmap, bool vocabOnly, Napi::Function onProgress)
      : Napi::AsyncProgressWorker<float>(env), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner),
        path_(std::move(path)), mmap_(mmap), vocabOnly_(vocabOnly) {
    ownerRef_ = Napi::Persistent(owner->Value());
    if (!onProgress.IsEmpty()) onProgress_ = Napi::Persistent(onProgress);
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute(const ExecutionProgress& progress) override {
    progress_ = &progress;
    ClearLastLogError();
    llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = 0;
    params.load_mode = mmap_ ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
    params.vocab_only = vocabOnly_;
    params.progress_callback = [](float p, void* data) -> bool {
      auto* self = static_cast<LoadWorker*>(data);
      if (self->owner_->abortLoad_.load()) return false;
      self->progress_->Send(&p, 1);
      return true;
    };
    params.progress_callback_user_data = this;
    model_ = llama_model_load_from_file(path_.c_str(), params);
    if (model_) {
      // the longest token's bytes: JS bounds a prompt's size with it before tokenizing (151,936 calls here, not
      // on the event loop)
      const llama_vocab* vocab = llama_model_get_vocab(model_);
      char buf[256];
      for (int32_t i = 0, n = llama_vocab_n_tokens(vocab); i < n; i++) {
        const int32_t len = llama_token_to_piece(vocab, i, buf, sizeof buf, 0, true);
        maxTokenBytes_ = std::max(maxTokenBytes_, len < 0 ? -len : len);
      }
      tokenizer_ = std::make_unique<Tokenizer>(vocab);
    }
    if (!model_) {
      aborted_ = owner_->abortLoad_.load();
      std::string detail = TakeLastLogError();
      SetError(aborted_ ? "model loading was aborted" : "llama.cpp could not load the model" + (detail.empty() ? "" : ": " + detail));
    }
  }

  void OnProgress(const float* data, size_t count) override {
    if (count == 0 || onProgress_.IsEmpty()) return;
    Napi::Env env = Env();
    // a throwing progress callback must not break loading
    CallJsIgnoringErrors(env, [&] { onProgress_.Call({Napi::Number::New(env, data[count - 1])}); });
  }

  void OnOK() override {
    Napi::Env env = Env();
    owner_->loading_ = false;
    owner_->model_ = model_;
    owner_->maxTokenBytes_ = maxTokenBytes_;
    owner_->tokenizer_ = std::move(tokenizer_);
    owner_->externalBytes_ = static_cast<int64_t>(llama_model_size(model_));
    Napi::MemoryManagement::AdjustExternalMemory(env, owner_->externalBytes_);
    deferred_.Resolve(env.Undefined());
  }

  void OnError(const Napi::Error& e) override {
    owner_->loading_ = false;
    deferred_.Reject(CodedError(Env(), aborted_ ? "ABORT_ERR" : "ERR_MODEL_LOAD", e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  AddonModel* owner_;
  int32_t maxTokenBytes_ = 0;
  std::unique_ptr<Tokenizer> tokenizer_;
  Napi::ObjectReference ownerRef_;  // keeps the JS model alive while loading
  Napi::FunctionReference onProgress_;
  std::string path_;
  bool mmap_, vocabOnly_;
  const ExecutionProgress* progress_ = nullptr;
  llama_model* model_ = nullptr;
  bool aborted_ = false;
};

Napi::Function AddonModel::Init(Napi::Env env) {
  return DefineClass(env, "AddonModel",
                     {
                         InstanceMethod("load", &AddonModel::Load),
                         InstanceMethod("abortLoad", &AddonModel::AbortLoad),
                         InstanceMethod("dispose", &AddonModel::Dispose),
                         InstanceMethod("tokenize", &AddonModel::Tokenize),
                         InstanceMethod("detokenize", &AddonModel::Detokenize),
                         InstanceMethod("tokenPiece", &AddonModel::TokenPiece),
                         InstanceMethod("metadata", &AddonModel::Metadata),
                         InstanceMethod("info", &AddonModel::Info),
                         InstanceMethod("isEog", &AddonModel::IsEog),
                     });
}

AddonModel::AddonModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonModel>(info), env_(info.Env()) {
  EnsureBackend();
  Registry::Of(env_).models.insert(this);
}

AddonModel::~AddonModel() {
  Registry::Of(env_).models.erase(this);
  Free();
}

void AddonModel::Free() {
  if (!model_) return;
  tokenizer_.reset();
  llama_model_free(model_);
  model_ = nullptr;
  ReleaseFreedMemory();
  if (externalBytes_) {
    Napi::MemoryManagement::AdjustExternalMemory(env_, -externalBytes_);
    externalBytes_ = 0;
  }
}

void AddonModel::RequireLoaded(Napi::Env env) const {
  if (!model_) ThrowCoded(env, "ERR_DISPOSED", "the model is not loaded or was disposed");
}

Napi::Value AddonModel::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (model_ || loading_) ThrowCoded(env, "ERR_INVALID_STATE", "this model handle is already loaded or loading");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Object opts = info[1].As<Napi::Object>();
  Napi::Function onProgress = info[2].IsFunction() ? info[2].As<Napi::Function>() : Napi::Function();
  loading_ = true;
  abortLoad_ = false;
  auto* worker = new LoadWorker(env, this, path, BoolOption(opts, "mmap", true), BoolOption(opts, "vocabOnly", false), onProgress);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

void AddonModel::AbortLoad(const Napi::CallbackInfo&) { abortLoad_ = true; }

void AddonModel::Dispose(const Napi::CallbackInfo& info) {
  if (loading_) ThrowCoded(info.Env(), "ERR_INVALID_STATE", "cannot dispose a model while it loads; abort the load first");
  if (contexts.load() > 0) ThrowCoded(info.Env(), "ERR_INVALID_STATE", "dispose the model's contexts before the model");
  Free();
}

Napi::Value AddonModel::Tokenize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireLoaded(env);
  std::string text = info[0].As<Napi::String>().Utf8Value();
  bool special = info[1].ToBoolean();
  // test-only third argument: llama_tokenize itself, the reference test/tokenizer.test.ts compares with
  bool viaLlama = info.Length() > 2 && info[2].ToBoolean();
  std::vector<llama_token> tokens;
  try {
    tokens = viaLlama ? tokenizer_->TokenizeWithLlama(text, special) : tokenizer_->Tokenize(text, special);
  } catch (const std::length_error&) {
    ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "text is too long to tokenize");
  }
  auto out = Napi::Int32Array::New(env, tokens.size());
  std::copy(tokens.begin(), tokens.end(), out.Data());
  return out;
}

Napi::Value AddonModel::Detokenize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireLoaded(env);
  auto ids = info[0].As<Napi::Int32Array>();
  bool special = info[1].ToBoolean();
  int32_t nVocab = llama_vocab_n_tokens(vocab());
  for (size_t i = 0; i < ids.ElementLength(); i++) {
    if (ids[i] < 0 || ids[i] >= nVocab) ThrowCoded(env, "ERR_OUT_OF_RANGE", "token id " + std::to_string(ids[i]) + " is outside the vocabulary (0.." + std::to_string(nVocab - 1) + ")");
  }
  std::string text(ids.ElementLength() * 8 + 16, '\0');
  int32_t n = llama_detokenize(vocab(), ids.Data(), (int32_t)ids.ElementLength(), text.data(), (int32_t)text.size(), false, special);
  if (n < 0) {
    text.resize(-n);
    n = llama_detokenize(vocab(), ids.Data(), (int32_t)ids.ElementLength(), text.data(), (int32_t)text.size(), false, special);
  }
  text.resize(n);
  return Napi::Buffer<char>::Copy(env, text.data(), text.size());
}

Napi::Value AddonModel::TokenPiece(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireLoaded(env);
  int32_t id = info[0].As<Napi::Number>().Int32Value();
  char buf[256];
  int32_t n = llama_token_to_piece(vocab(), id, buf, sizeof buf, 0, info[1].ToBoolean());
  return Napi::Buffer<char>::Copy(env, buf, n > 0 ? n : 0);
}

Napi::Value AddonModel::Metadata(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireLoaded(env);
  Napi::Object out = Napi::Object::New(env);
  std::vector<char> key(512), val(1 << 16);
  int32_t count = llama_model_meta_count(model_);
  for (int32_t i = 0; i < count; i++) {
    llama_model_meta_key_by_index(model_, i, key.data(), key.size());
    int32_t n = llama_model_meta_val_str_by_index(model_, i, val.data(), val.size());
    if (n >= (int32_t)val.size()) {
      val.resize(n + 1);
      n = llama_model_meta_val_str_by_index(model_, i, val.data(), val.size());
    }
    out.Set(key.data(), Napi::String::New(env, val.data(), n > 0 ? n : 0));
  }
  return out;
}

Napi::Value AddonModel::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireLoaded(env);
  Napi::Object out = Napi::Object::New(env);
  char desc[256];
  llama_model_desc(model_, desc, sizeof desc);
  out.Set("description", desc);
  out.Set("parameters", (double)llama_model_n_params(model_));
  out.Set("sizeBytes", (double)llama_model_size(model_));
  out.Set("vocabSize", llama_vocab_n_tokens(vocab()));
  out.Set("contextLengthTrained", llama_model_n_ctx_train(model_));
  out.Set("embeddingLength", llama_model_n_embd(model_));
  out.Set("layers", llama_model_n_layer(model_));
  out.Set("heads", llama_model_n_head(model_));
  out.Set("bos", llama_vocab_bos(vocab()));
  out.Set("eos", llama_vocab_eos(vocab()));
  out.Set("eot", llama_vocab_eot(vocab()));
  out.Set("maxTokenBytes", maxTokenBytes_);
  std::vector<std::string> control = tokenizer_->ControlTexts();
  Napi::Array controlTexts = Napi::Array::New(env, control.size());
  for (size_t i = 0; i < control.size(); i++) controlTexts.Set((uint32_t)i, Napi::String::New(env, control[i]));
  out.Set("controlTexts", controlTexts);
  const char* tmpl = llama_model_chat_template(model_, nullptr);
  if (tmpl) out.Set("chatTemplate", tmpl);
  return out;
}

Napi::Value AddonModel::IsEog(const Napi::CallbackInfo& info) {
  RequireLoaded(info.Env());
  return Napi::Boolean::New(info.Env(), llama_vocab_is_eog(vocab(), info[0].As<Napi::Number>().Int32Value()));
}

}  // namespace qwen
