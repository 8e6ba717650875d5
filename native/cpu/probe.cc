// CPU feature probe, compiled for the architecture's baseline (x86-64, Armv8.0-A; none of the variants' flags) so it
// loads on any CPU of that architecture, before the loader picks a variant of the real addon.
//   x86-64: the CPU itself (CPUID) and the OS (XGETBV: are the AVX / AVX-512 register states enabled?).
//   arm64 Linux: the kernel's hardware capabilities, getauxval(AT_HWCAP / AT_HWCAP2) — what the kernel lets user space
//   run (it masks what it does not support), unlike reading ID registers.
// /proc/cpuinfo is not used: it can disagree with CPUID (for example under qemu-user).
// Elsewhere (other architectures, arm64 outside Linux, compilers without GNU inline assembly) `method` is "none" and
// every feature reads false: the loader then takes the baseline build, the one a source build makes.
#include <node_api.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define PROBE_X86 1
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#define PROBE_ARM64 1
// The bits of linux/arch/arm64/include/uapi/asm/hwcap.h, spelled out for C libraries whose headers predate them.
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ATOMICS
#define HWCAP_ATOMICS (1UL << 8)
#endif
#ifndef HWCAP_FPHP
#define HWCAP_FPHP (1UL << 9)
#endif
#ifndef HWCAP_ASIMDHP
#define HWCAP_ASIMDHP (1UL << 10)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP_SVE
#define HWCAP_SVE (1UL << 22)
#endif
#ifndef HWCAP2_SVE2
#define HWCAP2_SVE2 (1UL << 1)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
#ifndef HWCAP2_BF16
#define HWCAP2_BF16 (1UL << 14)
#endif
#endif

namespace {

void SetBool(napi_env env, napi_value obj, const char* key, bool value) {
  napi_value v;
  napi_get_boolean(env, value, &v);
  napi_set_named_property(env, obj, key, v);
}

#if defined(PROBE_X86)
constexpr const char* kMethod = "cpuid";

struct Features {
  bool sse42 = false, avx = false, avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false, avx512vbmi = false, avx512vnni = false, avx512bf16 = false;
};

Features Detect() {
  Features f;
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
  return f;
}

void Report(napi_env env, napi_value out) {
  Features f = Detect();
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
}
#elif defined(PROBE_ARM64)
constexpr const char* kMethod = "hwcap";

// Names as in /proc/cpuinfo's Features line.
void Report(napi_env env, napi_value out) {
  const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
  SetBool(env, out, "asimd", hwcap & HWCAP_ASIMD);
  SetBool(env, out, "atomics", hwcap & HWCAP_ATOMICS);  // LSE, part of Armv8.1-A: -march=armv8.2-a emits it inline
  SetBool(env, out, "fphp", hwcap & HWCAP_FPHP);
  SetBool(env, out, "asimdhp", hwcap & HWCAP_ASIMDHP);
  SetBool(env, out, "asimddp", hwcap & HWCAP_ASIMDDP);
  SetBool(env, out, "i8mm", hwcap2 & HWCAP2_I8MM);
  SetBool(env, out, "bf16", hwcap2 & HWCAP2_BF16);
  SetBool(env, out, "sve", hwcap & HWCAP_SVE);
  SetBool(env, out, "sve2", hwcap2 & HWCAP2_SVE2);
}
#else
constexpr const char* kMethod = "none";

void Report(napi_env, napi_value) {}
#endif

napi_value GetFeatures(napi_env env, napi_callback_info) {
  napi_value out;
  napi_create_object(env, &out);
  Report(env, out);
  return out;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_value fn, method;
  napi_create_function(env, "features", NAPI_AUTO_LENGTH, GetFeatures, nullptr, &fn);
  napi_set_named_property(env, exports, "features", fn);
  // how the features were found: "cpuid", "hwcap", or "none" (not asked: every feature reads false)
  napi_create_string_utf8(env, kMethod, NAPI_AUTO_LENGTH, &method);
  napi_set_named_property(env, exports, "method", method);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
