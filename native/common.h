// Shared helpers of the qwen-gguf addon: error capture from llama.cpp's log, option reading, timing.
#pragma once

#include <napi.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "llama.h"

namespace qwen {

// The last error or warning lines llama.cpp logged on the calling thread. Loading and decoding report
// failures through the log only, so workers read this to turn a null return into a message that names the cause.
std::string TakeLastLogError();
void ClearLastLogError();

// Throws a JS Error with a `code` property (the facade maps codes to its own error classes).
[[noreturn]] void ThrowCoded(Napi::Env env, const std::string& code, const std::string& message);
Napi::Error CodedError(Napi::Env env, const std::string& code, const std::string& message);

inline double NowMs() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// Option readers for plain JS objects; the TypeScript facade validates types and ranges before calling in.
inline bool HasOption(const Napi::Object& o, const char* key) {
  return o.Has(key) && !o.Get(key).IsUndefined() && !o.Get(key).IsNull();
}
inline double NumberOption(const Napi::Object& o, const char* key, double fallback) {
  return HasOption(o, key) ? o.Get(key).As<Napi::Number>().DoubleValue() : fallback;
}
inline bool BoolOption(const Napi::Object& o, const char* key, bool fallback) {
  return HasOption(o, key) ? o.Get(key).As<Napi::Boolean>().Value() : fallback;
}

// Runs `call`, which calls into JS from a native callback (progress, generation events), where an exception must
// not escape: a throwing user callback, or a terminating worker where every call into JS fails, would abort the
// process. The error is dropped; there is no JS caller left to hand it to.
template <typename Call>
void CallJsIgnoringErrors(Napi::Env env, Call&& call) {
  try {
    call();
  } catch (const Napi::Error&) {
  }
  if (env.IsExceptionPending()) env.GetAndClearPendingException();
}

// Returns freed heap memory to the OS (glibc keeps it in per-thread arenas otherwise; contexts free tens of MB).
void ReleaseFreedMemory();

// Ensures llama_backend_init() and the log hook run once per process, whatever number of Node environments load us.
void EnsureBackend();

}  // namespace qwen
