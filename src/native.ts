/**
 * The whole native surface in one place: the addon's types and the loader that finds a binary that fits.
 */
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { QwenError } from "./errors.js";

export interface NativeModelInfo {
  description: string;
  parameters: number;
  sizeBytes: number;
  vocabSize: number;
  contextLengthTrained: number;
  embeddingLength: number;
  layers: number;
  heads: number;
  bos: number;
  eos: number;
  eot: number;
  /** Bytes of the longest token's text. */
  maxTokenBytes: number;
  /** Texts of the control tokens (what special parsing turns into them). */
  controlTexts: string[];
  chatTemplate?: string;
}

export interface NativeModel {
  load(path: string, options: { mmap?: boolean; vocabOnly?: boolean }, onProgress?: (p: number) => void): Promise<void>;
  abortLoad(): void;
  dispose(): void;
  /** `viaLlama` (test-only): llama_tokenize itself instead of native/tokenizer.cc, for comparison. */
  tokenize(text: string, special: boolean, viaLlama?: boolean): Int32Array;
  detokenize(tokens: Int32Array, special: boolean): Buffer;
  tokenPiece(token: number, special: boolean): Buffer;
  metadata(): Record<string, string>;
  info(): NativeModelInfo;
  isEog(token: number): boolean;
}

export interface NativeSamplingOptions {
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repeatPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  penaltyLastN: number;
  seed: number;
  ignoreEos: boolean;
  stop: string[];
  /** [token id, bias] pairs added to the logits before sampling. */
  logitBias?: [number, number][];
  /** GBNF grammar (root rule `root`) applied with llama.cpp's grammar sampler. */
  grammar?: string;
  /** Alternatives per token to report with log-probabilities; -1: no log-probabilities. */
  logprobs?: number;
  /** Token id of `</think>`: the grammar waits for it (grammarAfterThink) and the reasoning budget forces it. */
  thinkEnd?: number;
  grammarAfterThink?: boolean;
  /** Tokens the model may generate before `</think>` is forced; -1: unlimited. */
  reasoningBudget?: number;
}

export interface NativeTokenLogprob { id: number; logprob: number; top: { id: number; logprob: number }[] }

/** One event of the engine, delivered with all other events of the same decode step. */
export type NativeEngineEvent =
  | { id: number; kind: "start" }
  | { id: number; kind: "piece"; text: string; logprobs?: NativeTokenLogprob[] }
  | { id: number; kind: "done"; finishReason: "stop" | "length" | "abort"; tokens: Int32Array; promptTokens: number; cachedTokens: number; promptMs: number; genMs: number; floats?: Float32Array }
  | { id: number; kind: "error"; error: Error & { code?: string } };

export interface NativeRequest {
  id: number;
  kind: "generate" | "logits" | "score";
  prompt: Int32Array;
  sampling?: NativeSamplingOptions;
  /** score: token sequences whose log-probabilities after the prompt are returned, one float per token. */
  labels?: Int32Array[];
  cachePrompt?: boolean;
}

export interface NativeContextOptions {
  parallel: number;
  contextSize: number;
  cacheSize: number;
  batchSize: number;
  threads: number;
  threadsBatch: number;
  poll?: number;
  kvType: number;
  flashAttention?: number;
  promptCacheBytes?: number;
  promptCacheDir?: string;
  modelIdentity?: string;
}

export interface NativeContextStats {
  active: number;
  queued: number;
  idleSequences: number;
  cachedTokens: number;
  kvCellsUsed: number;
  kvCells: number;
  decodes: number;
  promptCacheHits: number;
  promptCacheStored: number;
  promptCacheBytes: number;
  parallel: number;
  sequences: number;
  contextSize: number;
  batchSize: number;
  threads: number;
  threadsBatch: number;
  stateBytes: number;
}

/** One llama_context and the engine thread that runs every request on it. */
export interface NativeContext {
  init(options: NativeContextOptions, onEvents: (events: NativeEngineEvent[]) => void): Promise<void>;
  submit(request: NativeRequest): void;
  cancel(id: number): void;
  dispose(): void;
  stats(): NativeContextStats;
  /** Keep the event loop alive while requests are in flight; let it go when none are. */
  ref(): void;
  unref(): void;
}

export interface NativeAddon {
  AddonModel: new () => NativeModel;
  AddonContext: new (model: NativeModel) => NativeContext;
  /** Quantizes `rows` rows of F32/F16/BF16 values (`data`'s bytes, `sourceType` a ggml type) into `out`; resolves with the bytes written. */
  quantize(type: number, data: Uint8Array, sourceType: number, rows: number, rowLength: number, threads: number, out: Uint8Array): Promise<number>;
  typeInfo(type: number): { name: string; blockSize: number; typeSize: number };
  versions(): { llamaCppCommit: string; cpuVariant: string; systemInfo: string };
  /** Test-only: bytes malloc has handed out and not had back (glibc), -1 where unknown. */
  heapInUse(): number;
}

export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

