// Module entry: registers the handle classes, the process-wide llama.cpp set-up, the env cleanup hook and the
// free functions (versions, quantization for the converter).
#include <napi.h>

#include <cstdio>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <cstdlib>
#ifdef __linux__
#include <dlfcn.h>
#endif
#include <mutex>
#include <thread>
#include <vector>

#include "common.h"
#include "ggml.h"
#include "model.h"
#include "registry.h"
#include "context.h"

namespace qwen {

namespace {
thread_local std::string lastLogError;
bool logToStderr = false;

void LogCallback(ggml_log_level level, const char* text, void*) {
  if (logToStderr) std::fputs(text, stderr);
  if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
    lastLogError += text;
    if (lastLogError.size() > 4096) lastLogError.erase(0, lastLogError.size() - 4096);
  }
}
}  // namespace

std::string TakeLastLogError() {
  std::string out;
  out.swap(lastLogError);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

void ClearLastLogError() { lastLogError.clear(); }

Napi::Error CodedError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

void ThrowCoded(Napi::Env env, const std::string& code, const std::string& message) {
  throw CodedError(env, code, message);
}

void ReleaseFreedMemory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

void EnsureBackend() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* debug = std::getenv("QWEN_GGUF_DEBUG");
    logToStderr = debug && *debug && std::string(debug) != "0";
    llama_log_set(LogCallback, nullptr);
    llama_backend_init();
  });
}

namespace {

// Converts rows of F32/F16/BF16 values (the checkpoint's bytes) to a ggml type with ggml's own routines, so the
// bytes equal llama-quantize's; each native thread widens its share of rows to F32 and quantizes it. One bounded
// task per block of rows on the libuv pool. It writes into the caller's buffer: the converter reuses two, so no
// block allocates (a fresh buffer per block kept V8's GC and the kernel's page zeroing busy).
class QuantizeWorker : public Napi::AsyncWorker {
 public:
  QuantizeWorker(Napi::Env env, ggml_type type, Napi::TypedArray src, ggml_type srcType, int64_t nRows, int64_t nPerRow, int threads, Napi::TypedArray out)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), type_(type), srcType_(srcType),
        src_(static_cast<const uint8_t*>(src.ArrayBuffer().Data()) + src.ByteOffset()),
        out_(static_cast<uint8_t*>(out.ArrayBuffer().Data()) + out.ByteOffset()), nRows_(nRows), nPerRow_(nPerRow), threads_(threads) {
    srcRef_ = Napi::Persistent(src.As<Napi::Object>());  // both buffers must outlive the worker
    outRef_ = Napi::Persistent(out.As<Napi::Object>());
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    const size_t rowSize = ggml_row_size(type_, nPerRow_);
    ggml_quantize_init(type_);
    const int n = (int)std::max<int64_t>(1, std::min<int64_t>(threads_, nRows_));
    const int64_t perThread = (nRows_ + n - 1) / n;
    std::vector<std::thread> pool;
    for (int t = 0; t < n; t++) {
      int64_t first = t * perThread, count = std::min(perThread, nRows_ - first);
      if (count <= 0) break;
      pool.emplace_back([=] { QuantizeRows(first, count, rowSize); });
    }
    for (auto& th : pool) th.join();
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), (double)(ggml_row_size(type_, nPerRow_) * nRows_))); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  void QuantizeRows(int64_t first, int64_t count, size_t rowSize) {
    uint8_t* dst = out_ + first * rowSize;
    if (srcType_ == GGML_TYPE_F32) {
      ggml_quantize_chunk(type_, reinterpret_cast<const float*>(src_) + first * nPerRow_, dst, 0, count, nPerRow_, nullptr);
      return;
    }
    // widen a few rows at a time so the F32 scratch stays small (about 1 MB)
    const int64_t step = std::max<int64_t>(1, (1 << 18) / nPerRow_);
    std::vector<float> scratch(step * nPerRow_);
    for (int64_t r = 0; r < count; r += step) {
      const int64_t rows = std::min(step, count - r);
      const size_t offset = (first + r) * nPerRow_;
      if (srcType_ == GGML_TYPE_BF16) {
        ggml_bf16_to_fp32_row(reinterpret_cast<const ggml_bf16_t*>(src_) + offset, scratch.data(), rows * nPerRow_);
      } else {
        ggml_fp16_to_fp32_row(reinterpret_cast<const ggml_fp16_t*>(src_) + offset, scratch.data(), rows * nPerRow_);
      }
      ggml_quantize_chunk(type_, scratch.data(), dst + r * rowSize, 0, rows, nPerRow_, nullptr);
    }
  }

  Napi::Promise::Deferred deferred_;
  ggml_type type_, srcType_;
  const uint8_t* src_;
  uint8_t* out_;
  int64_t nRows_, nPerRow_;
  int threads_;
  Napi::ObjectReference srcRef_, outRef_;
};

