// Decode attention for the CPU: a replacement for ggml's flash attention op on the shapes generation produces.
//
// ggml's CPU op (ggml_compute_forward_flash_attn_ext_f16_one_chunk in vendor/.../ggml-cpu/ops.cpp) walks the KV cache
// one cell at a time per query head: a dot product, a scalar expf and an f16 multiply-add per cell, and the query
// heads of a GQA group each read the same K/V rows again. Here one pass over a KV head's cells serves every query head
// of its group (K and V read once), scores are computed for tiles of 32 cells, the online softmax rescales once per
// tile with a vectorised exp, and V accumulates in f32 registers. Sequences of a batch are kept apart by the mask:
// each query row gathers the cells its mask leaves finite, so a unified cache with interleaved sequences costs only
// the cells each row sees. When the (row, KV head) units do not divide evenly among the threads, the cells are split
// across threads and merged by log-sum-exp (flash-decoding).
//
// The link wraps ggml's op (-Wl,--wrap=ggml_compute_forward_flash_attn_ext, next to lazy_clear's wrap): the wrapper
// takes q f32, K/V f16, q8_0 or q4_0, head dim 64/128, GQA 1/2/4/8, at most 8 query rows, an f16 mask shared by the heads, no ALiBi,
// softcap or sinks, on a CPU with AVX2+FMA+F16C (AVX-512 when present); everything else goes to ggml unchanged.
// QWEN_GGUF_ATTENTION=ggml switches to ggml's op at run time (comparison, or a bug report).
//
// Numerics: scores, softmax and the V accumulator are f32 (ggml's op keeps its decode V accumulator in f16 and rounds
// q to f16), so results differ from ggml's by that rounding, not by ours; test/attention.test.ts states the bounds.

#ifndef QWEN_ATTN_PASS  // ---------------------------------------------------------------- common part (first pass)

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ggml.h"

// Only where CMakeLists.txt wraps the op: Linux (GNU ld, gold, lld and mold all have --wrap).
#if defined(__linux__)
#define QWEN_ATTN_WRAPPED 1
#endif

#if defined(QWEN_ATTN_WRAPPED) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QWEN_ATTN_X86 1
#include <immintrin.h>
// K/V rows of the next tile are prefetched into L2, not L1: a head's tile is 256 lines of K and V wanted within about
// 2 µs, more misses than L1 tracks at once, so T0 prefetches stalled or were dropped and each thread streamed only
// ~8 GB/s (0.6B at depth 2048: 34.3 → 46 tok/s with T1; the loads then hit L2).
#define QWEN_ATTN_PREFETCH_HINT _MM_HINT_T1
#endif

struct ggml_threadpool;
// ggml_compute_params as declared in vendor/llama.cpp/ggml/src/ggml-cpu/ggml-cpu-impl.h at the pinned commit. That
// header cannot be included from here (it includes ggml-impl.h by a path only ggml's own targets have); the dev build
// in .cache/attn-dev includes both and static_asserts that the layouts agree.
struct qwen_compute_params {
  int ith, nth;
  size_t wsize;
  void* wdata;
  struct ggml_threadpool* threadpool;
  bool use_ref;
};

extern "C" {
// weak: a link without the wrap (which then never calls __wrap_) still resolves
__attribute__((weak)) void __real_ggml_compute_forward_flash_attn_ext(const qwen_compute_params* params, ggml_tensor* dst);
void ggml_barrier(struct ggml_threadpool* tp);
}

namespace qwen_attn {

// What the op needs to know about one (query row, KV head) unit's cells.
struct Cells {
  const int32_t* idx;  // active cell indices, or nullptr: cells [begin, begin + n)
  const float* mask;   // mask value per active cell (aligned with idx), or nullptr: 0
  int64_t begin, n;
};

// One query row against a block of consecutive KV heads [0, heads) of it: heads*G query rows.
struct UnitArgs {
  const float* q;     // query row of head 0 of the block (its G*heads heads follow at nbq2)
  size_t nbq2;        // bytes between query heads
  const char* k;      // K of the block's first KV head at cell 0
  const char* v;
  size_t nbk1, nbv1;  // bytes between cells
  size_t nbk2, nbv2;  // bytes between KV heads
  int heads;          // KV heads in the block
  float scale;
};

// Kernel: accumulates the cells into acc[heads*G][DV], M[heads*G], S[heads*G] (online softmax state,
// unnormalised). qbuf: scratch of heads*G*DK floats, 64-byte aligned.
using KernelFn = void (*)(const UnitArgs&, const Cells&, float* qbuf, float* acc, float* M, float* S);

enum Mode : int { kAuto = 0, kForceGgml = 1, kForceOurs = 2 };
std::atomic<int> g_mode{kAuto};
std::atomic<uint64_t> g_fast_calls{0}, g_fallback_calls{0}, g_split_calls{0};  // counted by thread 0 (tests)

}  // namespace qwen_attn

#ifdef QWEN_ATTN_X86
#define QWEN_ATTN_PASS 1  // AVX2 + FMA + F16C
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
namespace qwen_attn { namespace avx2 {
#include __FILE__
} }
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#undef QWEN_ATTN_PASS

// The AVX-512 pass only in the avx512 variant: the avx2 build stays free of AVX-512 instructions (the packaging
// test checks it), whatever the CPU that runs it.
#ifdef QWEN_GGUF_VARIANT_AVX512
#define QWEN_ATTN_PASS 2  // AVX-512 F/VL/BW/DQ
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#endif
namespace qwen_attn { namespace avx512 {
#include __FILE__
} }
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#undef QWEN_ATTN_PASS
#endif  // QWEN_GGUF_VARIANT_AVX512
#endif  // QWEN_ATTN_X86

