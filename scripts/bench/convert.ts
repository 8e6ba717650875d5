/**
 * One-step conversion (BF16 safetensors → quantized GGUF) against the path llama.cpp users take today, measured in
 * the same run: an F16 GGUF quantized by llama-quantize (built from the vendored tree with the addon's flags).
 *
 *   npm run bench:convert -- [--shape qwen3-4b] [--types q8_0,q4_k_m] [--threads 2]
 *
 * Wall time and peak RSS of each step come from a python3 wrapper (getrusage of the child), the same for both.
 */
import { existsSync } from "node:fs";
import { readFile, rm } from "node:fs/promises";
import { convert } from "../../src/convert/convert.js";
import { ggmlTypeName, readGguf, tensorBytes } from "../../src/gguf.js";
import { makeCheckpoint } from "../fixtures/checkpoint.js";
import { join } from "node:path";
import { versions } from "../../src/versions.js";
import { benchCheckpoint, benchModel, cacheDir, llamaTool, parseFlags, run } from "./common.js";

const LLAMA_TYPE: Record<string, string> = { q8_0: "Q8_0", q4_k_m: "Q4_K_M", q4_0: "Q4_0", q5_k_m: "Q5_K_M", q6_k: "Q6_K" };

/** Runs a command under python3, returning wall seconds and the child's peak RSS in bytes. */
export async function measured(cmd: string[]): Promise<{ seconds: number; cpuSeconds: number; peakRss: number; stdout: string }> {
  const wrapper = "import json,resource,subprocess,sys,time\nt=time.time()\nr=subprocess.run(sys.argv[1:],stdout=subprocess.PIPE,stderr=subprocess.PIPE,text=True)\n" +
    "u=resource.getrusage(resource.RUSAGE_CHILDREN)\nsys.stdout.write(r.stdout)\n" +
    "print(json.dumps({'code':r.returncode,'seconds':time.time()-t,'cpu':u.ru_utime+u.ru_stime,'maxrss_kb':u.ru_maxrss,'stderr':r.stderr[-2000:]}))";
  const { stdout } = await run("python3", ["-c", wrapper, ...cmd]);
  const lines = stdout.trim().split("\n");
  const stats = JSON.parse(lines.pop()!);
  if (stats.code !== 0) throw new Error(`${cmd.join(" ")} failed (${stats.code}): ${stats.stderr}`);
  return { seconds: stats.seconds, cpuSeconds: stats.cpu, peakRss: stats.maxrss_kb * 1024, stdout: lines.join("\n") };
}

/**
 * Byte-identity: a small F32 checkpoint converted by us straight to `type`, against llama-quantize applied to our
 * F32 GGUF of it. Same input values, so every tensor's type and bytes must agree.
 */
async function verifyIdentical(quantize: string, types: string[]) {
  const dir = join(cacheDir, "identity-f32");
  if (!existsSync(join(dir, "config.json"))) {
    await makeCheckpoint(dir, { arch: "qwen3", hidden: 512, layers: 4, heads: 8, kvHeads: 4, headDim: 64, ffn: 1536, vocab: 151936, tied: false }, { seed: 11 });
  }
  const f32 = join(cacheDir, "identity-f32.gguf");
  await convert(dir, { out: f32, type: "f32", force: true });
  for (const type of types) {
    const ours = join(cacheDir, `identity-ours-${type}.gguf`), theirs = join(cacheDir, `identity-theirs-${type}.gguf`);
    await convert(dir, { out: ours, type: type as never, force: true });
    await measured([quantize, f32, theirs, LLAMA_TYPE[type], "2"]);
    const [a, b] = [await readGguf(ours), await readGguf(theirs)];
    const [da, db] = [await readFile(ours), await readFile(theirs)];
    let same = 0;
    const differing: string[] = [];
    for (const t of a.tensors) {
      const u = b.tensors.find((x) => x.name === t.name);
      const bytes = tensorBytes(t.type, t.dims);
      const equal = u && u.type === t.type && Buffer.compare(da.subarray(a.dataOffset + t.offset, a.dataOffset + t.offset + bytes), db.subarray(b.dataOffset + u.offset, b.dataOffset + u.offset + bytes)) === 0;
      if (equal) same++;
      else differing.push(`${t.name} (${ggmlTypeName(t.type)} vs ${u ? ggmlTypeName(u.type) : "absent"})`);
    }
    console.log(`byte identity ${type}: ${same}/${a.tensors.length} tensors identical to llama-quantize${differing.length ? `; differ: ${differing.join(", ")}` : ""}`);
    await Promise.all([rm(ours), rm(theirs)]);
  }
}

async function main() {
  const { flags } = parseFlags(process.argv.slice(2));
  const shape = flags.shape ?? "qwen3-4b";
  const types = (flags.types ?? "q8_0,q4_k_m").split(",");
  const threads = flags.threads ?? "2";
  const dir = await benchCheckpoint(shape);
  const f16 = await benchModel(shape, "f16"); // llama-quantize's input, as convert_hf_to_gguf.py would make it
  const quantize = llamaTool("llama-quantize", versions().cpuVariant);
  const cli = join(import.meta.dirname, "..", "..", "src", "cli.ts");
  const gb = (b: number) => (b / 1e9).toFixed(2);
  await verifyIdentical(quantize, types);
  console.log(`\n${shape} (random weights, BF16 checkpoint ${dir}), ${threads} threads\n`);
  console.log("| type | qwen-gguf convert (safetensors → GGUF) | llama-quantize (F16 GGUF → GGUF) | time ratio (ours / theirs) |\n|---|---|---|---|");
  for (const type of types) {
    const ours = join(cacheDir, `bench-convert-${shape}-${type}.gguf`);
    const theirs = join(cacheDir, `bench-quantize-${shape}-${type}.gguf`);
    await rm(ours, { force: true });
    await rm(theirs, { force: true });
    const a = await measured([process.execPath, "--import", "tsx", cli, "convert", dir, "-o", ours, "--type", type, "--threads", threads]);
    const b = await measured([quantize, f16, theirs, LLAMA_TYPE[type], threads]);
    console.log(`| ${type} | ${a.seconds.toFixed(1)} s, peak RSS ${gb(a.peakRss)} GB | ${b.seconds.toFixed(1)} s, peak RSS ${gb(b.peakRss)} GB | ${(a.seconds / b.seconds).toFixed(2)} |`);
    if (!existsSync(ours) || !existsSync(theirs)) throw new Error("an output is missing");
    await rm(ours, { force: true });
    await rm(theirs, { force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
