/**
 * The package as a user gets it: `npm pack`, installed in a fresh directory with install scripts blocked (npm 11's
 * default) and no cmake, g++ or make on PATH; CPU dispatch under qemu-user CPU models.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, readdirSync, realpathSync } from "node:fs";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { cpuFeatures, CPU_VARIANTS, packageRoot } from "../src/native.js";
import { checkpoint, TINY_QWEN3 } from "./support/models.js";

const prebuilds = join(packageRoot, "prebuilds", `${process.platform}-${process.arch}`);
/** The app's result: the JSON line it prints last. */
const appResult = (stdout: string) => JSON.parse(stdout.trim().split("\n").pop()!);
const which = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).stdout.trim();

const APP = `
import { convert, loadModel, versions } from "qwen-gguf";
const [dir, out] = process.argv.slice(2);
if (dir !== "-") await convert(dir, { out, type: "q8_0", force: true });
const model = await loadModel(out, { contextSize: 64, threads: 1 });
let text = "";
for await (const piece of model.stream("Hello", { maxTokens: 4, temperature: 0, ignoreEos: true })) text += piece;
const r = await model.generate("Hello", { maxTokens: 4, temperature: 0, ignoreEos: true });
await model.dispose();
console.log(JSON.stringify({ text, tokens: r.tokens.length, variant: versions().cpuVariant }));
`;