#ifdef QWEN_ATTN_WRAPPED
namespace qwen_attn {
namespace {

KernelFn g_kernels[3][2][4];  // [K/V type f16, q8_0, q4_0][DK 64, 128][G 1, 2, 4, 8]

int TypeIndex(ggml_type t) { return t == GGML_TYPE_F16 ? 0 : t == GGML_TYPE_Q8_0 ? 1 : t == GGML_TYPE_Q4_0 ? 2 : -1; }
bool g_env_ggml = false;

int Log2G(int64_t g) { return g == 1 ? 0 : g == 2 ? 1 : g == 4 ? 2 : g == 8 ? 3 : -1; }

// Picked once, before any graph runs (static initialisation of the addon).
struct Init {
  Init() {
    const char* env = std::getenv("QWEN_GGUF_ATTENTION");
    g_env_ggml = env && std::strcmp(env, "ggml") == 0;
#ifdef QWEN_ATTN_X86
    __builtin_cpu_init();
#ifdef QWEN_GGUF_VARIANT_AVX512
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq")) {
      avx512::Register(g_kernels);
    } else
#endif
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      avx2::Register(g_kernels);
    }
#endif
  }
} g_init;

constexpr int64_t DK_MAX = 128;
constexpr int64_t kMaxRows = 8;          // more query rows: a prompt, where ggml's tiled GEMM path is the right one
constexpr int64_t kMinCellsPerChunk = 256;  // below this a KV split costs more in merging than it balances

// The op's inputs, validated: any shape or layout not listed here is ggml's.
struct Op {
  const ggml_tensor *q, *k, *v, *mask;
  ggml_tensor* dst;
  int64_t DK, N, nh, nkh, G, nkv, nq3, rk3;
  float scale;
  KernelFn kernel;
};

bool Accept(const ggml_tensor* dst, Op& op) {
  const ggml_tensor *q = dst->src[0], *k = dst->src[1], *v = dst->src[2], *mask = dst->src[3];
  if (!q || !k || !v || dst->src[4]) return false;  // src[4]: attention sinks
  // K and V of one cache type (llama's engine sets both from kvType); mixed types go to ggml
  const int ti = TypeIndex(k->type);
  if (q->type != GGML_TYPE_F32 || ti < 0 || v->type != k->type || dst->type != GGML_TYPE_F32) return false;
  const int32_t prec = dst->op_params[3];
  if (prec != GGML_PREC_DEFAULT && prec != GGML_PREC_F32) return false;
  float scale, max_bias, softcap;
  std::memcpy(&scale, (const float*)dst->op_params + 0, sizeof(float));
  std::memcpy(&max_bias, (const float*)dst->op_params + 1, sizeof(float));
  std::memcpy(&softcap, (const float*)dst->op_params + 2, sizeof(float));
  if (max_bias != 0.0f || softcap != 0.0f) return false;
  const int64_t DK = k->ne[0];
  if ((DK != 64 && DK != 128) || q->ne[0] != DK || v->ne[0] != DK) return false;
  const int64_t N = q->ne[1], nh = q->ne[2], nq3 = q->ne[3], nkv = k->ne[1], nkh = k->ne[2];
  if (N < 1 || N > kMaxRows || nh < 1 || nkh < 1 || nkv < 1 || nkv >= INT32_MAX || nq3 < 1) return false;
  if (nh % nkh != 0 || Log2G(nh / nkh) < 0) return false;
  if (v->ne[1] != nkv || v->ne[2] != nkh || k->ne[3] != v->ne[3] || k->ne[3] < 1 || nq3 % k->ne[3] != 0) return false;
  if (q->nb[0] != sizeof(float) || k->nb[0] != ggml_type_size(k->type) || v->nb[0] != ggml_type_size(v->type)) return false;
  // dst rows [DV, heads, rows, streams], contiguous: written as ggml writes them
  if (dst->ne[0] != DK || dst->ne[1] != nh || dst->ne[2] != N || dst->ne[3] != nq3 || !ggml_is_contiguous(dst)) return false;
  if (mask) {
    // one mask row per query row shared by all heads (llama's); per-head masks go to ggml
    if (mask->type != GGML_TYPE_F16 || !ggml_is_contiguous(mask) || mask->ne[0] < nkv || mask->ne[1] < N ||
        mask->ne[2] != 1 || mask->ne[3] < 1 || nq3 % mask->ne[3] != 0)
      return false;
  }
  if (!q->data || !k->data || !v->data || !dst->data || (mask && !mask->data)) return false;
  const KernelFn kernel = g_kernels[ti][DK == 128][Log2G(nh / nkh)];
  if (!kernel) return false;
  op = Op{q, k, v, mask, const_cast<ggml_tensor*>(dst), DK, N, nh, nkh, nh / nkh, nkv, nq3, nq3 / k->ne[3], scale, kernel};
  return true;
}

// Active cells of one mask row: indices whose f16 mask is not -inf, with their values.
void GatherCells(const ggml_fp16_t* m, int64_t nkv, std::vector<int32_t>& idx, std::vector<float>& val) {
  idx.clear();
  val.clear();
  constexpr uint16_t kNegInf = 0xFC00;
  int64_t c = 0;
  for (; c + 4 <= nkv; c += 4) {
    uint64_t w;
    std::memcpy(&w, m + c, sizeof(w));
    if (w == 0xFC00FC00FC00FC00ull) continue;  // four masked cells: the common case between sequences
    for (int j = 0; j < 4; ++j) {
      const uint16_t b = (uint16_t)(w >> (16 * j));
      if (b == kNegInf) continue;
      idx.push_back((int32_t)(c + j));
      val.push_back(b == 0 ? 0.0f : ggml_fp16_to_fp32(m[c + j]));
    }
  }
  for (; c < nkv; ++c) {
    uint16_t b;
    std::memcpy(&b, m + c, sizeof(b));
    if (b == kNegInf) continue;
    idx.push_back((int32_t)c);
    val.push_back(b == 0 ? 0.0f : ggml_fp16_to_fp32(m[c]));
  }
}

