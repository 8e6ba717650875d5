#!/usr/bin/env node
// Fills vendor/llama.cpp from the npm registry: node-llama-cpp's tarball carries the upstream tree as a git bundle.
// Idempotent: a stamp file records the commit that was checked out; nothing is fetched when it matches the pin.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pin = JSON.parse(readFileSync(join(root, "vendor", "llama.cpp.json"), "utf8"));
const target = join(root, "vendor", "llama.cpp");
const stamp = join(target, ".qwen-gguf-commit");

function run(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8", ...opts });
}

function fail(message) {
  console.error(`qwen-gguf: ${message}`);
  process.exit(1);
}

if (existsSync(stamp) && readFileSync(stamp, "utf8").trim() === pin.commit) {
  if (!process.argv.includes("--quiet")) console.log(`vendor/llama.cpp is at ${pin.commit.slice(0, 7)}`);
  process.exit(0);
}
if (existsSync(target) && !existsSync(stamp) && existsSync(join(target, "CMakeLists.txt"))) {
  fail(`vendor/llama.cpp exists but has no ${".qwen-gguf-commit"} stamp; remove it and run again`);
}

// Work inside vendor/ so the final rename never crosses file systems.
const work = mkdtempSync(join(root, "vendor", ".fetch-"));
try {
  const spec = `${pin.carrier}@${pin.carrierVersion}`;
  console.log(`fetching ${spec} from the npm registry (carrier of llama.cpp ${pin.commit.slice(0, 7)})…`);
  let packed;
  try {
    packed = JSON.parse(run("npm", ["pack", spec, "--json", "--pack-destination", work], { cwd: work }));
  } catch (err) {
    fail(`could not fetch ${spec} from the npm registry (is it reachable?):\n${err.stderr || err.message}`);
  }
  const tarball = join(work, packed[0].filename);
  const digest = "sha512-" + createHash("sha512").update(readFileSync(tarball)).digest("base64");
  if (digest !== pin.carrierIntegrity) {
    fail(`integrity mismatch for ${spec}: expected ${pin.carrierIntegrity}, got ${digest}`);
  }
  run("tar", ["-xzf", tarball, "-C", work, pin.bundlePath]);
  const clone = join(work, "llama.cpp");
  run("git", ["clone", "--quiet", "--no-checkout", join(work, pin.bundlePath), clone]);
  run("git", ["-c", "advice.detachedHead=false", "checkout", "--quiet", pin.commit], { cwd: clone });
  // The git metadata is not needed to build and would bloat `npm pack`.
  rmSync(join(clone, ".git"), { recursive: true, force: true });
  writeFileSync(join(clone, ".qwen-gguf-commit"), pin.commit + "\n");
  rmSync(target, { recursive: true, force: true });
  renameSync(clone, target);
  console.log(`vendor/llama.cpp checked out at ${pin.commit}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
