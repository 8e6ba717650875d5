/**
 * The whole native surface in one place: the addon's types and the loader that finds a binary that fits.
 */
import { existsSync, readFileSync } from "node:fs";
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
  init(options: { contextSize: number; batchSize: number; ubatchSize: number; threads: number; threadsBatch: number; kvType: number; flashAttention?: number }): Promise<void>;
  generate(prompt: Int32Array, options: NativeSamplingOptions, onEvent: (kind: string, payload: unknown) => void): void;
  logits(tokens: Int32Array): Promise<Float32Array>;
  abort(): void;
  dispose(): void;
  stats(): { cachedTokens: number; contextSize: number; batchSize: number; threads: number; threadsBatch: number; stateBytes: number; busy: boolean };
}

export interface NativeAddon {
  AddonModel: new () => NativeModel;
  AddonSession: new (model: NativeModel) => NativeSession;
  quantize(type: number, data: Float32Array, rows: number, rowLength: number, threads: number): Promise<Buffer>;
  typeInfo(type: number): { name: string; blockSize: number; typeSize: number };
  versions(): { llamaCppCommit: string; cpuVariant: string; systemInfo: string };
}

export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

export interface LoadedBinary { path: string; variant: string }

// Interim CPU check from /proc/cpuinfo; a CPUID probe (see the packaging issue) is the reliable replacement.
function cpuHasAvx512(): boolean {
  try {
    const flags = new Set((readFileSync("/proc/cpuinfo", "utf8").match(/^flags\s*:(.*)$/m)?.[1] ?? "").trim().split(/\s+/));
    return ["avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vbmi", "avx512_vnni", "avx512_bf16"].every((f) => flags.has(f));
  } catch {
    return false;
  }
}

let cached: { addon: NativeAddon; binary: LoadedBinary } | undefined;

/** Candidate binaries, best first: prebuilt for this platform, then a local build. */
function candidates(): LoadedBinary[] {
  const variants = cpuHasAvx512() ? ["avx512", "avx2"] : ["avx2"];
  const out: LoadedBinary[] = [];
  const override = process.env.QWEN_GGUF_BINARY;
  if (override) return [{ path: override, variant: "override" }];
  const prebuilds = join(packageRoot, "prebuilds", `${process.platform}-${process.arch}`);
  for (const variant of variants) {
    out.push({ path: join(prebuilds, `qwen_gguf-${variant}.node`), variant });
    out.push({ path: join(packageRoot, "build", variant, "Release", `qwen_gguf-${variant}.node`), variant });
  }
  return out;
}

/** Loads the addon once; the error lists every attempt and how to get a binary. */
export function loadNative(): { addon: NativeAddon; binary: LoadedBinary } {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const attempts: string[] = [];
  for (const candidate of candidates()) {
    if (!existsSync(candidate.path)) {
      attempts.push(`${candidate.path}: not present`);
      continue;
    }
    try {
      const addon = require(candidate.path) as NativeAddon;
      cached = { addon, binary: candidate };
      return cached;
    } catch (err) {
      attempts.push(`${candidate.path}: ${(err as Error).message}`);
    }
  }
  throw new QwenError(
    "ERR_NATIVE_LOAD",
    `qwen-gguf found no native binary that loads on ${process.platform}-${process.arch}.\nTried:\n  ${attempts.join("\n  ")}\n` +
      "Build one from the vendored llama.cpp (needs cmake and a C++ compiler): `npx qwen-gguf build-native`, " +
      "or from a clone of the repository: `npm run build:native`.",
  );
}

export function native(): NativeAddon {
  return loadNative().addon;
}