thread_local std::vector<int32_t> t_idx;
thread_local std::vector<float> t_val;
thread_local std::vector<float> t_state;  // q copies, accumulators, M and S of the thread's heads

void Run(const qwen_compute_params* params, const Op& op) {
  const int ith = params->ith, nth = params->nth;
  const int64_t DV = op.DK, G = op.G, rows = op.nq3 * op.N;

  // Threads take KV heads: each streams its part of every cell's K and V row and nothing is merged. When the heads do
  // not divide among the threads (or there are fewer heads than threads), the cells are split instead and the
  // threads' partial softmax states merged by log-sum-exp (flash-decoding), provided the cache is long enough to be
  // worth it and ggml's work buffer (sized for its own split) holds the partials.
  bool split = false;
  const size_t part_floats = (size_t)(rows * nth * op.nh * (2 + DV));
  if (nth > 1 && op.nkh % nth != 0 && params->wdata && params->wsize >= part_floats * sizeof(float)) {
    split = op.nkv >= nth * kMinCellsPerChunk;
  }
  int64_t h0 = 0, h1 = op.nkh;
  if (!split) h0 = op.nkh * ith / nth, h1 = op.nkh * (ith + 1) / nth;
  const int64_t heads = h1 - h0;
  if (heads > 0) {
    const size_t nq = (size_t)(heads * G);
    t_state.resize(nq * DK_MAX * 2 + nq * 2 + 16);
    float* qbuf = (float*)(((uintptr_t)t_state.data() + 63) & ~(uintptr_t)63);
    float* acc = qbuf + nq * op.DK;
    float* M = acc + nq * DV;
    float* S = M + nq;
    if (split && ith == 0) g_split_calls.fetch_add(1, std::memory_order_relaxed);

    for (int64_t row = 0; row < rows; ++row) {
      const int64_t iq1 = row % op.N, iq3 = row / op.N;
      Cells cells{nullptr, nullptr, 0, op.nkv};
      if (op.mask) {
        const auto* m = (const ggml_fp16_t*)((const char*)op.mask->data + iq1 * op.mask->nb[1] + (iq3 % op.mask->ne[3]) * op.mask->nb[3]);
        GatherCells(m, op.nkv, t_idx, t_val);
        cells = Cells{t_idx.data(), t_val.data(), 0, (int64_t)t_idx.size()};
      }
      if (split) {  // this thread's share of the row's active cells
        const int64_t c0 = cells.n * ith / nth, c1 = cells.n * (ith + 1) / nth;
        if (cells.idx) {
          cells.idx += c0;
          cells.mask += c0;
        } else {
          cells.begin = c0;
        }
        cells.n = c1 - c0;
      }
      const int64_t ik3 = iq3 / op.rk3;
      UnitArgs args;
      args.q = (const float*)((const char*)op.q->data + iq1 * op.q->nb[1] + h0 * G * op.q->nb[2] + iq3 * op.q->nb[3]);
      args.nbq2 = op.q->nb[2];
      args.k = (const char*)op.k->data + h0 * op.k->nb[2] + ik3 * op.k->nb[3];
      args.v = (const char*)op.v->data + h0 * op.v->nb[2] + ik3 * op.v->nb[3];
      args.nbk1 = op.k->nb[1];
      args.nbv1 = op.v->nb[1];
      args.nbk2 = op.k->nb[2];
      args.nbv2 = op.v->nb[2];
      args.heads = (int)heads;
      args.scale = op.scale;
      for (size_t i = 0; i < nq; ++i) M[i] = -INFINITY, S[i] = 0.0f;
      std::memset(acc, 0, sizeof(float) * nq * DV);
      if (cells.n > 0) op.kernel(args, cells, qbuf, acc, M, S);

      for (size_t i = 0; i < nq; ++i) {
        const int64_t iq2 = h0 * G + (int64_t)i;
        if (!split) {
          float* out = (float*)((char*)op.dst->data + (iq3 * op.N * op.nh + iq2 + iq1 * op.nh) * op.dst->nb[1]);
          const float inv = S[i] == 0.0f ? 0.0f : 1.0f / S[i];  // no visible cell: zeros, as ggml
          for (int64_t d = 0; d < DV; ++d) out[d] = acc[i * DV + d] * inv;
        } else {  // partials [row][head][thread][M, S, acc]
          float* part = (float*)params->wdata + ((row * op.nh + iq2) * nth + ith) * (2 + DV);
          part[0] = M[i];
          part[1] = S[i];
          std::memcpy(part + 2, acc + i * DV, sizeof(float) * DV);
        }
      }
    }
  }
  if (!split) return;

  ggml_barrier(params->threadpool);
  for (int64_t r = ith; r < rows * op.nh; r += nth) {  // each thread merges whole (row, head) outputs
    const int64_t row = r / op.nh, iq2 = r % op.nh, iq1 = row % op.N, iq3 = row / op.N;
    const float* parts = (const float*)params->wdata + r * nth * (2 + DV);
    float Mx = -INFINITY;
    for (int t = 0; t < nth; ++t) Mx = std::max(Mx, parts[t * (2 + DV)]);
    float* out = (float*)((char*)op.dst->data + (iq3 * op.N * op.nh + iq2 + iq1 * op.nh) * op.dst->nb[1]);
    for (int64_t d = 0; d < DV; ++d) out[d] = 0.0f;
    float Ssum = 0.0f;
    for (int t = 0; t < nth && Mx != -INFINITY; ++t) {
      const float* part = parts + t * (2 + DV);
      if (part[1] == 0.0f) continue;
      const float w = std::exp(part[0] - Mx);
      Ssum += part[1] * w;
      for (int64_t d = 0; d < DV; ++d) out[d] += part[2 + d] * w;
    }
    const float inv = Ssum == 0.0f ? 0.0f : 1.0f / Ssum;
    for (int64_t d = 0; d < DV; ++d) out[d] *= inv;
  }
}

}  // namespace
}  // namespace qwen_attn

