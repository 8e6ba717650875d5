#!/usr/bin/env node
// `npm run prebuild`: prebuilds/<platform>-<arch>/qwen_gguf-<variant|cpu>.glibc.node with prebuildify (N-API, stripped),
// each built by CMakeLists.txt through scripts/prebuild-node-gyp.mjs.
// Usage: node scripts/prebuild.mjs [target…] [--arch <arch>|all] [--missing]
//   targets: CPU variants (x64: avx2 avx512; arm64: dotprod i8mm) and cpu (the probe); default: all of the arch's.
//   --arch: this machine's architecture, or arm64 from linux-x64 (cross-compiled: scripts/prebuild-targets.mjs).
//           Without --arch: this machine's, plus arm64 when the cross compiler is installed (.ci/run installs it),
//           so a fresh machine's `npm test` never needs the cross toolchain.
//   --missing: build only the prebuilds that are not there yet (npm test uses this).
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CROSS, crossTarget, hasCompiler, variantsOf } from "./prebuild-targets.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const prebuildify = join(dirname(require.resolve("prebuildify/package.json")), "bin.js");
const args = process.argv.slice(2);
const onlyMissing = args.includes("--missing");
const at = args.indexOf("--arch");
const archFlag = at >= 0 ? args[at + 1] : undefined;
const requested = args.filter((a, i) => !a.startsWith("--") && !(at >= 0 && i === at + 1));
const host = `${process.platform}-${process.arch}`;
const crossable = Object.keys(CROSS[host] ?? {});

let archs;
if (archFlag === undefined || archFlag === "all") {
  archs = [process.arch];
  for (const arch of crossable) {
    if (hasCompiler(crossTarget(arch).compiler)) archs.push(arch);
    else if (archFlag === "all") fail(`--arch all: the ${arch} prebuilds need ${crossTarget(arch).compiler} (${crossTarget(arch).install})`);
    else if (!onlyMissing) console.log(`prebuild: skipping ${process.platform}-${arch} (no ${crossTarget(arch).compiler}; ${crossTarget(arch).install})`);
  }
} else if (archFlag === process.arch) {
  archs = [archFlag];
} else if (crossable.includes(archFlag)) {
  if (!hasCompiler(crossTarget(archFlag).compiler)) fail(`the ${archFlag} prebuilds need ${crossTarget(archFlag).compiler}: ${crossTarget(archFlag).install}`);
  archs = [archFlag];
} else {
  fail(`cannot build ${process.platform}-${archFlag} prebuilds on ${host} (${[process.arch, ...crossable].join(", ")} or all)`);
}

const targetsOf = (arch) => [...variantsOf(arch), "cpu"];
const unknown = requested.filter((t) => !archs.some((a) => targetsOf(a).includes(t)));
if (unknown.length) fail(`unknown target ${unknown.join(", ")} (${archs.map((a) => `${a}: ${targetsOf(a).join(" ")}`).join("; ")})`);

const built = [];
for (const arch of archs) {
  const all = targetsOf(arch);
  const dir = join(root, "prebuilds", `${process.platform}-${arch}`);
  const present = existsSync(dir) ? readdirSync(dir) : [];
  const targets = (requested.length ? all.filter((t) => requested.includes(t)) : all)
    .filter((t) => !onlyMissing || !present.some((f) => f.startsWith(`qwen_gguf-${t}.`)));
  for (const target of targets) {
    const cross = arch === process.arch ? [] : ["--arch", arch, "--strip-bin", crossTarget(arch).strip];
    execFileSync(process.execPath, [prebuildify, "--napi", "--strip", "--tag-libc", "--name", `qwen_gguf-${target}`, ...cross,
      "--node-gyp", join(root, "scripts", "prebuild-node-gyp.mjs")], { stdio: "inherit", cwd: root, env: { ...process.env, QWEN_GGUF_PREBUILD: target } });
    built.push(`${process.platform}-${arch}/qwen_gguf-${target}`);
  }
}
rmSync(join(root, "build", "Release"), { recursive: true, force: true }); // prebuildify's staging copy
if (built.length) console.log(`prebuilt into prebuilds/: ${built.join(", ")}`);

function fail(message) {
  console.error(`prebuild: ${message}`);
  process.exit(1);
}