describe("packaging", () => {
  let work: string;
  let app: string;
  let bin: string;
  let gguf: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), "qwen-gguf-pack-"));
    app = join(work, "app");
    bin = join(work, "bin");
    await mkdir(app);
    await mkdir(bin);
    // a PATH with node and npm only: no cmake, g++, c++, cc or make
    await symlink(process.execPath, join(bin, "node"));
    await symlink(which("npm"), join(bin, "npm"));
    await symlink(which("sh"), join(bin, "sh"));
    gguf = join(work, "tiny-q8_0.gguf");
  });
  after(() => rm(work, { recursive: true, force: true }));

  it("prebuilds are present for every variant and the probe", () => {
    for (const name of ["qwen_gguf-avx2", "qwen_gguf-avx512", "qwen_gguf-cpu"]) {
      assert.ok(readdirSync(prebuilds).some((f) => f.startsWith(`${name}.`) && f.endsWith(".node")), `${name} in ${prebuilds}`);
    }
  });

  it("the AVX2 baseline holds no AVX-512 instruction; the AVX-512 variant does", () => {
    const zmm = (name: string) => {
      const file = readdirSync(prebuilds).find((f) => f.startsWith(`${name}.`))!;
      const asm = execFileSync("objdump", ["-d", "--no-show-raw-insn", join(prebuilds, file)], { encoding: "utf8", maxBuffer: 1 << 30 });
      return (asm.match(/%zmm/g) ?? []).length;
    };
    assert.equal(zmm("qwen_gguf-avx2"), 0);
    assert.equal(zmm("qwen_gguf-cpu"), 0);
    assert.ok(zmm("qwen_gguf-avx512") > 1000, "the check can see AVX-512 code");
  });

  it("npm pack, then install with scripts blocked and no compiler: import, convert, stream", async () => {
    const packed = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", work], { cwd: packageRoot, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
    const tarball = join(work, packed[0].filename);
    await writeFile(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    await writeFile(join(app, "app.mjs"), APP);
    const env = { ...process.env, PATH: bin, npm_config_audit: "false", npm_config_fund: "false" };
    for (const tool of ["cmake", "g++", "c++", "cc", "make"]) assert.notEqual(spawnSync("sh", ["-c", `command -v ${tool}`], { env }).status, 0, `${tool} is not on PATH`);
    execFileSync("npm", ["install", "--no-save", tarball], { cwd: app, env, stdio: ["ignore", "ignore", "pipe"] });
    assert.ok(!existsSync(join(app, "node_modules", "qwen-gguf", "build")), "nothing was compiled at install");
    const { dir } = await checkpoint("qwen3-tied-gqa", TINY_QWEN3);
    const out = execFileSync("node", ["app.mjs", dir, gguf], { cwd: app, env, encoding: "utf8" });
    const result = appResult(out);
    assert.equal(result.tokens, 4);
    assert.ok(result.text.length > 0);
    const features = cpuFeatures();
    const best = CPU_VARIANTS.find((v) => v.needs.every((f) => features[f]))!.variant;
    assert.equal(result.variant, best);
    // doctor names the variant this CPU gets (AVX-512 on the machines this project runs on)
    const doctor = execFileSync("node", [join(app, "node_modules", "qwen-gguf", "dist", "cli.js"), "doctor"], { cwd: app, env, encoding: "utf8" });
    assert.match(doctor, new RegExp(`cpu variant: +${best}`));
    assert.match(doctor, /llama\.cpp: +de3ff815/);
  });

  const qemu = which("qemu-x86_64");
  it("the AVX2 baseline runs a tiny model under qemu -cpu Haswell", { skip: !qemu && !process.env.CI && "qemu-user is not installed (CI installs it)" }, () => {
    assert.ok(existsSync(gguf), "the install test converted the model");
    const r = spawnSync(qemu, ["-cpu", "Haswell", process.execPath, "app.mjs", "-", gguf], { cwd: app, encoding: "utf8", timeout: 600_000 });
    assert.equal(r.status, 0, r.stderr.split("\n").filter((l) => !l.includes("TCG doesn't support")).join("\n"));
    const result = appResult(r.stdout);
    assert.equal(result.variant, "avx2");
    assert.equal(result.tokens, 4);
  });

  it("a CPU without AVX2 (qemu -cpu Nehalem) gets a clear error, not an illegal instruction", { skip: !qemu && !process.env.CI && "qemu-user is not installed (CI installs it)" }, () => {
    const r = spawnSync(qemu, ["-cpu", "Nehalem", process.execPath, "app.mjs", "-", gguf], { cwd: app, encoding: "utf8", timeout: 600_000 });
    assert.notEqual(r.status, 132);
    assert.notEqual(r.status, 139);
    assert.equal(r.signal, null);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /ERR_CPU_UNSUPPORTED|lacks AVX2/);
    assert.match(r.stderr, /AVX2/);
  });

  it("from the tarball, build-native compiles the shipped llama.cpp tree and the package loads that build", () => {
    // last: its local build would shadow the prebuilds the tests above check. The fallback for a platform without a
    // prebuild: everything it needs must be in the tarball (vendor/llama.cpp)
    const pkg = join(app, "node_modules", "qwen-gguf");
    assert.ok(existsSync(join(pkg, "vendor", "llama.cpp", "CMakeLists.txt")), "npm pack shipped the vendored tree");
    execFileSync("node", [join(pkg, "dist", "cli.js"), "build-native", "--variant", "avx2"], { cwd: app, stdio: ["ignore", "ignore", "pipe"] });
    const env = { ...process.env, PATH: bin, QWEN_GGUF_CPU_VARIANT: "avx2" };
    const doctor = execFileSync("node", [join(pkg, "dist", "cli.js"), "doctor"], { cwd: app, env, encoding: "utf8" });
    assert.match(doctor, new RegExp(`binary: +${join(pkg, "build", "avx2")}`));
    const result = appResult(execFileSync("node", ["app.mjs", "-", gguf], { cwd: app, env, encoding: "utf8" }));
    assert.equal(result.tokens, 4);
  });

  it("node-gyp rebuild in the installed package runs the CMake build (binding.gyp's one action) and the loader picks its binary", { timeout: 1_200_000 }, () => {
    // last, like the test above. npm's own node-gyp (what `npm rebuild` and `npx node-gyp` run when none is installed);
    // --nodedir: the headers of the running Node, so nothing is downloaded
    const pkg = join(app, "node_modules", "qwen-gguf");
    assert.ok(existsSync(join(pkg, "binding.gyp")), "npm pack shipped binding.gyp");
    const npmRoot = join(realpathSync(which("npm")), "..", "..");
    const nodeGyp = join(npmRoot, "node_modules", "node-gyp", "bin", "node-gyp.js");
    const nodeDir = join(process.execPath, "..", "..");
    execFileSync(process.execPath, [nodeGyp, "rebuild", `--nodedir=${nodeDir}`], { cwd: pkg, stdio: ["ignore", "ignore", "pipe"] });
    const features = cpuFeatures();
    const best = CPU_VARIANTS.find((v) => v.needs.every((f) => features[f]))!.variant;
    assert.ok(existsSync(join(pkg, "build", best, "Release", `qwen_gguf-${best}.node`)), `node-gyp built the ${best} addon`);
    const env = { ...process.env, PATH: bin };
    const doctor = execFileSync("node", [join(pkg, "dist", "cli.js"), "doctor"], { cwd: app, env, encoding: "utf8" });
    assert.match(doctor, new RegExp(`binary: +${join(pkg, "build", best)}`));
    const result = appResult(execFileSync("node", ["app.mjs", "-", gguf], { cwd: app, env, encoding: "utf8" }));
    assert.equal(result.tokens, 4);
    assert.equal(result.variant, best);
  });
});
