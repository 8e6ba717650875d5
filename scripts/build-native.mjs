#!/usr/bin/env node
// Builds the addon from the vendored llama.cpp with cmake-js (the one real build, CMakeLists.txt).
// Usage: node scripts/build-native.mjs [--variant V] [--arch arm64]
//   --variant: x64: avx2 (default) | avx512; arm64: dotprod (default) | i8mm; other architectures: native
//   --arch: cross-compile for another architecture (linux-x64 → arm64 with Debian's cross toolchain), into
//           build/<platform>-<arch>/<variant> so the host's own build/<variant> stays untouched.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildDir, crossTarget, hasCompiler, variantsOf } from "./prebuild-targets.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const flag = (name) => {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : undefined;
};
const arch = flag("--arch") ?? process.arch;
const variants = variantsOf(arch);
const variant = flag("--variant") ?? variants[0];
if (!variants.includes(variant)) {
  console.error(`qwen-gguf: unknown CPU variant ${variant} for ${arch} (${variants.join(" or ")})`);
  process.exit(1);
}
const cmakeArgs = [`--CDQWEN_GGUF_CPU_VARIANT=${variant}`];
if (arch !== process.arch) {
  const cross = crossTarget(arch);
  if (!cross) {
    console.error(`qwen-gguf: cannot cross-compile for ${arch} on ${process.platform}-${process.arch} (supported: linux-x64 → arm64)`);
    process.exit(1);
  }
  if (!hasCompiler(cross.compiler)) {
    console.error(`qwen-gguf: cross-compiling for ${arch} needs ${cross.compiler}: ${cross.install}`);
    process.exit(1);
  }
  if (!existsSync(join(root, cross.toolchain))) {
    console.error(`qwen-gguf: ${cross.toolchain} is missing (cross builds are made from a clone of the repository, not the npm package)`);
    process.exit(1);
  }
  cmakeArgs.push(`--CDCMAKE_TOOLCHAIN_FILE=${join(root, cross.toolchain)}`);
}
if (!existsSync(join(root, "vendor", "llama.cpp", "CMakeLists.txt"))) {
  execFileSync(process.execPath, [join(root, "scripts", "fetch-llama.mjs")], { stdio: "inherit", cwd: root });
}
const require = createRequire(import.meta.url);
const cmakeJs = join(dirname(require.resolve("cmake-js/package.json")), "bin", "cmake-js");
const jobs = String(Math.max(1, Number(process.env.QWEN_GGUF_JOBS) || (await import("node:os")).availableParallelism()));
const out = buildDir(arch, variant);
console.log(`qwen-gguf: building the ${arch === process.arch ? "" : `${process.platform}-${arch} `}${variant} addon from vendor/llama.cpp into ${out} (a few minutes)…`);
execFileSync(process.execPath, [cmakeJs, "compile", "--out", out, "--parallel", jobs, ...cmakeArgs], { stdio: "inherit", cwd: root });