extern "C" __attribute__((visibility("hidden"))) void __wrap_ggml_compute_forward_flash_attn_ext(const qwen_compute_params* params, ggml_tensor* dst) {
  using namespace qwen_attn;
  const int mode = g_mode.load(std::memory_order_relaxed);
  Op op;
  if (mode == kForceGgml || (mode == kAuto && g_env_ggml) || params->use_ref || params->nth < 1 || !Accept(dst, op)) {
    if (params->ith == 0) g_fallback_calls.fetch_add(1, std::memory_order_relaxed);
    __real_ggml_compute_forward_flash_attn_ext(params, dst);
    return;
  }
  if (params->ith == 0) g_fast_calls.fetch_add(1, std::memory_order_relaxed);
  Run(params, op);
}
#endif  // QWEN_ATTN_WRAPPED


#ifdef QWEN_ATTN_WRAPPED
// ---- test support: the op on random inputs through a real ggml graph, ours against ggml's own and a float64 reference
#include "ggml-cpu.h"
#include <time.h>
#include <random>

namespace qwen_attn {

struct CheckArgs {
  int headDim = 128, gqa = 2, kvHeads = 2, kvLen = 256, rows = 1, seqs = 1, threads = 2;
  double maskedFraction = 0.0;  // extra cells masked (-inf) at random inside a row's own sequence
  double qScale = 1.0;          // larger: peakier softmax
  bool interleave = false;      // cells of the sequences interleaved (a unified cache decoding several sequences)
  int kvType = GGML_TYPE_F16;
  uint32_t seed = 1;
  int benchIters = 0;    // > 0: also time the graph, ours and ggml's (dev micro-benchmark)
  bool autoMode = false;  // the first run as in production (QWEN_GGUF_ATTENTION decides) instead of forcing ours
};

struct CheckResult {
  bool ran = false;
  double errOurs = 0, errGgml = 0, diff = 0;  // max abs: ours vs f64, ggml vs f64, ours vs ggml
  double maxRef = 0;                           // max |reference| (scale of the outputs)
  uint64_t fastCalls = 0, fallbackCalls = 0, splitCalls = 0;  // during the "ours" run
  double usOurs = 0, usGgml = 0;                                // per graph run, with benchIters
};

inline CheckResult Check(const CheckArgs& a) {
  CheckResult res;
  const int DK = a.headDim, G = a.gqa, NKH = a.kvHeads, NH = G * NKH, NKV = a.kvLen, N = a.rows;
  const int NPAD = (N + 7) / 8 * 8;  // mask rows padded, as llama pads them
  const ggml_type kvt = (ggml_type)a.kvType;
  ggml_cpu_init();
  const size_t bytes = (size_t)NKV * NKH * DK * 4 * 2 + (size_t)NH * N * DK * 4 * 3 + (size_t)NKV * NPAD * 2 +
                       (size_t)(NH * N * (DK + 2) * 4) * (a.threads + 2) * 2 + ((size_t)64 << 20);
  ggml_init_params ip{bytes, nullptr, false};
  ggml_context* ctx = ggml_init(ip);
  if (!ctx) return res;
  std::mt19937 rng(a.seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  // the cache as llama lays it out: [DK, kv heads, cells], viewed as [DK, cells, kv heads]
  ggml_tensor* kf = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, DK, NKH, NKV);
  ggml_tensor* vf32 = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, DK, NKH, NKV);
  for (int64_t i = 0; i < ggml_nelements(kf); ++i) ((float*)kf->data)[i] = uni(rng), ((float*)vf32->data)[i] = uni(rng);
  ggml_tensor* kc = ggml_new_tensor_3d(ctx, kvt, DK, NKH, NKV);
  ggml_tensor* vc = ggml_new_tensor_3d(ctx, kvt, DK, NKH, NKV);
  // values as the cache holds them (rounded / quantised), for the reference
  std::vector<float> kr(ggml_nelements(kf)), vr(ggml_nelements(kf));
  {
    const auto* tt = ggml_get_type_traits(kvt);
    if (kvt == GGML_TYPE_F32) {  // a type the kernel declines
      std::memcpy(kc->data, kf->data, ggml_nbytes(kf));
      std::memcpy(vc->data, vf32->data, ggml_nbytes(kf));
    } else if (kvt == GGML_TYPE_F16) {
      ggml_fp32_to_fp16_row((float*)kf->data, (ggml_fp16_t*)kc->data, ggml_nelements(kf));
      ggml_fp32_to_fp16_row((float*)vf32->data, (ggml_fp16_t*)vc->data, ggml_nelements(kf));
    } else {
      ggml_quantize_chunk(kvt, (float*)kf->data, kc->data, 0, (int64_t)NKH * NKV, DK, nullptr);
      ggml_quantize_chunk(kvt, (float*)vf32->data, vc->data, 0, (int64_t)NKH * NKV, DK, nullptr);
    }
    if (kvt == GGML_TYPE_F32) {
      std::memcpy(kr.data(), kf->data, ggml_nbytes(kf));
      std::memcpy(vr.data(), vf32->data, ggml_nbytes(kf));
    } else {
      tt->to_float(kc->data, kr.data(), ggml_nelements(kf));
      tt->to_float(vc->data, vr.data(), ggml_nelements(kf));
    }
  }
  ggml_tensor* k = ggml_permute(ctx, kc, 0, 2, 1, 3);
  ggml_tensor* v = ggml_permute(ctx, vc, 0, 2, 1, 3);
  ggml_tensor* qc = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, DK, NH, N);  // [DK, heads, tokens] as the projections give it
  std::normal_distribution<float> nd(0.0f, (float)a.qScale);
  for (int64_t i = 0; i < ggml_nelements(qc); ++i) ((float*)qc->data)[i] = nd(rng);
  ggml_tensor* q = ggml_permute(ctx, qc, 0, 2, 1, 3);
  // mask: row r belongs to sequence r % seqs; a cell belongs to one sequence (blocks, or interleaved)
  ggml_tensor* mask = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, NKV, NPAD);
  std::vector<float> mref((size_t)NKV * NPAD);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  for (int r = 0; r < NPAD; ++r)
    for (int c = 0; c < NKV; ++c) {
      const int seq = a.interleave ? c % a.seqs : (int)((int64_t)c * a.seqs / NKV);
      float m = (r < N && seq == r % a.seqs && u01(rng) >= a.maskedFraction) ? 0.0f : -INFINITY;
      if (m == 0.0f && u01(rng) < 0.05) m = -(float)(u01(rng) * 4);  // a few finite non-zero mask values
      ((ggml_fp16_t*)mask->data)[(size_t)r * NKV + c] = ggml_fp32_to_fp16(m);
      mref[(size_t)r * NKV + c] = ggml_fp16_to_fp32(ggml_fp32_to_fp16(m));
    }
  const float scale = 1.0f / std::sqrt((float)DK);
  ggml_tensor* out = ggml_flash_attn_ext(ctx, q, k, v, mask, scale, 0.0f, 0.0f);
  ggml_prec_set_acc(out, GGML_PREC_F32);
  ggml_cgraph* gf = ggml_new_graph(ctx);
  ggml_build_forward_expand(gf, out);

  // one work buffer for every run (ggml_graph_compute_with_ctx would take a new one from ctx each time)
  // a thread pool that lives for all the runs, as a context's does
  ggml_threadpool_params tpp = ggml_threadpool_params_default(a.threads);
  ggml_threadpool* pool = ggml_threadpool_new(&tpp);
  ggml_cplan plan = ggml_graph_plan(gf, a.threads, pool);
  std::vector<uint8_t> work(plan.work_size + 64);
  plan.work_data = work.data();
  const size_t nout = (size_t)ggml_nelements(out);
  std::vector<float> ours(nout), theirs(nout);
  const uint64_t f0 = g_fast_calls.load(), b0 = g_fallback_calls.load(), s0 = g_split_calls.load();
  g_mode = a.autoMode ? kAuto : kForceOurs;
  const bool ok1 = ggml_graph_compute(gf, &plan) == GGML_STATUS_SUCCESS;
  res.fastCalls = g_fast_calls.load() - f0;
  res.fallbackCalls = g_fallback_calls.load() - b0;
  res.splitCalls = g_split_calls.load() - s0;
  std::memcpy(ours.data(), out->data, nout * sizeof(float));
  g_mode = kForceGgml;
  const bool ok2 = ggml_graph_compute(gf, &plan) == GGML_STATUS_SUCCESS;
  std::memcpy(theirs.data(), out->data, nout * sizeof(float));
  for (int pass = 0; pass < 2 && a.benchIters > 0; ++pass) {
    g_mode = pass == 0 ? kForceOurs : kForceGgml;
    // process CPU time: the machine is shared, wall time would count other processes' turns
    timespec c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    for (int i = 0; i < a.benchIters; ++i) ggml_graph_compute(gf, &plan);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    const double us = ((c1.tv_sec - c0.tv_sec) * 1e6 + (c1.tv_nsec - c0.tv_nsec) / 1e3) / a.benchIters;
    (pass == 0 ? res.usOurs : res.usGgml) = us;
  }
  g_mode = kAuto;

  // float64 reference from the values the cache holds and the f32 queries
  std::vector<double> sc(NKV), o(DK);
  for (int r = 0; r < N; ++r)
    for (int h = 0; h < NH; ++h) {
      const int hk = h / G;
      const float* qr = (const float*)qc->data + ((size_t)r * NH + h) * DK;
      double mx = -INFINITY;
      for (int c = 0; c < NKV; ++c) {
        const double m = mref[(size_t)r * NKV + c];
        if (m == -INFINITY) { sc[c] = -INFINITY; continue; }
        double d = 0;
        const float* kk = kr.data() + ((size_t)c * NKH + hk) * DK;
        for (int i = 0; i < DK; ++i) d += (double)qr[i] * kk[i];
        sc[c] = d * scale + m;
        mx = std::max(mx, sc[c]);
      }
      std::fill(o.begin(), o.end(), 0.0);
      double sum = 0;
      if (mx != -INFINITY)
        for (int c = 0; c < NKV; ++c) {
          if (sc[c] == -INFINITY) continue;
          const double p = std::exp(sc[c] - mx);
          sum += p;
          const float* vv = vr.data() + ((size_t)c * NKH + hk) * DK;
          for (int i = 0; i < DK; ++i) o[i] += p * vv[i];
        }
      const size_t off = ((size_t)r * NH + h) * DK;  // dst [DV, heads, tokens]
      for (int i = 0; i < DK; ++i) {
        const double ref = sum > 0 ? o[i] / sum : 0.0;
        res.maxRef = std::max(res.maxRef, std::fabs(ref));
        res.errOurs = std::max(res.errOurs, std::fabs(ours[off + i] - ref));
        res.errGgml = std::max(res.errGgml, std::fabs(theirs[off + i] - ref));
        res.diff = std::max(res.diff, (double)std::fabs(ours[off + i] - theirs[off + i]));
        if (!std::isfinite(ours[off + i])) res.errOurs = INFINITY;
      }
    }
  res.ran = ok1 && ok2;
  if (pool) ggml_threadpool_free(pool);
  ggml_free(ctx);
  return res;
}

}  // namespace qwen_attn
#endif  // QWEN_ATTN_WRAPPED (test support)

