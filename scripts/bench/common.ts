/** Shared benchmark plumbing: cached full-size models, the llama.cpp anchors built from the vendored tree, stats. */
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { convert, type OutputType } from "../../src/index.js";
import { packageRoot } from "../../src/native.js";
import { makeCheckpoint, QWEN1_5_0_5B, QWEN3_0_6B, QWEN3_4B, type CheckpointShape } from "../fixtures/checkpoint.js";

export const cacheDir = join(packageRoot, ".cache", "bench");
export const SHAPES: Record<string, CheckpointShape> = { "qwen3-0.6b": QWEN3_0_6B, "qwen3-4b": QWEN3_4B, "qwen1.5-0.5b": QWEN1_5_0_5B };

/** A random-weight BF16 checkpoint of a full-size shape, generated once and cached. */
export async function benchCheckpoint(shapeName: string): Promise<string> {
  const shape = SHAPES[shapeName];
  if (!shape) throw new Error(`unknown shape ${shapeName}; known: ${Object.keys(SHAPES).join(", ")}`);
  const dir = join(cacheDir, `${shapeName}-bf16`);
  if (!existsSync(join(dir, "config.json"))) {
    await mkdir(cacheDir, { recursive: true });
    console.error(`generating the random-weight ${shapeName} checkpoint (BF16) in ${dir}…`);
    await makeCheckpoint(dir, shape, { dtype: "BF16", seed: 42, shards: shapeName === "qwen3-4b" ? 2 : 1 });
  }
  return dir;
}

/** The checkpoint converted by our converter to `type`, cached. */
export async function benchModel(shapeName: string, type: OutputType): Promise<string> {
  const out = join(cacheDir, `${shapeName}-${type}.gguf`);
  if (!existsSync(out)) {
    const dir = await benchCheckpoint(shapeName);
    console.error(`converting ${shapeName} to ${type}…`);
    await convert(dir, { out, type });
  }
  return out;
}

/** CMake flags of a CPU variant: the same as CMakeLists.txt gives the addon ("native": GGML_NATIVE=ON, llama.cpp's default). */
export function variantFlags(variant: string): string[] {
  if (variant === "native") return ["-DGGML_NATIVE=ON"];
  const avx512 = variant === "avx512" ? "ON" : "OFF";
  return [
    "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
    `-DGGML_AVX512=${avx512}`, `-DGGML_AVX512_VBMI=${avx512}`, `-DGGML_AVX512_VNNI=${avx512}`, `-DGGML_AVX512_BF16=${avx512}`,
  ];
}

/** Builds (once, cached) a llama.cpp tool from the vendored tree with the addon's CPU flags; returns its path. */
export function llamaTool(tool: "llama-bench" | "llama-quantize" | "llama-perplexity" | "llama-batched-bench", variant: string): string {
  const dir = join(packageRoot, ".cache", `llama-tools-${variant}`);
  const bin = join(dir, "bin", tool);
  if (existsSync(bin)) return bin;
  console.error(`building ${tool} (${variant}) from vendor/llama.cpp, once…`);
  execFileSync("cmake", ["-S", join(packageRoot, "vendor", "llama.cpp"), "-B", dir, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", ...variantFlags(variant)], { stdio: "inherit" });
  execFileSync("cmake", ["--build", dir, "--target", tool, "-j", String(availableParallelism())], { stdio: "inherit" });
  return bin;
}

/** Runs a command (in `env`, default this process's), returning its stdout, stderr and exit code. */
export function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env });
    let stdout = "", stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("close", (code) => resolve({ stdout, stderr, code: code ?? -1 }));
  });
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function spread(xs: number[]): string {
  return `${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)}`;
}

/** Minimal flag parser: --key value and --flag. */
export function parseFlags(argv: string[]): { flags: Record<string, string>; positionals: string[] } {
  const flags: Record<string, string> = {};
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith("--")) flags[a.slice(2)] = "true";
      else flags[a.slice(2)] = argv[++i];
    } else positionals.push(a);
  }
  return { flags, positionals };
}
