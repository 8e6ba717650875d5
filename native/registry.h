// Per-environment registry of live native handles, so the env cleanup hook (process or worker exit) can stop
// generations and free contexts before models, whatever the garbage collector has or has not collected.
#pragma once

#include <napi.h>

#include <unordered_set>

namespace qwen {

class AddonModel;
class AddonContext;

struct Registry {
  std::unordered_set<AddonModel*> models;
  std::unordered_set<AddonContext*> contexts;
  Napi::FunctionReference modelClass;
  Napi::FunctionReference contextClass;

  static Registry& Of(Napi::Env env) { return *env.GetInstanceData<Registry>(); }
};

}  // namespace qwen