#ifdef NAPI_VERSION
// Test-only entry point (test/attention.test.ts): attentionCheck({headDim, gqa, kvHeads, kvLen, rows, seqs, threads,
// maskedFraction, qScale, interleave, kvType, seed}) runs the op both ways on random inputs and returns the errors.
#include <napi.h>

namespace qwen {
Napi::Value AttentionCheck(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
#ifdef QWEN_ATTN_WRAPPED
  if (info.Length() < 1 || !info[0].IsObject()) {
    Napi::TypeError::New(env, "attentionCheck(options)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[0].As<Napi::Object>();
  auto num = [&](const char* key, double def, double lo, double hi) {
    const Napi::Value v = o.Get(key);
    const double x = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : def;
    if (!(x >= lo && x <= hi)) throw Napi::RangeError::New(env, std::string(key) + " out of range");
    return x;
  };
  qwen_attn::CheckArgs a;
  a.headDim = (int)num("headDim", 128, 1, 256);
  a.gqa = (int)num("gqa", 2, 1, 16);
  a.kvHeads = (int)num("kvHeads", 2, 1, 16);
  a.kvLen = (int)num("kvLen", 256, 1, 65536);
  a.rows = (int)num("rows", 1, 1, 64);
  a.seqs = (int)num("seqs", 1, 1, a.rows);
  a.threads = (int)num("threads", 2, 1, 16);
  a.maskedFraction = num("maskedFraction", 0, 0, 1);
  a.qScale = num("qScale", 1, 0, 100);
  a.interleave = o.Get("interleave").ToBoolean().Value();
  a.kvType = (int)num("kvType", GGML_TYPE_F16, 0, GGML_TYPE_COUNT - 1);
  a.seed = (uint32_t)num("seed", 1, 0, 4294967295.0);
  a.autoMode = o.Get("autoMode").ToBoolean().Value();
  a.benchIters = (int)num("benchIters", 0, 0, 10000);
  const ggml_type t = (ggml_type)a.kvType;
  if (!(t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_Q8_0 || t == GGML_TYPE_Q4_0) || a.headDim % ggml_blck_size(t) != 0)
    throw Napi::RangeError::New(env, "kvType: f32, f16, q8_0 or q4_0 with headDim a multiple of its block");
  const qwen_attn::CheckResult r = qwen_attn::Check(a);
  out.Set("available", true);
  out.Set("ran", r.ran);
  out.Set("errOurs", r.errOurs);
  out.Set("errGgml", r.errGgml);
  out.Set("diff", r.diff);
  out.Set("maxRef", r.maxRef);
  out.Set("fastCalls", (double)r.fastCalls);
  out.Set("fallbackCalls", (double)r.fallbackCalls);
  out.Set("splitCalls", (double)r.splitCalls);
  out.Set("usOurs", r.usOurs);  // process CPU µs per graph run, with benchIters
  out.Set("usGgml", r.usGgml);
#else
  out.Set("available", false);
#endif
  return out;
}
}  // namespace qwen
#endif  // NAPI_VERSION

#else  // ---------------------------------------------------------------- QWEN_ATTN_PASS: one ISA's kernels

#if QWEN_ATTN_PASS == 1
using vf = __m256;
constexpr int W = 8;
static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
static inline vf vloadh(const void* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
static inline vf vload_i8(const void* p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))); }
// 8 nibbles of q4_0 (low halves of 8 bytes, or high halves), minus 8
static inline vf vload_q4(const void* p, bool high) {
  __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
  x = high ? _mm256_srli_epi32(x, 4) : _mm256_and_si256(x, _mm256_set1_epi32(15));
  return _mm256_cvtepi32_ps(_mm256_sub_epi32(x, _mm256_set1_epi32(8)));
}
static inline void vstore(float* p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf vset1(float x) { return _mm256_set1_ps(x); }
static inline vf vzero() { return _mm256_setzero_ps(); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline float hsum(vf x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// the eight sums of v[0..7] in one pass (lane i: sum of v[i])
static inline void hsum8(const vf* v, float* out) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
}
static inline float hmax(vf x) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// exp(x) for x <= 0: 2^n * p(r), r = x - n ln2, degree-6 Taylor (|r| <= ln2/2: < 2 ulp); below -87.3 exactly 0.
static inline vf vexp(vf x) {
  const vf lim = _mm256_set1_ps(-87.33f);
  const vf under = _mm256_cmp_ps(x, lim, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lim);
  const vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504089f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  vf p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));  // n >= -126 here: a normal power of two
  return _mm256_andnot_ps(under, p);
}
#else
using vf = __m512;
constexpr int W = 16;
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline vf vloadh(const void* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
static inline vf vload_i8(const void* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p))); }
// 16 nibbles of q4_0 (low halves of 16 bytes, or high halves), minus 8
static inline vf vload_q4(const void* p, bool high) {
  __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
  x = high ? _mm512_srli_epi32(x, 4) : _mm512_and_si512(x, _mm512_set1_epi32(15));
  return _mm512_cvtepi32_ps(_mm512_sub_epi32(x, _mm512_set1_epi32(8)));
}
static inline void vstore(float* p, vf x) { _mm512_storeu_ps(p, x); }
static inline vf vset1(float x) { return _mm512_set1_ps(x); }
static inline vf vzero() { return _mm512_setzero_ps(); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline float hsum(vf x) {
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline float hmax(vf x) { return _mm512_reduce_max_ps(x); }
// the eight sums of v[0..7] in one pass: 22 shuffles and adds instead of 8 separate reductions
static inline void hsum8(const vf* v, float* out) {
  __m512 z[4], w[2];
  for (int i = 0; i < 4; ++i)  // 128-bit lanes (0+2, 1+3) of v[2i] and v[2i+1]
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)  // lane k: partial sums of v[4i + k]
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], 0x88), _mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], 0xDD));
  const __m512 u = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]), _mm512_unpackhi_ps(w[0], w[1]));
  const __m512 p = _mm512_add_ps(u, _mm512_permute_ps(u, _MM_SHUFFLE(1, 0, 3, 2)));  // lane k: (v[k], v[k+4], ..)
  alignas(64) float t[16];
  _mm512_store_ps(t, p);
  for (int k = 0; k < 4; ++k) out[k] = t[4 * k], out[k + 4] = t[4 * k + 1];
}
static inline vf vexp(vf x) {
  const vf lim = _mm512_set1_ps(-87.33f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lim, _CMP_GE_OQ);  // NaN and below the limit: 0
  x = _mm512_max_ps(x, lim);
  const vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  vf p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(keep, p, n);
}
#endif

