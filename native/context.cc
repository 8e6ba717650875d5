#include "context.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <unordered_set>

#include "common.h"
#include "model.h"
#include "registry.h"

namespace qwen {

namespace {

// Every live context in the process (all environments), for StopAllAtExit.
std::mutex liveMutex;
std::unordered_set<AddonContext*>& LiveContexts() {
  static auto* live = new std::unordered_set<AddonContext*>();  // never destroyed: used during exit
  return *live;
}

constexpr int32_t kMaxSequences = 256;  // LLAMA_MAX_SEQ in llama-cparams.h

bool AbortRequested(void* flag) { return static_cast<std::atomic<bool>*>(flag)->load(std::memory_order_relaxed); }

Napi::Value LogprobsToJs(Napi::Env env, const std::vector<TokenLogprob>& list) {
  Napi::Array out = Napi::Array::New(env, list.size());
  for (size_t i = 0; i < list.size(); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", list[i].token);
    o.Set("logprob", list[i].logprob);
    Napi::Array top = Napi::Array::New(env, list[i].top.size());
    for (size_t k = 0; k < list[i].top.size(); k++) {
      Napi::Object t = Napi::Object::New(env);
      t.Set("id", list[i].top[k].first);
      t.Set("logprob", list[i].top[k].second);
      top.Set(k, t);
    }
    o.Set("top", top);
    out.Set(i, o);
  }
  return out;
}

// One decode step's events → one JS call with an array of { id, kind, … }.
void DeliverEvents(Napi::Env env, Napi::Function onEvents, std::vector<EngineEvent>* raw) {
  std::unique_ptr<std::vector<EngineEvent>> events(raw);
  if (env == nullptr || onEvents.IsEmpty()) return;  // environment is shutting down
  CallJsIgnoringErrors(env, [&] {
    static const char* kinds[] = {"start", "piece", "done", "error"};
    Napi::Array list = Napi::Array::New(env, events->size());
    for (size_t i = 0; i < events->size(); i++) {
      EngineEvent& ev = (*events)[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("id", (double)ev.id);
      o.Set("kind", kinds[ev.kind]);
      switch (ev.kind) {
        case EngineEvent::Start:
          break;
        case EngineEvent::Piece:
          o.Set("text", Napi::String::New(env, ev.text));
          if (!ev.logprobs.empty()) o.Set("logprobs", LogprobsToJs(env, ev.logprobs));
          break;
        case EngineEvent::Done: {
          o.Set("finishReason", ev.code);
          auto tokens = Napi::Int32Array::New(env, ev.tokens.size());
          std::copy(ev.tokens.begin(), ev.tokens.end(), tokens.Data());
          o.Set("tokens", tokens);
          o.Set("promptTokens", ev.promptTokens);
          o.Set("cachedTokens", ev.cachedTokens);
          o.Set("promptMs", ev.promptMs);
          o.Set("genMs", ev.genMs);
          if (!ev.floats.empty()) {
            auto floats = Napi::Float32Array::New(env, ev.floats.size());
            std::memcpy(floats.Data(), ev.floats.data(), ev.floats.size() * sizeof(float));
            o.Set("floats", floats);
          }
          break;
        }
        case EngineEvent::Error:
          o.Set("error", CodedError(env, ev.code, ev.text).Value());
          break;
      }
      list.Set(i, o);
    }
    onEvents.Call({list});
  });
}

std::vector<llama_token> ReadTokens(const Napi::Value& v) {
  auto ids = v.As<Napi::Int32Array>();
  return std::vector<llama_token>(ids.Data(), ids.Data() + ids.ElementLength());
}

SamplingOptions ReadSamplingOptions(const Napi::Object& o) {
  SamplingOptions s;
  s.maxTokens = (int32_t)NumberOption(o, "maxTokens", s.maxTokens);
  s.temperature = (float)NumberOption(o, "temperature", s.temperature);
  s.topK = (int32_t)NumberOption(o, "topK", s.topK);
  s.topP = (float)NumberOption(o, "topP", s.topP);
  s.minP = (float)NumberOption(o, "minP", s.minP);
  s.repeatPenalty = (float)NumberOption(o, "repeatPenalty", s.repeatPenalty);
  s.presencePenalty = (float)NumberOption(o, "presencePenalty", s.presencePenalty);
  s.frequencyPenalty = (float)NumberOption(o, "frequencyPenalty", s.frequencyPenalty);
  s.penaltyLastN = (int32_t)NumberOption(o, "penaltyLastN", s.penaltyLastN);
  s.seed = (uint32_t)NumberOption(o, "seed", s.seed);
  s.ignoreEos = BoolOption(o, "ignoreEos", false);
  s.logprobs = (int32_t)NumberOption(o, "logprobs", -1);
  s.thinkEnd = (llama_token)NumberOption(o, "thinkEnd", -1);
  s.grammarAfterThink = BoolOption(o, "grammarAfterThink", false);
  s.reasoningBudget = (int32_t)NumberOption(o, "reasoningBudget", -1);
  if (HasOption(o, "grammar")) s.grammar = o.Get("grammar").As<Napi::String>().Utf8Value();
  if (HasOption(o, "stop")) {
    Napi::Array stops = o.Get("stop").As<Napi::Array>();
    for (uint32_t i = 0; i < stops.Length(); i++) {
      std::string stop = stops.Get(i).As<Napi::String>().Utf8Value();
      if (!stop.empty()) s.stop.push_back(stop);
    }
  }
  if (HasOption(o, "logitBias")) {
    Napi::Array pairs = o.Get("logitBias").As<Napi::Array>();
    for (uint32_t i = 0; i < pairs.Length(); i++) {
      Napi::Array pair = pairs.Get(i).As<Napi::Array>();
      s.logitBias[(llama_token)pair.Get(0u).As<Napi::Number>().Int32Value()] = pair.Get(1u).As<Napi::Number>().FloatValue();
    }
  }
  return s;
}

}  // namespace

// Creates the llama_context off the event loop: allocating the KV cache and reserving the compute graphs takes
// long enough on large models to be felt as a stall.
class ContextWorker : public Napi::AsyncWorker {
 public:
  ContextWorker(Napi::Env env, AddonContext* owner, llama_context_params params, int poll)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner), params_(params), poll_(poll) {
    ownerRef_ = Napi::Persistent(owner->Value());
  }
  ~ContextWorker() override {
    // Not handed over (the context was disposed meanwhile, or creation failed half-way): free here.
    if (ctx_) llama_free(ctx_);
    if (pool_) ggml_threadpool_free(pool_);
    if (poolBatch_) ggml_threadpool_free(poolBatch_);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    ClearLastLogError();
    ctx_ = llama_init_from_model(owner_->model_->model(), params_);
    if (!ctx_) {
      std::string detail = TakeLastLogError();
      SetError("llama.cpp could not create a context" + (detail.empty() ? "" : ": " + detail));
      return;
    }
    pool_ = NewPool(params_.n_threads);
    poolBatch_ = params_.n_threads_batch == params_.n_threads ? nullptr : NewPool(params_.n_threads_batch);
    if (pool_) llama_attach_threadpool(ctx_, pool_, poolBatch_);
  }
  ggml_threadpool* NewPool(int threads) {
    ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    tpp.poll = poll_;
    return ggml_threadpool_new(&tpp);
  }
  void OnOK() override {
    AddonContext* o = owner_;
    o->initializing_ = false;
    if (o->disposed_) {  // disposed while the context was being created: free it here, then let the model go
      if (ctx_) llama_free(std::exchange(ctx_, nullptr));
      o->ReleaseModel();
      deferred_.Reject(CodedError(Env(), "ERR_DISPOSED", "the context was disposed while it was being created").Value());
      return;
    }
    try {
      o->ctx_ = std::exchange(ctx_, nullptr);
      o->pool_ = std::exchange(pool_, nullptr);
      o->poolBatch_ = std::exchange(poolBatch_, nullptr);
      o->events_ = Napi::ThreadSafeFunction::New(Env(), onEvents_.Value(), "qwen-gguf-engine", 0, 1);
      // The thread-safe function must not keep the event loop alive while the engine is idle.
      o->events_.Unref(Env());
      Napi::ThreadSafeFunction tsfn = o->events_;
      o->engine_ = std::make_unique<Engine>(o->ctx_, o->model_->vocab(), o->config_, [tsfn](std::vector<EngineEvent>&& events) mutable {
        auto* batch = new std::vector<EngineEvent>(std::move(events));
        if (tsfn.NonBlockingCall(batch, DeliverEvents) != napi_ok) delete batch;
      });
      llama_set_abort_callback(o->ctx_, AbortRequested, &o->engine_->abortFlag());
      o->externalBytes_ = (int64_t)llama_state_get_size(o->ctx_);
      Napi::MemoryManagement::AdjustExternalMemory(Env(), o->externalBytes_);
      deferred_.Resolve(Env().Undefined());
    } catch (const std::exception& e) {
      deferred_.Reject(CodedError(Env(), "ERR_CONTEXT_CREATE", e.what()).Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    owner_->initializing_ = false;
    if (owner_->disposed_) owner_->ReleaseModel();
    deferred_.Reject(CodedError(Env(), "ERR_CONTEXT_CREATE", e.Message()).Value());
  }
  Napi::FunctionReference onEvents_;

 private:
  Napi::Promise::Deferred deferred_;
  AddonContext* owner_;
  Napi::ObjectReference ownerRef_;
  llama_context_params params_;
  int poll_;
  llama_context* ctx_ = nullptr;
  ggml_threadpool* pool_ = nullptr;
  ggml_threadpool* poolBatch_ = nullptr;
};

Napi::Function AddonContext::Init(Napi::Env env) {
  return DefineClass(env, "AddonContext",
                     {
                         InstanceMethod("init", &AddonContext::InitContext),
                         InstanceMethod("submit", &AddonContext::Submit),
                         InstanceMethod("cancel", &AddonContext::Cancel),
                         InstanceMethod("dispose", &AddonContext::Dispose),
                         InstanceMethod("stats", &AddonContext::Stats),
                         InstanceMethod("ref", &AddonContext::KeepAlive),
                         InstanceMethod("unref", &AddonContext::LetGo),
                     });
}

AddonContext::AddonContext(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonContext>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(Registry::Of(env).modelClass.Value())) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "AddonContext needs an AddonModel");
  }
  model_ = AddonModel::Unwrap(info[0].As<Napi::Object>());
  if (!model_->model()) ThrowCoded(env, "ERR_DISPOSED", "the model is not loaded or was disposed");
  modelRef_ = Napi::Persistent(info[0].As<Napi::Object>());
  model_->contexts++;
  Registry::Of(env).contexts.insert(this);
  static std::once_flag atExit;
  std::call_once(atExit, [] { std::atexit(AddonContext::StopAllAtExit); });
  std::lock_guard<std::mutex> lock(liveMutex);
  LiveContexts().insert(this);
}