export interface LoadedBinary { path: string; variant: string }

export type X64Feature = "sse4_2" | "avx" | "avx2" | "fma" | "f16c" | "bmi2" | "avx512f" | "avx512bw" | "avx512dq" | "avx512vl" | "avx512vbmi" | "avx512_vnni" | "avx512_bf16";
/** Linux's HWCAP names (as in /proc/cpuinfo). */
export type Arm64Feature = "asimd" | "atomics" | "fphp" | "asimdhp" | "asimddp" | "i8mm" | "bf16" | "sve" | "sve2";
/** What the probe reports: x86-64 features on x86-64, arm64 features on arm64 Linux, nothing elsewhere. */
export type CpuFeatures = Partial<Record<X64Feature | Arm64Feature, boolean>>;

export interface CpuVariant { variant: string; needs: (X64Feature | Arm64Feature)[] }

/** x86-64 variants, fastest first, with the CPU features each needs (see CMakeLists.txt). */
export const X64_VARIANTS: CpuVariant[] = [
  { variant: "avx512", needs: ["avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16"] },
  { variant: "avx2", needs: ["avx2", "fma", "f16c", "bmi2"] },
];

/**
 * arm64 variants, fastest first. ggml-cpu is compiled with -march=armv8.2-a+dotprod+fp16 (and +i8mm): Armv8.2-A
 * brings LSE atomics, which GCC then emits inline; fp16 is FP16 scalar and vector arithmetic.
 */
export const ARM64_VARIANTS: CpuVariant[] = [
  { variant: "i8mm", needs: ["asimd", "atomics", "fphp", "asimdhp", "asimddp", "i8mm"] },
  { variant: "dotprod", needs: ["asimd", "atomics", "fphp", "asimdhp", "asimddp"] },
];

/** Variants of the addon for this machine's architecture, fastest first; other architectures build "native" from source. */
export const CPU_VARIANTS: CpuVariant[] =
  process.arch === "x64" ? X64_VARIANTS : process.arch === "arm64" ? ARM64_VARIANTS : [{ variant: "native", needs: [] }];

/** Platforms with prebuilt binaries in the package (glibc Linux only), and the glibc they were linked against. */
export const PREBUILT_PLATFORMS = ["linux-x64", "linux-arm64"];
export const PREBUILT_MIN_GLIBC = "2.36";

const require = createRequire(import.meta.url);
const nodeGypBuild = require("node-gyp-build") as {
  parseTags(file: string): { file: string } | undefined;
  matchTags(runtime: string, abi: string): (tags: unknown) => boolean;
  compareTags(runtime: string): (a: unknown, b: unknown) => number;
};

/**
 * Where a binary named `name` may be, in node-gyp-build's order: a local build first, then the prebuild for this
 * platform whose tags (napi, libc, …) node-gyp-build's own matcher accepts.
 */
function locate(name: string, variant: string): string[] {
  const override = process.env.QWEN_GGUF_BINARY_DIR;
  const found: string[] = [];
  const local = join(override ?? packageRoot, "build", variant, "Release", `${name}.node`);
  if (!process.env.PREBUILDS_ONLY) found.push(local);
  const dir = join(override ?? packageRoot, "prebuilds", `${process.platform}-${process.arch}`);
  let files: string[] = [];
  try {
    files = readdirSync(dir);
  } catch {
    // no prebuilds for this platform
  }
  const tags = files.filter((f) => f.startsWith(`${name}.`)).map((f) => nodeGypBuild.parseTags(f)).filter(nodeGypBuild.matchTags("node", process.versions.modules));
  tags.sort(nodeGypBuild.compareTags("node"));
  for (const t of tags) found.push(join(dir, (t as { file: string }).file));
  return found.length ? found : [join(dir, `${name}.napi.node`)];
}

function requireFirst<T>(paths: string[], attempts: string[]): { module: T; path: string } | undefined {
  for (const path of paths) {
    if (!existsSync(path)) {
      attempts.push(`${path}: not present`);
      continue;
    }
    try {
      return { module: require(path) as T, path };
    } catch (err) {
      attempts.push(`${path}: ${(err as Error).message}`);
    }
  }
  return undefined;
}

let cached: { addon: NativeAddon; binary: LoadedBinary; cpu: CpuFeatures } | undefined;

const HOW_TO_FIX =
  "To get a binary: allow this package's install script (npm 11: `npm install-scripts approve qwen-gguf`, then reinstall), " +
  "or compile the vendored llama.cpp that the package ships (needs cmake and a C++17 compiler): `npx qwen-gguf build-native`.";

/** Names of the features a CPU has. */
export function featureNames(cpu: CpuFeatures): string[] {
  return Object.entries(cpu).filter(([, on]) => on).map(([name]) => name);
}

/** The glibc version of a Linux process; none on musl (its report has no glibc version). */
function linuxLibc(): { glibc?: string } {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return { glibc: header?.glibcVersionRuntime };
}

/**
 * Why this platform has no prebuilt binary, or "" when it has one: names the platform, what is prebuilt and how to
 * build from source. Only asked on the error path.
 */