constexpr int kTile = 32;  // cells per softmax step: one rescale per tile, scores stay in L1

// Cache types, dequantised in registers to f32 (ggml's layouts: q8_0 = f16 scale + 32 int8, q4_0 = f16 scale + 16
// bytes of nibbles, elements 0-15 in the low halves and 16-31 in the high halves).
enum KvType { kF16 = 0, kQ8 = 1, kQ4 = 2 };
template <int KT>
constexpr int RowBytes(int d) { return KT == kF16 ? d * 2 : KT == kQ8 ? d / 32 * 34 : d / 32 * 18; }

// Elements [j*W, j*W + W) of a row, as f32.
template <int KT>
static inline vf LoadRow(const char* row, int j) {
  if constexpr (KT == kF16) {
    return vloadh((const ggml_fp16_t*)row + j * W);
  } else {
    constexpr int per = 32 / W;  // vectors per block
    const char* b = row + (j / per) * (KT == kQ8 ? 34 : 18);
    uint16_t dh;
    std::memcpy(&dh, b, 2);
    const vf d = vset1(_cvtsh_ss(dh));
    const int k = j % per;
    if constexpr (KT == kQ8) {
      return vmul(vload_i8(b + 2 + k * W), d);
    } else {  // W=16: k 0 low nibbles, 1 high; W=8: k 0,1 low (bytes 0-7, 8-15), 2,3 high
      const int half = W == 16 ? k : k >> 1, part = W == 16 ? 0 : (k & 1);
      return vmul(vload_q4(b + 2 + part * 8, half != 0), d);
    }
  }
}

