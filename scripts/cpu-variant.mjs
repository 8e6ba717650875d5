#!/usr/bin/env node
// Prints the CPU variant the loader would choose on this machine (avx512 or avx2), for binding.gyp: node-gyp then
// builds exactly the binary that src/native.ts picks up. The features come from the CPUID probe that the package
// ships (prebuilds/) or that an earlier build left (build/<variant>/Release); without any probe, the portable
// baseline avx2. QWEN_GGUF_CPU_VARIANT overrides.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
// the baseline: x64's portable avx2, elsewhere the first variant the build script knows for this architecture
let variant = process.env.QWEN_GGUF_CPU_VARIANT || "avx2";
if (!process.env.QWEN_GGUF_CPU_VARIANT && process.arch !== "x64") {
  try {
    const { variantsOf } = await import(pathToFileURL(join(root, "scripts", "prebuild-targets.mjs")).href);
    variant = variantsOf(process.arch)[0];
  } catch {
    variant = "native";
  }
}
if (!process.env.QWEN_GGUF_CPU_VARIANT && existsSync(join(root, "dist", "native.js"))) {
  try {
    const { cpuFeatures, CPU_VARIANTS } = await import(pathToFileURL(join(root, "dist", "native.js")).href);
    const cpu = cpuFeatures();
    variant = CPU_VARIANTS.find((v) => v.needs.every((f) => cpu[f]))?.variant ?? variant;
  } catch {
    // no probe loads: the baseline
  }
}
process.stdout.write(variant);
