/**
 * `npm run bench`: qwen-gguf's stream() side by side with llama-bench (same vendored tree, same CPU flags) and
 * node-llama-cpp 3.22.1 (its own prebuilt CPU binary), same files, same threads, alternated A B C A B C.
 *
 *   npm run bench                                   default set: Qwen3-0.6B q8_0/q4_k_m/q4_0/mixed, Qwen3-4B q4_k_m
 *   npm run bench -- --models qwen3-0.6b --types q4_k_m --reps 5
 *   npm run bench -- --model my.gguf [--reference my-f16.gguf]   any real GGUF (quality needs the reference)
 *   flags: --threads 2 --prompt 512 --gen 128 --reps 3 --contenders qwen-gguf,llama-bench,node-llama-cpp
 *          --price 3.6 --currency ¥ --skip-memory --skip-quality --no-readme
 *
 * Results: bench/results/<date>.json and .md (+ .svg chart); the README's benchmark section is replaced.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { basename, join } from "node:path";
import { loadModel } from "../../src/index.js";
import { packageRoot } from "../../src/native.js";
import { versions } from "../../src/versions.js";
import { benchModel, cacheDir, llamaTool, parseFlags } from "./common.js";
import { measured } from "./convert.js";
import { llamaBenchArgs } from "./stream.js";
import { KlAccumulator, parseLlamaBench, renderMarkdown, renderSvg, type BenchReport, type Contender, type SpeedResult, type SpeedSample } from "./report.js";

const NODE_LLAMA_CPP = "3.22.1";

/** node-llama-cpp with only its CPU binary, installed once into .cache (it weighs 725 MB with its GPU binaries). */
function ensureNodeLlamaCpp(): string {
  const dir = join(cacheDir, "node-llama-cpp");
  if (existsSync(join(dir, "node_modules", "node-llama-cpp", "package.json"))) return dir;
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "package.json"), '{ "private": true }\n');
  console.error(`installing node-llama-cpp@${NODE_LLAMA_CPP} (CPU binary only) into ${dir}…`);
  execFileSync("npm", ["install", "--no-save", "--omit=optional", "--ignore-scripts", "--no-audit", "--no-fund",
    `node-llama-cpp@${NODE_LLAMA_CPP}`, `@node-llama-cpp/${process.platform}-${process.arch}@${NODE_LLAMA_CPP}`], { cwd: dir, stdio: "inherit" });
  return dir;
}

/** Memory read bandwidth in GB/s with `threads` threads (scripts/bench/bandwidth.c, compiled once). */
function bandwidth(threads: number): number {
  const bin = join(cacheDir, "bandwidth");
  if (!existsSync(bin)) execFileSync("gcc", ["-O3", "-mavx2", "-pthread", join(import.meta.dirname, "bandwidth.c"), "-o", bin]);
  return Number(execFileSync(bin, [String(threads)], { encoding: "utf8" }).trim());
}

/** A fixed text of well over 2,000 tokens that ships with the vendored tree (llama.cpp's README at the pinned commit). */
function qualityText(): string {
  return readFileSync(join(packageRoot, "vendor", "llama.cpp", "README.md"), "utf8");
}

export async function quality(file: string, reference: string, chunk = 512, chunks = 4) {
  const ref = await loadModel(reference, { contextSize: chunk, batchSize: chunk });
  const tokens = ref.tokenize(qualityText()).slice(0, chunk * chunks);
  if (tokens.length < chunk * chunks) throw new Error(`the quality text has only ${tokens.length} tokens`);
  const refLogits: Float32Array[] = [];
  for (let c = 0; c < chunks; c++) refLogits.push(await ref.logits(tokens.slice(c * chunk, (c + 1) * chunk)));
  const vocab = ref.info.vocabSize;
  await ref.dispose();
  const model = await loadModel(file, { contextSize: chunk, batchSize: chunk });
  const acc = new KlAccumulator();
  for (let c = 0; c < chunks; c++) {
    const q = await model.logits(tokens.slice(c * chunk, (c + 1) * chunk));
    for (let i = chunk / 2; i < chunk - 1; i++) acc.add(refLogits[c].subarray(i * vocab, (i + 1) * vocab), q.subarray(i * vocab, (i + 1) * vocab));
  }
  await model.dispose();
  return acc.result();
}