AddonContext::~AddonContext() {
  Registry* registry = env_.GetInstanceData<Registry>();
  if (registry) registry->contexts.erase(this);
  Shutdown();
}

void AddonContext::StopAllAtExit() {
  std::lock_guard<std::mutex> lock(liveMutex);
  for (AddonContext* c : LiveContexts()) {
    if (c->engine_) c->engine_->Stop();
  }
}

void AddonContext::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(liveMutex);
    LiveContexts().erase(this);
  }
  if (engine_) {
    engine_->Stop();  // its last events (every request ending with ERR_DISPOSED) are queued on the TSFN
    engine_.reset();
  }
  if (events_) {
    events_.Release();
    events_ = Napi::ThreadSafeFunction();
  }
  if (ctx_) {
    llama_free(ctx_);
    ctx_ = nullptr;
    if (pool_) ggml_threadpool_free(pool_);
    if (poolBatch_) ggml_threadpool_free(poolBatch_);
    pool_ = poolBatch_ = nullptr;
    ReleaseFreedMemory();
    if (externalBytes_) Napi::MemoryManagement::AdjustExternalMemory(env_, -externalBytes_);
    externalBytes_ = 0;
  }
  disposed_ = true;
  // A context still being created on a pool thread uses the model: the worker releases it when it ends.
  if (!initializing_) ReleaseModel();
}

