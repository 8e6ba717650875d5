#include "session.h"

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <unordered_set>

#include "common.h"
#include "model.h"
#include "registry.h"
#include "utf8.h"

namespace qwen {

namespace {

// Logits rows one llama_decode may produce (see InitContext): 32 rows cost 19 MB of compute buffer for
// Qwen's vocabulary, and 32-token chunks keep logits() compute-bound on a CPU.
constexpr int32_t kMaxOutputsPerDecode = 32;

// What the generation thread hands to JS. Pieces are complete UTF-8 text; the last event is "done" or "error".
struct GenerationEvent {
  enum Kind { Piece, Done, Error } kind;
  std::string text;          // piece text, or error message
  std::string finishReason;  // done: "stop" | "length" | "abort"; error: code
  std::vector<llama_token> tokens;
  double promptMs = 0, genMs = 0;
  int32_t promptTokens = 0, cachedTokens = 0;
};

void DeliverEventToJs(Napi::Env env, Napi::Function onEvent, GenerationEvent* ev) {
  switch (ev->kind) {
    case GenerationEvent::Piece:
      onEvent.Call({Napi::String::New(env, "piece"), Napi::String::New(env, ev->text)});
      break;
    case GenerationEvent::Done: {
      Napi::Object result = Napi::Object::New(env);
      result.Set("finishReason", ev->finishReason);
      auto tokens = Napi::Int32Array::New(env, ev->tokens.size());
      std::copy(ev->tokens.begin(), ev->tokens.end(), tokens.Data());
      result.Set("tokens", tokens);
      result.Set("promptTokens", ev->promptTokens);
      result.Set("cachedTokens", ev->cachedTokens);
      result.Set("promptMs", ev->promptMs);
      result.Set("genMs", ev->genMs);
      onEvent.Call({Napi::String::New(env, "done"), result});
      break;
    }
    case GenerationEvent::Error:
      onEvent.Call({Napi::String::New(env, "error"), CodedError(env, ev->finishReason, ev->text).Value()});
      break;
  }
}

void DeliverEvent(Napi::Env env, Napi::Function onEvent, GenerationEvent* raw) {
  std::unique_ptr<GenerationEvent> ev(raw);
  if (env == nullptr || onEvent.IsEmpty()) return;  // environment is shutting down
  CallJsIgnoringErrors(env, [&] { DeliverEventToJs(env, onEvent, ev.get()); });
}

llama_sampler* BuildSampler(const llama_vocab* vocab, const SamplingOptions& o) {
  llama_sampler* chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
  if (o.repeatPenalty != 1.0f || o.presencePenalty != 0.0f || o.frequencyPenalty != 0.0f) {
    llama_sampler_chain_add(chain, llama_sampler_init_penalties(llama_vocab_n_tokens(vocab), o.penaltyLastN, o.repeatPenalty,
                                                                o.frequencyPenalty, o.presencePenalty));
  }
  if (o.temperature <= 0.0f) {
    llama_sampler_chain_add(chain, llama_sampler_init_greedy());
    return chain;
  }
  if (o.topK > 0) llama_sampler_chain_add(chain, llama_sampler_init_top_k(o.topK));
  if (o.topP < 1.0f) llama_sampler_chain_add(chain, llama_sampler_init_top_p(o.topP, 1));
  if (o.minP > 0.0f) llama_sampler_chain_add(chain, llama_sampler_init_min_p(o.minP, 1));
  llama_sampler_chain_add(chain, llama_sampler_init_temp(o.temperature));
  llama_sampler_chain_add(chain, llama_sampler_init_dist(o.seed));
  return chain;
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
  s.cachePrompt = BoolOption(o, "cachePrompt", true);
  if (HasOption(o, "stop")) {
    Napi::Array stops = o.Get("stop").As<Napi::Array>();
    for (uint32_t i = 0; i < stops.Length(); i++) {
      std::string stop = stops.Get(i).As<Napi::String>().Utf8Value();
      if (!stop.empty()) s.stop.push_back(stop);
    }
  }
  return s;
}

// Index of the largest logit. The max pass is a SIMD reduction (-fopenmp-simd); the index pass stops early.
llama_token ArgMax(const float* row, int32_t n) {
  float best = row[0];
#pragma omp simd reduction(max : best)
  for (int32_t i = 0; i < n; i++) best = row[i] > best ? row[i] : best;
  for (int32_t i = 0; i < n; i++) {
    if (row[i] == best) return i;
  }
  return 0;
}

// Every live session in the process (all environments), for StopAllAtExit.
std::mutex liveMutex;
std::unordered_set<AddonSession*>& LiveSessions() {
  static auto* live = new std::unordered_set<AddonSession*>();  // never destroyed: used during exit
  return *live;
}

bool AbortRequested(void* flag) { return static_cast<std::atomic<bool>*>(flag)->load(std::memory_order_relaxed); }

}  // namespace

// Creates the llama_context off the event loop: allocating and clearing the KV cache and reserving the
// compute graphs takes long enough on large models to be felt as a stall.
class ContextWorker : public Napi::AsyncWorker {
 public:
  ContextWorker(Napi::Env env, AddonSession* owner, llama_context_params params, int poll)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner), params_(params), poll_(poll) {
    ownerRef_ = Napi::Persistent(owner->Value());
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
    owner_->ctx_ = ctx_;
    owner_->batch_ = llama_batch_init((int32_t)llama_n_batch(ctx_), 0, 1);  // reused by every decode
    owner_->hasBatch_ = true;
    owner_->pool_ = pool_;
    owner_->poolBatch_ = poolBatch_;
    llama_set_abort_callback(ctx_, AbortRequested, &owner_->abort_);
    owner_->externalBytes_ = (int64_t)llama_state_get_size(ctx_);
    Napi::MemoryManagement::AdjustExternalMemory(Env(), owner_->externalBytes_);
    owner_->busy_ = false;
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    owner_->busy_ = false;
    deferred_.Reject(CodedError(Env(), "ERR_CONTEXT_CREATE", e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  AddonSession* owner_;
  Napi::ObjectReference ownerRef_;
  llama_context_params params_;
  int poll_;
  llama_context* ctx_ = nullptr;
  ggml_threadpool* pool_ = nullptr;
  ggml_threadpool* poolBatch_ = nullptr;
};

// Computes the logits of every position of a token sequence (a bounded task: runs on the libuv pool).
class LogitsWorker : public Napi::AsyncWorker {
 public:
  LogitsWorker(Napi::Env env, AddonSession* owner, std::vector<llama_token> tokens)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), owner_(owner), tokens_(std::move(tokens)) {
    ownerRef_ = Napi::Persistent(owner->Value());
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    nVocab_ = llama_vocab_n_tokens(owner_->model_->vocab());
    logits_.resize(tokens_.size() * (size_t)nVocab_);
    llama_memory_clear(llama_get_memory(owner_->ctx_), false);  // cells only: positions are rewritten
    owner_->cached_.clear();
    owner_->PublishCachedCount();
    ClearLastLogError();
    int32_t rc = owner_->DecodeRange(tokens_, 0, tokens_.size(), true, logits_.data());
    if (rc == 2) {
      aborted_ = true;
      SetError("the logits computation was aborted");
    } else if (rc != 0) {
      SetError("llama_decode failed with code " + std::to_string(rc) + ": " + TakeLastLogError());
    }
  }
  void OnOK() override {
    owner_->busy_ = false;
    auto out = Napi::Float32Array::New(Env(), logits_.size());
    std::memcpy(out.Data(), logits_.data(), logits_.size() * sizeof(float));
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override {
    owner_->busy_ = false;
    deferred_.Reject(CodedError(Env(), aborted_ ? "ABORT_ERR" : "ERR_DECODE", e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  AddonSession* owner_;
  Napi::ObjectReference ownerRef_;
  std::vector<llama_token> tokens_;
  std::vector<float> logits_;
  int32_t nVocab_ = 0;
  bool aborted_ = false;
};

Napi::Function AddonSession::Init(Napi::Env env) {
  return DefineClass(env, "AddonSession",
                     {
                         InstanceMethod("init", &AddonSession::InitContext),
                         InstanceMethod("generate", &AddonSession::Generate),
                         InstanceMethod("logits", &AddonSession::Logits),
                         InstanceMethod("abort", &AddonSession::Abort),
                         InstanceMethod("dispose", &AddonSession::Dispose),
                         InstanceMethod("stats", &AddonSession::Stats),
                     });
}

AddonSession::AddonSession(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonSession>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(Registry::Of(env).modelClass.Value())) {
    ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "AddonSession needs an AddonModel");
  }
  model_ = AddonModel::Unwrap(info[0].As<Napi::Object>());
  if (!model_->model()) ThrowCoded(env, "ERR_DISPOSED", "the model is not loaded or was disposed");
  modelRef_ = Napi::Persistent(info[0].As<Napi::Object>());
  model_->sessions++;
  Registry::Of(env).sessions.insert(this);
  static std::once_flag atExit;
  std::call_once(atExit, [] { std::atexit(AddonSession::StopAllAtExit); });
  std::lock_guard<std::mutex> lock(liveMutex);
  LiveSessions().insert(this);
}

AddonSession::~AddonSession() {
  Registry* registry = env_.GetInstanceData<Registry>();
  if (registry) registry->sessions.erase(this);
  Shutdown();
}

void AddonSession::StopAllAtExit() {
  std::lock_guard<std::mutex> lock(liveMutex);
  for (AddonSession* s : LiveSessions()) {
    s->abort_ = true;
    s->JoinGeneration();
  }
}

void AddonSession::JoinGeneration() {
  if (thread_.joinable()) thread_.join();
}

void AddonSession::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(liveMutex);
    LiveSessions().erase(this);
  }
  abort_ = true;
  JoinGeneration();
  if (ctx_) {
    llama_free(ctx_);
    ctx_ = nullptr;
    if (hasBatch_) llama_batch_free(batch_);
    hasBatch_ = false;
    if (pool_) ggml_threadpool_free(pool_);
    if (poolBatch_) ggml_threadpool_free(poolBatch_);
    pool_ = poolBatch_ = nullptr;
    ReleaseFreedMemory();
    if (externalBytes_) Napi::MemoryManagement::AdjustExternalMemory(env_, -externalBytes_);
    externalBytes_ = 0;
  }
  if (model_) {
    model_->sessions--;
    model_ = nullptr;
  }
  cached_.clear();
  PublishCachedCount();
}

void AddonSession::RequireIdle(Napi::Env env) {
  if (!model_) ThrowCoded(env, "ERR_DISPOSED", "the session was disposed");
  if (busy_) ThrowCoded(env, "ERR_BUSY", "the session is busy with another generation or computation");
  if (!ctx_) ThrowCoded(env, "ERR_INVALID_STATE", "the session's context is not initialized");
}

Napi::Value AddonSession::InitContext(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!model_) ThrowCoded(env, "ERR_DISPOSED", "the session was disposed");
  if (ctx_ || busy_) ThrowCoded(env, "ERR_INVALID_STATE", "the session's context is already initialized");
  Napi::Object o = info[0].As<Napi::Object>();
  llama_context_params p = llama_context_default_params();
  p.n_ctx = (uint32_t)NumberOption(o, "contextSize", 2048);
  contextLimit_ = p.n_ctx;
  p.n_batch = (uint32_t)NumberOption(o, "batchSize", 512);
  p.n_ubatch = std::min(p.n_batch, (uint32_t)NumberOption(o, "ubatchSize", 512));
  p.n_seq_max = 1;
  // llama.cpp sizes the compute buffer for n_outputs_max logits rows per ubatch (default: all n_batch rows,
  // 512 × 151,936 floats = 297 MiB). Generation needs one row; logits() decodes in chunks of this many.
  p.n_outputs_max = kMaxOutputsPerDecode;
  p.n_threads = (int32_t)NumberOption(o, "threads", 4);
  p.n_threads_batch = (int32_t)NumberOption(o, "threadsBatch", p.n_threads);
  p.type_k = p.type_v = (ggml_type)(int)NumberOption(o, "kvType", GGML_TYPE_F16);
  p.flash_attn_type = (llama_flash_attn_type)(int)NumberOption(o, "flashAttention", LLAMA_FLASH_ATTN_TYPE_AUTO);
  p.no_perf = true;
  busy_ = true;
  auto* worker = new ContextWorker(env, this, p, (int)NumberOption(o, "poll", 50));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

int32_t AddonSession::DecodeRange(const std::vector<llama_token>& tokens, size_t from, size_t to, bool allLogits, float* logitsOut) {
  // A batch with more output rows than n_outputs_max fails an assertion in llama.cpp (abort): stay below it.
  const int32_t nBatch = allLogits ? std::min<int32_t>(kMaxOutputsPerDecode, (int32_t)llama_n_batch(ctx_)) : (int32_t)llama_n_batch(ctx_);
  const int32_t nVocab = llama_vocab_n_tokens(model_->vocab());
  llama_batch& batch = batch_;
  int32_t rc = 0;
  for (size_t start = from; start < to && rc == 0; start += nBatch) {
    int32_t n = (int32_t)std::min<size_t>(nBatch, to - start);
    batch.n_tokens = n;
    for (int32_t i = 0; i < n; i++) {
      batch.token[i] = tokens[start + i];
      batch.pos[i] = (llama_pos)cached_.size() + i;
      batch.n_seq_id[i] = 1;
      batch.seq_id[i][0] = 0;
      batch.logits[i] = allLogits || start + i == to - 1;
    }
    rc = llama_decode(ctx_, batch);
    if (rc != 0) break;
    cached_.insert(cached_.end(), tokens.begin() + start, tokens.begin() + start + n);
    PublishCachedCount();
    if (logitsOut) {
      for (int32_t i = 0; i < n; i++) {
        std::memcpy(logitsOut + (start - from + i) * (size_t)nVocab, llama_get_logits_ith(ctx_, i), nVocab * sizeof(float));
      }
    }
  }
  // A failed or aborted decode may leave part of a batch in the cache: drop what cached_ does not record.
  if (rc != 0) llama_memory_seq_rm(llama_get_memory(ctx_), 0, (llama_pos)cached_.size(), -1);
  return rc;
}

Napi::Value AddonSession::Logits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireIdle(env);
  auto ids = info[0].As<Napi::Int32Array>();
  std::vector<llama_token> tokens(ids.Data(), ids.Data() + ids.ElementLength());
  abort_ = false;
  busy_ = true;
  auto* worker = new LogitsWorker(env, this, std::move(tokens));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value AddonSession::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireIdle(env);
  auto ids = info[0].As<Napi::Int32Array>();
  std::vector<llama_token> prompt(ids.Data(), ids.Data() + ids.ElementLength());
  if (prompt.empty()) ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "the prompt has no tokens");
  SamplingOptions opts = ReadSamplingOptions(info[1].As<Napi::Object>());
  JoinGeneration();  // the previous generation has ended (busy_ is false); reap its thread
  Ref();             // keep this object alive until the thread-safe function is finalized
  auto tsfn = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "qwen-gguf-generation", 0, 1, this,
                                            [](Napi::Env, AddonSession* self) { self->Unref(); });
  abort_ = false;
  busy_ = true;
  thread_ = std::thread(&AddonSession::RunGeneration, this, std::move(prompt), std::move(opts), tsfn);
  return env.Undefined();
}

