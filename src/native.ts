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
  chatTemplate?: string;
}

export interface NativeModel {
  load(path: string, options: { mmap?: boolean; vocabOnly?: boolean }, onProgress?: (p: number) => void): Promise<void>;
  abortLoad(): void;
  dispose(): void;
  tokenize(text: string, special: boolean): Int32Array;
  detokenize(tokens: Int32Array, special: boolean): Buffer;
  tokenPiece(token: number, special: boolean): Buffer;
  metadata(): Record<string, string>;
  info(): NativeModelInfo;
  isEog(token: number): boolean;
}

export interface NativeGenerationResult {
  finishReason: "stop" | "length" | "abort";
  tokens: Int32Array;
  promptTokens: number;
  cachedTokens: number;
  promptMs: number;
  genMs: number;
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
  cachePrompt: boolean;
  stop: string[];
}

export type NativeGenerationEvent =
  | ((kind: "piece", text: string) => void)
  | ((kind: "done", result: NativeGenerationResult) => void)
  | ((kind: "error", error: Error) => void);

export interface NativeSession {
  init(options: { contextSize: number; batchSize: number; ubatchSize: number; threads: number; threadsBatch: number; poll?: number; kvType: number; flashAttention?: number }): Promise<void>;
  generate(prompt: Int32Array, options: NativeSamplingOptions, onEvent: (kind: string, payload: unknown) => void): void;
  logits(tokens: Int32Array): Promise<Float32Array>;
  abort(): void;
  dispose(): void;
  stats(): { cachedTokens: number; contextSize: number; batchSize: number; threads: number; threadsBatch: number; stateBytes: number; busy: boolean };
}

export interface NativeAddon {
  AddonModel: new () => NativeModel;
  AddonSession: new (model: NativeModel) => NativeSession;
  /** Quantizes `rows` rows of F32/F16/BF16 values (`data`'s bytes, `sourceType` a ggml type) into `out`; resolves with the bytes written. */
  quantize(type: number, data: Uint8Array, sourceType: number, rows: number, rowLength: number, threads: number, out: Uint8Array): Promise<number>;
  typeInfo(type: number): { name: string; blockSize: number; typeSize: number };
  versions(): { llamaCppCommit: string; cpuVariant: string; systemInfo: string };
}

export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

export interface LoadedBinary { path: string; variant: string }

export type CpuFeatures = Record<"sse4_2" | "avx" | "avx2" | "fma" | "f16c" | "bmi2" | "avx512f" | "avx512bw" | "avx512dq" | "avx512vl" | "avx512vbmi" | "avx512_vnni" | "avx512_bf16", boolean>;

/** CPU variants of the addon, fastest first, with the CPU features each needs (see CMakeLists.txt). */
export const CPU_VARIANTS: { variant: string; needs: (keyof CpuFeatures)[] }[] = [
  { variant: "avx512", needs: ["avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16"] },
  { variant: "avx2", needs: ["avx2", "fma", "f16c", "bmi2"] },
];

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

/** The CPU's features, from the CPUID probe (a baseline x86-64 binary that loads anywhere). */
export function cpuFeatures(attempts: string[] = []): CpuFeatures {
  for (const variant of CPU_VARIANTS.map((v) => v.variant)) {
    const probe = requireFirst<{ features(): CpuFeatures }>(locate("qwen_gguf-cpu", variant), attempts);
    if (probe) return probe.module.features();
  }
  throw new QwenError("ERR_NATIVE_LOAD", `qwen-gguf found no CPU probe binary.\nTried:\n  ${attempts.join("\n  ")}\n${HOW_TO_FIX}`);
}

/**
 * Loads the fastest addon variant this CPU runs: features come from CPUID, never from trying a binary (an
 * AVX-512 binary on a CPU without it dies of SIGILL, which no catch can stop). One error lists every attempt.
 */
export function loadNative(): { addon: NativeAddon; binary: LoadedBinary; cpu: CpuFeatures } {
  if (cached) return cached;
  const attempts: string[] = [];
  const cpu = cpuFeatures(attempts);
  const forced = process.env.QWEN_GGUF_CPU_VARIANT;
  const usable = CPU_VARIANTS.filter((v) => v.needs.every((f) => cpu[f]) && (!forced || v.variant === forced));
  if (usable.length === 0) {
    const baseline = CPU_VARIANTS[CPU_VARIANTS.length - 1];
    const missing = baseline.needs.filter((f) => !cpu[f]);
    throw new QwenError("ERR_CPU_UNSUPPORTED", forced
      ? `QWEN_GGUF_CPU_VARIANT=${forced} is not a variant this CPU can run (known: ${CPU_VARIANTS.map((v) => v.variant).join(", ")})`
      : `this CPU lacks ${missing.map((f) => f.toUpperCase()).join(", ")}, which qwen-gguf's slowest build (${baseline.variant}: ${baseline.needs.map((f) => f.toUpperCase()).join(", ")}) needs`);
  }
  for (const { variant } of usable) {
    const found = requireFirst<NativeAddon>(locate(`qwen_gguf-${variant}`, variant), attempts);
    if (found) {
      cached = { addon: found.module, binary: { path: found.path, variant }, cpu };
      return cached;
    }
  }
  throw new QwenError("ERR_NATIVE_LOAD", `qwen-gguf found no native binary that loads on ${process.platform}-${process.arch} (CPU variants: ${usable.map((v) => v.variant).join(", ")}).\nTried:\n  ${attempts.join("\n  ")}\n${HOW_TO_FIX}`);
}

export function native(): NativeAddon {
  return loadNative().addon;
}
