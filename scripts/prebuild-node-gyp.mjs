#!/usr/bin/env node
// Stands in for node-gyp under prebuildify (`--node-gyp`): the one real build is CMakeLists.txt driven by cmake-js,
// so this ignores node-gyp's arguments, builds the target named by QWEN_GGUF_PREBUILD (a CPU variant, or cpu for the
// CPU probe) for prebuildify's PREBUILD_ARCH (cross-compiled when it is not this machine's) and leaves exactly that
// binary in build/Release, where prebuildify picks it up, strips and names it.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildDir, variantsOf } from "./prebuild-targets.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const target = process.env.QWEN_GGUF_PREBUILD;
const arch = process.env.PREBUILD_ARCH || process.arch;
const variants = variantsOf(arch);
if (!target || ![...variants, "cpu"].includes(target)) {
  console.error(`prebuild-node-gyp: set QWEN_GGUF_PREBUILD to ${[...variants, "cpu"].join(", ")} (for ${arch})`);
  process.exit(1);
}
const variant = target === "cpu" ? variants[0] : target; // the probe comes out of every build; take the baseline's
execFileSync(process.execPath, [join(root, "scripts", "build-native.mjs"), "--arch", arch, "--variant", variant], { stdio: "inherit", cwd: root });
const release = join(root, "build", "Release");
rmSync(release, { recursive: true, force: true });
mkdirSync(release, { recursive: true });
copyFileSync(join(root, buildDir(arch, variant), "Release", `qwen_gguf-${target}.node`), join(release, `qwen_gguf-${target}.node`));