export function platformNote(): string {
  const platform = `${process.platform}-${process.arch}`;
  const prebuilt = `prebuilt binaries exist for ${PREBUILT_PLATFORMS.join(" and ")} with glibc ≥ ${PREBUILT_MIN_GLIBC}`;
  const fromSource = "build from source with `npx qwen-gguf build-native` (cmake ≥ 3.18 and a C++17 compiler; the package " +
    "ships llama.cpp's source; not tested on this platform)";
  if (!PREBUILT_PLATFORMS.includes(platform)) return `qwen-gguf has no prebuilt binary for ${platform}: ${prebuilt}. On ${platform}, ${fromSource}.\n`;
  const { glibc } = linuxLibc();
  if (!glibc) return `qwen-gguf has no prebuilt binary for ${platform} with musl libc (Alpine): ${prebuilt}. Here, ${fromSource}.\n`;
  const older = (a: string, b: string) => { const [x, y] = [a, b].map((v) => v.split(".").map(Number)); return x[0] < y[0] || (x[0] === y[0] && x[1] < y[1]); };
  if (older(glibc, PREBUILT_MIN_GLIBC)) return `qwen-gguf's prebuilt ${platform} binaries need glibc ≥ ${PREBUILT_MIN_GLIBC}, this system has ${glibc}: ${fromSource}.\n`;
  return "";
}

interface Probe { features(): CpuFeatures; method?: "cpuid" | "hwcap" | "none" }

function loadProbe(attempts: string[]): Probe {
  for (const variant of CPU_VARIANTS.map((v) => v.variant)) {
    const probe = requireFirst<Probe>(locate("qwen_gguf-cpu", variant), attempts);
    if (probe) return probe.module;
  }
  throw new QwenError("ERR_NATIVE_LOAD", `${platformNote()}qwen-gguf found no CPU probe binary.\nTried:\n  ${attempts.join("\n  ")}\n${HOW_TO_FIX}`);
}

/** The CPU's features, from the probe (a baseline binary that loads on any CPU of its architecture). */
export function cpuFeatures(attempts: string[] = []): CpuFeatures {
  return loadProbe(attempts).features();
}

/**
 * Loads the fastest addon variant this CPU runs: features come from CPUID (x86-64) or the kernel's HWCAP (arm64 Linux),
 * never from trying a binary (an AVX-512 or i8mm binary on a CPU without it dies of SIGILL, which no catch can stop).
 * Where the probe cannot ask (method "none": other OSes on arm64, other architectures) the baseline build is taken,
 * the one a source build makes, unless QWEN_GGUF_CPU_VARIANT names another. One error lists every attempt.
 */
export function loadNative(): { addon: NativeAddon; binary: LoadedBinary; cpu: CpuFeatures } {
  if (cached) return cached;
  const attempts: string[] = [];
  const probe = loadProbe(attempts);
  const cpu = probe.features();
  const forced = process.env.QWEN_GGUF_CPU_VARIANT;
  const baseline = CPU_VARIANTS[CPU_VARIANTS.length - 1];
  const usable = probe.method === "none"
    ? CPU_VARIANTS.filter((v) => (forced ? v.variant === forced : v === baseline))
    : CPU_VARIANTS.filter((v) => v.needs.every((f) => cpu[f]) && (!forced || v.variant === forced));
  if (usable.length === 0) {
    const missing = baseline.needs.filter((f) => !cpu[f]);
    throw new QwenError("ERR_CPU_UNSUPPORTED", forced
      ? `QWEN_GGUF_CPU_VARIANT=${forced} is not a variant this CPU can run (known: ${CPU_VARIANTS.map((v) => v.variant).join(", ")})`
      : process.arch === "arm64"
        ? `this CPU lacks ${missing.join(", ")} (Linux HWCAP names), which qwen-gguf's slowest arm64 build (${baseline.variant}: Armv8.2-A with dot product and FP16 arithmetic, e.g. Cortex-A76/Raspberry Pi 5, Neoverse N1/Graviton2) needs`
        : `this CPU lacks ${missing.map((f) => f.toUpperCase()).join(", ")}, which qwen-gguf's slowest build (${baseline.variant}: ${baseline.needs.map((f) => f.toUpperCase()).join(", ")}) needs`);
  }
  for (const { variant } of usable) {
    const found = requireFirst<NativeAddon>(locate(`qwen_gguf-${variant}`, variant), attempts);
    if (found) {
      cached = { addon: found.module, binary: { path: found.path, variant }, cpu };
      return cached;
    }
  }
  throw new QwenError("ERR_NATIVE_LOAD", `${platformNote()}qwen-gguf found no native binary that loads on ${process.platform}-${process.arch} (CPU variants: ${usable.map((v) => v.variant).join(", ")}).\nTried:\n  ${attempts.join("\n  ")}\n${HOW_TO_FIX}`);
}

export function native(): NativeAddon {
  return loadNative().addon;
}
