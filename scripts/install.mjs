#!/usr/bin/env node
// npm "install" hook. npm 11 runs it only where the user allowed our install script, so it is a fallback:
// when a binary already loads (prebuilt, or built before) nothing happens; otherwise the vendored tree is built.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dirs = [join(root, "prebuilds", `${process.platform}-${process.arch}`), join(root, "build", "avx2", "Release")];
const have = dirs.some((d) => existsSync(d) && readdirSync(d).some((f) => f.endsWith(".node")));
if (have && !process.argv.includes("--force")) process.exit(0);
execFileSync(process.execPath, [join(root, "scripts", "build-native.mjs")], { stdio: "inherit", cwd: root });
