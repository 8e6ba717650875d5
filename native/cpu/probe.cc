// CPU feature probe, compiled for baseline x86-64 (no AVX flags) so it loads on any x86-64 CPU. It asks the CPU
// itself (CPUID) and the OS (XGETBV: are the AVX / AVX-512 register states enabled?) before the loader picks a
// variant of the real addon; /proc/cpuinfo can disagree with CPUID (for example under qemu-user).
#include <node_api.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace {

struct Features {
  bool sse42 = false, avx = false, avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false, avx512vbmi = false, avx512vnni = false, avx512bf16 = false;
};

Features Detect() {
  Features f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  f.sse42 = c & (1u << 20);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  const bool osxsave = c & (1u << 27), avxCpu = c & (1u << 28);
  unsigned long long xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = ((unsigned long long)hi << 32) | lo;
  }
  const bool osAvx = (xcr0 & 0x6) == 0x6;        // XMM and YMM state
  const bool osAvx512 = (xcr0 & 0xe6) == 0xe6;   // plus opmask, ZMM_Hi256, Hi16_ZMM
  f.avx = avxCpu && osAvx;
  f.fma = f.fma && osAvx;
  f.f16c = f.f16c && osAvx;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = (b & (1u << 5)) && osAvx;
    f.bmi2 = b & (1u << 8);
    f.avx512f = (b & (1u << 16)) && osAvx512;
    f.avx512dq = (b & (1u << 17)) && osAvx512;
    f.avx512bw = (b & (1u << 30)) && osAvx512;
    f.avx512vl = (b & (1u << 31)) && osAvx512;
    f.avx512vbmi = (c & (1u << 1)) && osAvx512;
    f.avx512vnni = (c & (1u << 11)) && osAvx512;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = (a & (1u << 5)) && osAvx512;
#endif
  return f;
}

void SetBool(napi_env env, napi_value obj, const char* key, bool value) {
  napi_value v;
  napi_get_boolean(env, value, &v);
  napi_set_named_property(env, obj, key, v);
}

napi_value GetFeatures(napi_env env, napi_callback_info) {
  Features f = Detect();
  napi_value out;
  napi_create_object(env, &out);
  SetBool(env, out, "sse4_2", f.sse42);
  SetBool(env, out, "avx", f.avx);
  SetBool(env, out, "avx2", f.avx2);
  SetBool(env, out, "fma", f.fma);
  SetBool(env, out, "f16c", f.f16c);
  SetBool(env, out, "bmi2", f.bmi2);
  SetBool(env, out, "avx512f", f.avx512f);
  SetBool(env, out, "avx512bw", f.avx512bw);
  SetBool(env, out, "avx512dq", f.avx512dq);
  SetBool(env, out, "avx512vl", f.avx512vl);
  SetBool(env, out, "avx512vbmi", f.avx512vbmi);
  SetBool(env, out, "avx512_vnni", f.avx512vnni);
  SetBool(env, out, "avx512_bf16", f.avx512bf16);
  return out;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "features", NAPI_AUTO_LENGTH, GetFeatures, nullptr, &fn);
  napi_set_named_property(env, exports, "features", fn);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