// Scores of CB cells against the G query rows: G*CB independent FMA chains (8 keeps both FMA ports busy).
template <int KT, int DK, int G, int CB>
static inline void Dots(const float (*q)[DK], const char* const* krow, const char* const* kpre, float (*s)[kTile], int t) {
  // the same head's K rows one tile ahead: from DRAM by the time this head comes round again
  for (int c = 0; c < CB; ++c)
    for (int b = 0; b < RowBytes<KT>(DK); b += 64) _mm_prefetch(kpre[t + c] + b, QWEN_ATTN_PREFETCH_HINT);
  vf a[CB][G];
  for (int c = 0; c < CB; ++c)
    for (int g = 0; g < G; ++g) a[c][g] = vzero();
  for (int j = 0; j < DK / W; ++j) {
    for (int c = 0; c < CB; ++c) {
      const vf kv = LoadRow<KT>(krow[t + c], j);
      for (int g = 0; g < G; ++g) a[c][g] = vfma(vload(q[g] + j * W), kv, a[c][g]);
    }
  }
  if constexpr (CB * G == 8) {
    alignas(32) float r[8];
    hsum8(&a[0][0], r);
    for (int c = 0; c < CB; ++c)
      for (int g = 0; g < G; ++g) s[g][t + c] = r[c * G + g];
  } else {
    for (int c = 0; c < CB; ++c)
      for (int g = 0; g < G; ++g) s[g][t + c] = hsum(a[c][g]);
  }
}