void AddonContext::ReleaseModel() {
  if (model_) {
    model_->contexts--;
    model_ = nullptr;
  }
}

Napi::Value AddonContext::InitContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!model_ || disposed_) ThrowCoded(env, "ERR_DISPOSED", "the context was disposed");
  if (ctx_ || initializing_) ThrowCoded(env, "ERR_INVALID_STATE", "the context is already initialized");
  if (!info[0].IsObject() || !info[1].IsFunction()) ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "init(options, onEvents)");
  Napi::Object o = info[0].As<Napi::Object>();
  EngineConfig& c = config_;
  c.parallel = std::max(1, (int32_t)NumberOption(o, "parallel", 4));
  c.contextSize = (size_t)NumberOption(o, "contextSize", 4096);
  c.poolCells = (size_t)NumberOption(o, "cacheSize", (double)(c.contextSize * c.parallel));
  c.batchSize = std::max(1, (int32_t)NumberOption(o, "batchSize", 512));
  // Sequence ids: the generations, idle cached prompts and classification labels. llama.cpp reserves a logits row
  // per sequence id (151,936 floats each), so they stay few; labels beyond the free ids wait for a later step.
  c.sequences = std::min(kMaxSequences, std::max(c.parallel + 2, (int32_t)NumberOption(o, "sequences", std::max(32, c.parallel + 16))));
  c.maxOutputs = c.sequences;
  c.promptCache.maxBytes = (size_t)NumberOption(o, "promptCacheBytes", 0);
  if (HasOption(o, "promptCacheDir")) c.promptCache.dir = o.Get("promptCacheDir").As<Napi::String>().Utf8Value();
  if (HasOption(o, "modelIdentity")) c.modelIdentity = o.Get("modelIdentity").As<Napi::String>().Utf8Value();

  llama_context_params p = llama_context_default_params();
  p.n_ctx = (uint32_t)c.poolCells;
  p.n_batch = (uint32_t)c.batchSize;
  p.n_ubatch = p.n_batch;  // one ubatch per decode: a failed decode leaves nothing half-done
  p.n_seq_max = (uint32_t)c.sequences;
  p.kv_unified = true;     // one pool of cells shared by all sequences; seq_cp shares cells instead of copying
  // llama.cpp sizes the compute buffer for n_outputs_max logits rows (default: all n_batch rows, 512 × 151,936
  // floats = 297 MiB); a step needs one row per generating sequence plus a few for prompts and labels.
  p.n_outputs_max = (uint32_t)c.maxOutputs;
  p.n_threads = (int32_t)NumberOption(o, "threads", 4);
  p.n_threads_batch = (int32_t)NumberOption(o, "threadsBatch", p.n_threads);
  p.type_k = p.type_v = (ggml_type)(int)NumberOption(o, "kvType", GGML_TYPE_F16);
  p.flash_attn_type = (llama_flash_attn_type)(int)NumberOption(o, "flashAttention", LLAMA_FLASH_ATTN_TYPE_AUTO);
  p.no_perf = true;
  initializing_ = true;
  auto* worker = new ContextWorker(env, this, p, (int)NumberOption(o, "poll", 50));
  worker->onEvents_ = Napi::Persistent(info[1].As<Napi::Function>());
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// submit({ id, kind: "generate" | "logits" | "score", prompt: Int32Array, sampling?, labels?: Int32Array[], cachePrompt? })
void AddonContext::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_ || !engine_) ThrowCoded(env, "ERR_DISPOSED", "the context was disposed or is not initialized");
  Napi::Object o = info[0].As<Napi::Object>();
  EngineRequest r;
  r.id = (uint64_t)o.Get("id").As<Napi::Number>().Int64Value();
  std::string kind = o.Get("kind").As<Napi::String>().Utf8Value();
  r.kind = kind == "logits" ? RequestKind::Logits : kind == "score" ? RequestKind::Score : RequestKind::Generate;
  r.prompt = ReadTokens(o.Get("prompt"));
  if (r.prompt.empty()) ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "the prompt has no tokens");
  const int32_t nVocab = llama_vocab_n_tokens(model_->vocab());
  for (llama_token t : r.prompt) {
    if (t < 0 || t >= nVocab) ThrowCoded(env, "ERR_OUT_OF_RANGE", "token id " + std::to_string(t) + " is outside the vocabulary");
  }
  r.cachePrompt = BoolOption(o, "cachePrompt", true);
  if (HasOption(o, "sampling")) r.sampling = ReadSamplingOptions(o.Get("sampling").As<Napi::Object>());
  if (HasOption(o, "labels")) {
    Napi::Array labels = o.Get("labels").As<Napi::Array>();
    for (uint32_t i = 0; i < labels.Length(); i++) {
      r.labels.push_back(ReadTokens(labels.Get(i)));
      for (llama_token t : r.labels.back()) {
        if (t < 0 || t >= nVocab) ThrowCoded(env, "ERR_OUT_OF_RANGE", "label token id " + std::to_string(t) + " is outside the vocabulary");
      }
    }
  }
  engine_->Submit(std::move(r));
}

