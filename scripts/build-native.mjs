#!/usr/bin/env node
// Builds the addon from the vendored llama.cpp with cmake-js (the one real build, CMakeLists.txt).
// Usage: node scripts/build-native.mjs [--variant avx2|avx512]
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const at = process.argv.indexOf("--variant");
const variant = at > 0 ? process.argv[at + 1] : "avx2";
if (!["avx2", "avx512"].includes(variant)) {
  console.error(`qwen-gguf: unknown CPU variant ${variant} (avx2 or avx512)`);
  process.exit(1);
}
if (!existsSync(join(root, "vendor", "llama.cpp", "CMakeLists.txt"))) {
  execFileSync(process.execPath, [join(root, "scripts", "fetch-llama.mjs")], { stdio: "inherit", cwd: root });
}
const require = createRequire(import.meta.url);
const cmakeJs = join(dirname(require.resolve("cmake-js/package.json")), "bin", "cmake-js");
const jobs = String(Math.max(1, Number(process.env.QWEN_GGUF_JOBS) || (await import("node:os")).availableParallelism()));
console.log(`qwen-gguf: building the ${variant} addon from vendor/llama.cpp (a few minutes)…`);
execFileSync(process.execPath, [cmakeJs, "compile", "--out", join("build", variant), "--parallel", jobs, `--CDQWEN_GGUF_CPU_VARIANT=${variant}`], { stdio: "inherit", cwd: root });