// quantize(type, src, srcType, rows, rowLength, threads, out) → Promise<bytes written to out>
Napi::Value Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int type = info[0].As<Napi::Number>().Int32Value();
  if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((ggml_type)type) == 0) ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "unknown ggml type " + std::to_string(type));
  if (ggml_quantize_requires_imatrix((ggml_type)type)) ThrowCoded(env, "ERR_INVALID_ARG_VALUE", std::string("ggml type ") + ggml_type_name((ggml_type)type) + " needs an importance matrix");
  auto src = info[1].As<Napi::TypedArray>();
  int srcType = info[2].As<Napi::Number>().Int32Value();
  int64_t nRows = info[3].As<Napi::Number>().Int64Value(), nPerRow = info[4].As<Napi::Number>().Int64Value();
  int threads = info[5].As<Napi::Number>().Int32Value();
  if (!info[6].IsTypedArray()) ThrowCoded(env, "ERR_INVALID_ARG_TYPE", "the output must be a Uint8Array");
  auto out = info[6].As<Napi::TypedArray>();
  if (srcType != GGML_TYPE_F32 && srcType != GGML_TYPE_F16 && srcType != GGML_TYPE_BF16) ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "the source must be F32, F16 or BF16");
  const size_t srcBytes = srcType == GGML_TYPE_F32 ? 4 : 2;
  if (nRows <= 0 || nPerRow <= 0 || (int64_t)src.ByteLength() != nRows * nPerRow * (int64_t)srcBytes || src.ByteOffset() % srcBytes != 0) {
    ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "rows × row length does not match the data");
  }
  if (nPerRow % ggml_blck_size((ggml_type)type) != 0) {
    ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "row length " + std::to_string(nPerRow) + " is not a multiple of the " + ggml_type_name((ggml_type)type) + " block size " + std::to_string(ggml_blck_size((ggml_type)type)));
  }
  if (out.ByteLength() < ggml_row_size((ggml_type)type, nPerRow) * nRows) ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "the output buffer is too small");
  auto* worker = new QuantizeWorker(env, (ggml_type)type, src, (ggml_type)srcType, nRows, nPerRow, threads, out);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// Facts about a ggml type the converter needs: block size and bytes per block.
Napi::Value TypeInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int type = info[0].As<Napi::Number>().Int32Value();
  if (type < 0 || type >= GGML_TYPE_COUNT) ThrowCoded(env, "ERR_INVALID_ARG_VALUE", "unknown ggml type " + std::to_string(type));
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", ggml_type_name((ggml_type)type));
  out.Set("blockSize", (double)ggml_blck_size((ggml_type)type));
  out.Set("typeSize", (double)ggml_type_size((ggml_type)type));
  return out;
}

Napi::Value Versions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  EnsureBackend();
  Napi::Object out = Napi::Object::New(env);
  out.Set("llamaCppCommit", QWEN_GGUF_LLAMA_COMMIT);
  out.Set("cpuVariant", QWEN_GGUF_CPU_VARIANT);
  out.Set("systemInfo", llama_print_system_info());
  return out;
}

// Bytes malloc has handed out and not had back (glibc's mallinfo2: arenas plus mmapped chunks), or -1 where that is
// unknown. Tests use it to tell a leak from RSS noise: freeing a model leaves glibc's arenas fragmented by a varying
// 20–45 MB of RSS, but the bytes in use return to where they were. Looked up at run time because mallinfo2 is
// glibc 2.33+, newer than the oldest glibc the prebuilds load on.
Napi::Value HeapInUse(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__) && defined(__linux__)
  struct Info2 { size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost; };
  using Fn = Info2 (*)();
  static Fn fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "mallinfo2"));
  if (fn) {
    Info2 m = fn();
    return Napi::Number::New(info.Env(), (double)(m.uordblks + m.hblkhd));
  }
#endif
  return Napi::Number::New(info.Env(), -1);
}

void CleanupEnv(void* data) {
  auto* registry = static_cast<Registry*>(data);
  // Contexts first (they stop their engine threads and free the llama contexts), then the models they used.
  auto contexts = registry->contexts;
  for (auto* c : contexts) c->Shutdown();
  registry->contexts.clear();
  auto models = registry->models;
  for (auto* m : models) m->Free();
  registry->models.clear();
}

}  // namespace

void KeepRegistry(Napi::Env, Registry*) {}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  auto* registry = new Registry();
  // The registry outlives the environment on purpose (a few bytes): wrapped objects finalized during teardown
  // may still look it up.
  env.SetInstanceData<Registry, KeepRegistry>(registry);
  env.AddCleanupHook(CleanupEnv, registry);
  Napi::Function model = AddonModel::Init(env);
  Napi::Function context = AddonContext::Init(env);
  registry->modelClass = Napi::Persistent(model);
  registry->contextClass = Napi::Persistent(context);
  exports.Set("AddonModel", model);
  exports.Set("AddonContext", context);
  exports.Set("quantize", Napi::Function::New(env, Quantize));
  exports.Set("typeInfo", Napi::Function::New(env, TypeInfo));
  exports.Set("versions", Napi::Function::New(env, Versions));
  exports.Set("heapInUse", Napi::Function::New(env, HeapInUse));  // test-only
  exports.Set("attentionCheck", Napi::Function::New(env, [](const Napi::CallbackInfo& info) { Napi::Value AttentionCheck(const Napi::CallbackInfo&); return AttentionCheck(info); }));  // test-only (native/attention.cc)
  return exports;
}

}  // namespace qwen

static Napi::Object Init(Napi::Env env, Napi::Object exports) { return qwen::InitModule(env, exports); }
NODE_API_MODULE(qwen_gguf, Init)