void AddonSession::RunGeneration(std::vector<llama_token> prompt, SamplingOptions opts, Napi::ThreadSafeFunction tsfn) {
  auto post = [&](GenerationEvent* ev) {
    if (tsfn.NonBlockingCall(ev, DeliverEvent) != napi_ok) delete ev;
  };
  const llama_vocab* vocab = model_->vocab();
  const size_t nCtx = std::min<size_t>(contextLimit_, llama_n_ctx(ctx_));
  auto done = std::make_unique<GenerationEvent>();
  done->kind = GenerationEvent::Done;
  done->promptTokens = (int32_t)prompt.size();
  const double t0 = NowMs();

  // Reuse the longest cached prefix, but always decode at least the last prompt token to get its logits.
  size_t keep = 0;
  while (opts.cachePrompt && keep < cached_.size() && keep + 1 < prompt.size() && cached_[keep] == prompt[keep]) keep++;
  if (keep < cached_.size() && !llama_memory_seq_rm(llama_get_memory(ctx_), 0, (llama_pos)keep, -1)) {
    llama_memory_clear(llama_get_memory(ctx_), true);
    keep = 0;
  }
  cached_.resize(keep);
  PublishCachedCount();
  done->cachedTokens = (int32_t)keep;
  ClearLastLogError();
  int32_t rc = DecodeRange(prompt, keep, prompt.size(), false, nullptr);
  const double t1 = NowMs();
  done->promptMs = t1 - t0;

  std::string finish;
  if (rc == 2 || abort_) {
    finish = "abort";
  } else if (rc != 0) {
    auto* err = new GenerationEvent{GenerationEvent::Error, "llama_decode failed on the prompt with code " + std::to_string(rc) + ": " + TakeLastLogError(), "ERR_DECODE"};
    busy_ = false;
    post(err);
    tsfn.Release();
    return;
  }

  // Greedy without penalties needs no candidate list: an argmax over the logits row saves building a
  // 151,936-entry array every token (about half a millisecond on small models).
  const bool plainGreedy = opts.temperature <= 0.0f && opts.repeatPenalty == 1.0f && opts.presencePenalty == 0.0f && opts.frequencyPenalty == 0.0f;
  const int32_t nVocab = llama_vocab_n_tokens(vocab);
  llama_sampler* sampler = BuildSampler(vocab, opts);
  for (llama_token t : prompt) llama_sampler_accept(sampler, t);
  TextAssembler text(opts.stop);
  std::vector<llama_token> single(1);
  while (finish.empty()) {
    if (abort_) { finish = "abort"; break; }
    if ((int32_t)done->tokens.size() >= opts.maxTokens) { finish = "length"; break; }
    llama_token token;
    if (plainGreedy) {
      token = ArgMax(llama_get_logits_ith(ctx_, -1), nVocab);
    } else {
      token = llama_sampler_sample(sampler, ctx_, -1);
    }
    done->tokens.push_back(token);
    if (!opts.ignoreEos && llama_vocab_is_eog(vocab, token)) { finish = "stop"; break; }
    char buf[256];
    int32_t n = llama_token_to_piece(vocab, token, buf, sizeof buf, 0, false);
    std::string out = text.Push(std::string(buf, n > 0 ? n : 0));
    if (!out.empty()) post(new GenerationEvent{GenerationEvent::Piece, std::move(out)});
    if (text.stopped()) { finish = "stop"; break; }
    if ((int32_t)done->tokens.size() >= opts.maxTokens) { finish = "length"; break; }
    if (cached_.size() + 1 > nCtx) { finish = "length"; break; }  // the context is full
    single[0] = token;
    rc = DecodeRange(single, 0, 1, false, nullptr);
    if (rc == 2) { finish = "abort"; break; }
    if (rc == 1) { finish = "length"; break; }  // no KV slot left
    if (rc != 0) {
      finish = "error";
      done->kind = GenerationEvent::Error;
      done->finishReason = "ERR_DECODE";
      done->text = "llama_decode failed with code " + std::to_string(rc) + ": " + TakeLastLogError();
    }
  }
  llama_sampler_free(sampler);
  if (finish != "error") {
    std::string rest = text.stopped() ? "" : text.Flush();
    if (!rest.empty()) post(new GenerationEvent{GenerationEvent::Piece, std::move(rest)});
    done->finishReason = finish;
  }
  done->genMs = NowMs() - t1;
  busy_ = false;  // the context is free from here on: the next generation may start
  post(done.release());
  tsfn.Release();
}

void AddonSession::Abort(const Napi::CallbackInfo&) { abort_ = true; }

void AddonSession::Dispose(const Napi::CallbackInfo& info) {
  // A logits task runs on the libuv pool with the context; it must finish before the context goes away.
  if (busy_ && !thread_.joinable()) {
    abort_ = true;
    ThrowCoded(info.Env(), "ERR_BUSY", "the session is computing logits; await it (it was aborted) before disposing");
  }
  Registry::Of(info.Env()).sessions.erase(this);
  Shutdown();
  modelRef_.Reset();
}

Napi::Value AddonSession::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("cachedTokens", (double)cachedCount_.load(std::memory_order_relaxed));
  out.Set("contextSize", ctx_ ? (double)contextLimit_ : 0.0);
  out.Set("batchSize", ctx_ ? (double)llama_n_batch(ctx_) : 0.0);
  out.Set("threads", ctx_ ? (double)llama_n_threads(ctx_) : 0.0);
  out.Set("threadsBatch", ctx_ ? (double)llama_n_threads_batch(ctx_) : 0.0);
  out.Set("stateBytes", (double)externalBytes_);
  out.Set("busy", busy_.load());
  return out;
}

}  // namespace qwen