async function main() {
  const { flags } = parseFlags(process.argv.slice(2));
  const threads = Number(flags.threads ?? 2), promptTokens = Number(flags.prompt ?? 512), genTokens = Number(flags.gen ?? 128), reps = Number(flags.reps ?? 3);
  const contenders = (flags.contenders ?? "qwen-gguf,llama-bench,node-llama-cpp").split(",") as Contender[];
  const contextSize = 2048;
  const v = versions();
  const bench = contenders.includes("llama-bench") ? llamaTool("llama-bench", v.cpuVariant) : "";
  const nlc = contenders.includes("node-llama-cpp") ? ensureNodeLlamaCpp() : "";

  // what to run: [model label, type, file]
  const runs: [string, string, string][] = [];
  if (flags.model) runs.push([basename(flags.model), "file", flags.model]);
  else {
    const models = (flags.models ?? "qwen3-0.6b,qwen3-4b").split(",");
    for (const m of models) {
      const types = (flags.types ?? (m === "qwen3-4b" ? "q4_k_m" : "q8_0,q4_k_m,q4_0,mixed")).split(",");
      for (const t of types) runs.push([m, t, await benchModel(m, t as never)]);
    }
  }

  const drivers = join(import.meta.dirname, "drivers");
  const common = (file: string) => [file, String(threads), String(promptTokens), String(genTokens), String(contextSize)];
  // a driver process prints its figures as one JSON line last; its peak RSS is measured from outside
  const drive = async (args: string[]): Promise<SpeedSample> => {
    const r = await measured([process.execPath, ...args]);
    return { ...JSON.parse(r.stdout.trim().split("\n").pop()!), peakRss: r.peakRss };
  };
  const ours = (file: string, kv: string) => drive(["--import", "tsx", join(drivers, "ours.ts"), ...common(file), kv]);
  const sample = async (c: Contender, file: string): Promise<SpeedSample> => {
    if (c === "qwen-gguf") return ours(file, "f16");
    if (c === "node-llama-cpp") return drive([join(drivers, "node-llama-cpp.mjs"), nlc, ...common(file)]);
    const r = await measured([bench, ...llamaBenchArgs(file, threads, promptTokens, genTokens)]);
    const { pp, tg } = parseLlamaBench(r.stdout);
    return { pp, tg, ttftMs: (promptTokens / pp) * 1000, peakRss: r.peakRss };
  };

  const speed: SpeedResult[] = [];
  for (const [model, type, file] of runs) {
    const row: SpeedResult = { model, type, fileBytes: statSync(file).size, contenders: {} };
    for (let rep = 0; rep < reps; rep++) {
      for (const c of contenders) {
        const s = await sample(c, file);
        (row.contenders[c] ??= []).push(s);
        console.error(`${model} ${type} ${c} run ${rep + 1}: pp ${s.pp.toFixed(1)} tg ${s.tg.toFixed(1)} tok/s, peak RSS ${((s.peakRss ?? 0) / 1e9).toFixed(2)} GB`);
      }
    }
    speed.push(row);
  }

  const memory: BenchReport["memory"] = [];
  if (!flags["skip-memory"]) {
    const memRuns = flags.model ? runs : runs.filter(([m]) => m === "qwen3-4b");
    for (const [model, type, file] of memRuns) {
      for (const kv of ["f16", "q8_0"]) {
        const { peakRss = 0, tg } = await ours(file, kv);
        memory.push({ model, type, kvCacheType: kv, contextSize, peakRss, tg });
        console.error(`memory ${model} ${type} kv ${kv}: ${(peakRss / 1e9).toFixed(2)} GB`);
      }
    }
  }

  const qualityRows: BenchReport["quality"] = [];
  if (!flags["skip-quality"]) {
    if (flags.model && flags.reference) qualityRows.push({ model: basename(flags.model), type: "file", ...(await quality(flags.model, flags.reference)) });
    else if (!flags.model) {
      const model = "qwen3-0.6b";
      const reference = await benchModel(model, "f16");
      for (const [m, type, file] of runs.filter(([m]) => m === model)) {
        qualityRows.push({ model: m, type, ...(await quality(file, reference)) });
        console.error(`quality ${m} ${type}: ${JSON.stringify(qualityRows.at(-1))}`);
      }
    }
  }

  const date = new Date().toISOString().slice(0, 10);
  const report: BenchReport = {
    date,
    machine: { cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length, memoryBytes: totalmem(), cpuFeatures: v.cpuFeatures, bandwidthGBs: bandwidth(threads) },
    versions: { node: process.version, "llama.cpp": v.llamaCpp.slice(0, 7), "qwen-gguf variant": v.cpuVariant, "node-llama-cpp": NODE_LLAMA_CPP },
    settings: { threads, promptTokens, genTokens, reps, price: Number(flags.price ?? 3.6), currency: flags.currency ?? "¥" },
    speed, memory, quality: qualityRows,
  };
  await writeReport(report, flags["no-readme"] !== "true");
  console.log(renderMarkdown(report, `${report.date}.svg`));
}

/** Writes bench/results/<date>.{json,md,svg} and replaces the README's benchmark section. */
export async function writeReport(report: BenchReport, updateReadme: boolean, root = packageRoot) {
  const dir = join(root, "bench", "results");
  await mkdir(dir, { recursive: true });
  const base = join(dir, report.date);
  const md = renderMarkdown(report, `${report.date}.svg`);
  await writeFile(`${base}.json`, JSON.stringify(report, null, 2) + "\n");
  await writeFile(`${base}.svg`, renderSvg(report));
  await writeFile(`${base}.md`, md);
  if (!updateReadme) return;
  const readmePath = join(root, "README.md");
  const readme = await readFile(readmePath, "utf8");
  const start = "<!-- bench:start -->", end = "<!-- bench:end -->";
  const section = `${start}\n${md.replace(/^# .*\n/, "").replaceAll(`](${report.date}.svg)`, `](bench/results/${report.date}.svg)`)}\n${end}`;
  const next = readme.includes(start) ? readme.replace(new RegExp(`${start}[\\s\\S]*${end}`), section) : `${readme.trimEnd()}\n\n${section}\n`;
  await writeFile(readmePath, next);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
