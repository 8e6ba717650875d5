#!/usr/bin/env node
// `npm run prebuild`: prebuilds/<platform>-<arch>/qwen_gguf-{avx2,avx512,cpu}.glibc.node with prebuildify
// (N-API, stripped), each built by CMakeLists.txt through scripts/prebuild-node-gyp.mjs.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const prebuildify = join(dirname(require.resolve("prebuildify/package.json")), "bin.js");
const args = process.argv.slice(2);
const onlyMissing = args.includes("--missing"); // build only the prebuilds that are not there yet (npm test uses this)
const requested = args.filter((a) => !a.startsWith("--"));
const dir = join(root, "prebuilds", `${process.platform}-${process.arch}`);
const present = existsSync(dir) ? readdirSync(dir) : [];
const targets = (requested.length ? requested : ["avx2", "avx512", "cpu"]).filter((t) => !onlyMissing || !present.some((f) => f.startsWith(`qwen_gguf-${t}.`)));
if (targets.length === 0) process.exit(0);
for (const target of targets) {
  execFileSync(process.execPath, [prebuildify, "--napi", "--strip", "--tag-libc", "--name", `qwen_gguf-${target}`,
    "--node-gyp", join(root, "scripts", "prebuild-node-gyp.mjs")], { stdio: "inherit", cwd: root, env: { ...process.env, QWEN_GGUF_PREBUILD: target } });
}
rmSync(join(root, "build", "Release"), { recursive: true, force: true }); // prebuildify's staging copy
console.log(`prebuilds for ${targets.join(", ")} are in prebuilds/${process.platform}-${process.arch}/`);