// While requests are in flight the thread-safe function keeps the event loop alive (their events must arrive);
// an idle engine must not keep the process running.
void AddonContext::KeepAlive(const Napi::CallbackInfo& info) {
  if (events_) events_.Ref(info.Env());
}

void AddonContext::LetGo(const Napi::CallbackInfo& info) {
  if (events_) events_.Unref(info.Env());
}

void AddonContext::Cancel(const Napi::CallbackInfo& info) {
  if (engine_) engine_->Cancel((uint64_t)info[0].As<Napi::Number>().Int64Value());
}

void AddonContext::Dispose(const Napi::CallbackInfo& info) {
  Registry::Of(info.Env()).contexts.erase(this);
  Shutdown();
  modelRef_.Reset();
}

Napi::Value AddonContext::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  EngineStats s = engine_ ? engine_->Stats() : EngineStats{};
  out.Set("active", s.active);
  out.Set("queued", s.queued);
  out.Set("idleSequences", s.idleSequences);
  out.Set("cachedTokens", (double)s.cachedTokens);
  out.Set("kvCellsUsed", (double)s.cellsUsed);
  out.Set("kvCells", (double)config_.poolCells);
  out.Set("decodes", (double)s.decodes);
  out.Set("promptCacheHits", (double)s.promptCacheHits);
  out.Set("promptCacheStored", (double)s.promptCacheStored);
  out.Set("promptCacheBytes", (double)s.promptCacheBytes);
  out.Set("parallel", config_.parallel);
  out.Set("sequences", config_.sequences);
  out.Set("contextSize", ctx_ ? (double)config_.contextSize : 0.0);
  out.Set("batchSize", ctx_ ? (double)llama_n_batch(ctx_) : 0.0);
  out.Set("threads", ctx_ ? (double)llama_n_threads(ctx_) : 0.0);
  out.Set("threadsBatch", ctx_ ? (double)llama_n_threads_batch(ctx_) : 0.0);
  out.Set("stateBytes", (double)externalBytes_);
  return out;
}

}  // namespace qwen