template <int KT, int DK, int G>
static void Attend(const UnitArgs& args, const Cells& cells, float* qbuf, float* acc, float* M, float* S) {
  constexpr int DV = DK;
  constexpr int CB = G >= 8 ? 1 : 8 / G;
  constexpr int VC = DV / W;  // vectors per V row
  constexpr int NCH = VC < (G >= 8 ? 1 : 8 / G) ? VC : (G >= 8 ? 1 : 8 / G);  // V vectors per pass: G*NCH chains
  static_assert(VC % NCH == 0, "V passes");
  static_assert(kTile % W == 0, "tile");

  const int H = args.heads;
  auto* q = (float(*)[DK])qbuf;  // [H*G][DK]
  for (int i = 0; i < H * G; ++i) std::memcpy(q[i], (const char*)args.q + i * args.nbq2, sizeof(float) * DK);
  alignas(64) float s[G][kTile];
  alignas(64) float mk[kTile];
#ifdef QWEN_ATTN_DEV  // the dev test poisons the scratch: a lane read before it is written shows up as NaN
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < kTile; ++j) s[g][j] = mk[j] = NAN;
#endif
  size_t off[2][2][kTile];  // [this tile, next tile][K, V] cell offsets
  const char* krow[kTile];
  const char* vrow[kTile];
  const char* kpre[kTile];
  const char* vpre[kTile];
  auto offsets = [&](int64_t t0, size_t (*o)[kTile]) {
    const int nt = (int)std::min<int64_t>(kTile, cells.n - t0);
    for (int t = 0; t < kTile; ++t) {
      // past the end: the last cell again (prefetching it is harmless)
      const int64_t i = t0 + std::min(t, nt - 1);
      const int64_t c = cells.idx ? cells.idx[i] : cells.begin + i;
      o[0][t] = c * args.nbk1;
      o[1][t] = c * args.nbv1;
    }
  };
  offsets(0, off[0]);
  const vf vscale = vset1(args.scale);
  const vf ninf = vset1(-INFINITY);

  for (int64_t t0 = 0; t0 < cells.n; t0 += kTile) {
    const int nt = (int)std::min<int64_t>(kTile, cells.n - t0);
    const int cur = (int)((t0 / kTile) & 1);
    offsets(std::min<int64_t>(t0 + kTile, cells.n - 1), off[cur ^ 1]);
    for (int t = 0; t < nt; ++t) mk[t] = cells.mask ? cells.mask[t0 + t] : 0.0f;
    for (int t = nt; t < kTile; ++t) mk[t] = -INFINITY;  // padding cells weigh 0

    // heads inside the tile loop: the tile's cells are read as one stretch of each K/V row
    for (int h = 0; h < H; ++h) {
      const char* kb = args.k + h * args.nbk2;
      const char* vb = args.v + h * args.nbv2;
      for (int t = 0; t < kTile; ++t) {
        krow[t] = kb + off[cur][0][t], vrow[t] = vb + off[cur][1][t];
        kpre[t] = kb + off[cur ^ 1][0][t], vpre[t] = vb + off[cur ^ 1][1][t];
      }
      const float(*qh)[DK] = q + h * G;
      float* ah = acc + (size_t)h * G * DV;
      float* Mh = M + h * G;
      float* Sh = S + h * G;

      int t = 0;
      for (; t + CB <= nt; t += CB) Dots<KT, DK, G, CB>(qh, krow, kpre, s, t);
      for (; t < nt; ++t) Dots<KT, DK, G, 1>(qh, krow, kpre, s, t);
      for (int g = 0; g < G; ++g)  // padding lanes: finite, so that + mask (-inf) gives -inf, never NaN
        for (int j = nt; j < kTile; ++j) s[g][j] = 0.0f;

      for (int g = 0; g < G; ++g) {
        vf mx = ninf;
        for (int j = 0; j < kTile; j += W) {
          // s = q.k * scale + mask, as ggml (padding lanes: mask -inf)
          const vf x = vfma(vload(s[g] + j), vscale, vload(mk + j));
          vstore(s[g] + j, x);
          mx = vmax(mx, x);
        }
        const float tmax = hmax(mx);
        if (!(tmax > -INFINITY)) {  // every score -inf (or NaN): nothing to add
          for (int j = 0; j < kTile; ++j) s[g][j] = 0.0f;
          continue;
        }
        if (tmax > Mh[g]) {
          const float ms = Mh[g] == -INFINITY ? 0.0f : std::exp(Mh[g] - tmax);
          const vf vms = vset1(ms);
          for (int d = 0; d < DV; d += W) vstore(ah + g * DV + d, vmul(vload(ah + g * DV + d), vms));
          Sh[g] *= ms;
          Mh[g] = tmax;
        }
        const vf vm = vset1(Mh[g]);
        vf sum = vzero();
        for (int j = 0; j < kTile; j += W) {
          const vf p = vexp(vsub(vload(s[g] + j), vm));
          vstore(s[g] + j, p);
          sum = vadd(sum, p);
        }
        Sh[g] += hsum(sum);
      }

      // acc[g] += sum_t p[g][t] * V[t], NCH vectors of V per pass so G*NCH accumulators stay in registers
      for (int c = 0; c < VC; c += NCH) {
        vf a[G][NCH];
        for (int g = 0; g < G; ++g)
          for (int cc = 0; cc < NCH; ++cc) a[g][cc] = vload(ah + g * DV + (c + cc) * W);
        for (int tt = 0; tt < nt; ++tt) {
          if (c == 0)
            for (int b = 0; b < RowBytes<KT>(DV); b += 64) _mm_prefetch(vpre[tt] + b, QWEN_ATTN_PREFETCH_HINT);
          for (int cc = 0; cc < NCH; ++cc) {
            const vf vv = LoadRow<KT>(vrow[tt], c + cc);
            for (int g = 0; g < G; ++g) a[g][cc] = vfma(vset1(s[g][tt]), vv, a[g][cc]);
          }
        }
        for (int g = 0; g < G; ++g)
          for (int cc = 0; cc < NCH; ++cc) vstore(ah + g * DV + (c + cc) * W, a[g][cc]);
      }
    }
  }
}

template <int KT>
static void RegisterType(KernelFn (*k)[4]) {
  k[0][0] = Attend<KT, 64, 1>;
  k[0][1] = Attend<KT, 64, 2>;
  k[0][2] = Attend<KT, 64, 4>;
  k[0][3] = Attend<KT, 64, 8>;
  k[1][0] = Attend<KT, 128, 1>;
  k[1][1] = Attend<KT, 128, 2>;
  k[1][2] = Attend<KT, 128, 4>;
  k[1][3] = Attend<KT, 128, 8>;
}

static void Register(KernelFn (*k)[2][4]) {
  RegisterType<kF16>(k[0]);
  RegisterType<kQ8>(k[1]);
  RegisterType<kQ4>(k[2]);
}

#endif  // QWEN_ATTN_PASS
