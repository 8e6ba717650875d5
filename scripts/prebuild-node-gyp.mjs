#!/usr/bin/env node
// Stands in for node-gyp under prebuildify (`--node-gyp`): the one real build is CMakeLists.txt driven by cmake-js,
// so this ignores node-gyp's arguments, builds the variant named by QWEN_GGUF_PREBUILD (avx2, avx512, or cpu for
// the CPU probe) and leaves exactly that binary in build/Release, where prebuildify picks it up, strips and names it.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const target = process.env.QWEN_GGUF_PREBUILD;
if (!["avx2", "avx512", "cpu"].includes(target)) {
  console.error("prebuild-node-gyp: set QWEN_GGUF_PREBUILD to avx2, avx512 or cpu");
  process.exit(1);
}
const variant = target === "cpu" ? "avx2" : target;
execFileSync(process.execPath, [join(root, "scripts", "build-native.mjs"), "--variant", variant], { stdio: "inherit", cwd: root });
const release = join(root, "build", "Release");
rmSync(release, { recursive: true, force: true });
mkdirSync(release, { recursive: true });
copyFileSync(join(root, "build", variant, "Release", `qwen_gguf-${target}.node`), join(release, `qwen_gguf-${target}.node`));
