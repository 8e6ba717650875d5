/**
 * stream() vs llama-bench on the same file, same threads, prompt 512 and 128 generated tokens, alternated A B A B.
 *
 *   npm run bench:stream -- model.gguf [--threads 2] [--prompt 512] [--gen 128] [--reps 3]
 *   npm run bench:stream -- --shape qwen3-0.6b --type q4_k_m      (a cached random-weight model of that shape)
 *   npm run bench:stream -- model.gguf --native    (against llama-bench built with GGML_NATIVE=ON: the packaging goal)
 *   npm run bench:stream -- --shape qwen3-0.6b --depth 0,512,2048 [--gen 128] [--reps 5] [--max-load 1.5]
 *
 * --depth: generation after N tokens already in the context, like `llama-bench -p 0 -n 128 -d N`: stream() with our
 * attention kernel, stream() with QWEN_GGUF_ATTENTION=ggml (llama.cpp's kernel), llama-bench with flash attention on
 * and off, alternated in that order each rep. Ours runs in a child process per measurement because the variable is
 * read when the addon loads. --max-load waits before each rep until the 1-minute load average is below it.
 *
 * Our prompt speed is wall-clock from the stream() call to the first piece (prompt decode + one sampled token);
 * generation speed is measured like llama-bench's tg: from a 1-token prompt, `gen` tokens, timed on the
 * generation thread from the end of the prompt to the last token (it runs while JS receives the pieces).
 */
import { loadModel, type Model } from "../../src/index.js";
import { spawn } from "node:child_process";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { versions } from "../../src/versions.js";
import { benchModel, llamaTool, median, parseFlags, run, spread } from "./common.js";
import { parseLlamaBench } from "./report.js";

export interface StreamFigures { pp: number; tg: number; ttftMs?: number }

/** A prompt of exactly `n` tokens (" hello" is one token in Qwen's vocabulary). */
export function promptOf(model: Model, n: number): string {
  const text = " hello".repeat(n);
  const count = model.tokenize(text).length;
  if (count !== n) throw new Error(`prompt has ${count} tokens, wanted ${n}`);
  return text;
}

export async function measureOurs(model: Model, promptTokens: number, genTokens: number): Promise<StreamFigures> {
  const prompt = promptOf(model, promptTokens);
  const t0 = performance.now();
  let tFirst = 0;
  for await (const _ of model.stream(prompt, { maxTokens: 1, temperature: 0, ignoreEos: true, cachePrompt: false })) tFirst ||= performance.now();
  tFirst ||= performance.now();
  const ttftMs = tFirst - t0;
  const pp = promptTokens / (ttftMs / 1000);
  // tg: gen + 1 sampled tokens, gen decodes after the 1-token prompt (llama-bench tg decodes gen tokens)
  const stream = model.stream(" hello", { maxTokens: genTokens + 1, temperature: 0, ignoreEos: true, cachePrompt: false });
  for await (const _ of stream) {
    // consume as a user would
  }
  const r = await stream.result;
  const tg = genTokens / (r.timings.genMs / 1000);
  return { pp, tg, ttftMs };
}

/** llama-bench's arguments for one run of the comparison (batch sizes as our loadModel's defaults). */
export function llamaBenchArgs(file: string, threads: number, promptTokens: number, genTokens: number): string[] {
  return ["-m", file, "-t", String(threads), "-p", String(promptTokens), "-n", String(genTokens), "-b", "512", "-ub", "512", "-r", "1", "-o", "json"];
}

export async function measureLlamaBench(bin: string, file: string, threads: number, promptTokens: number, genTokens: number): Promise<StreamFigures> {
  const args = llamaBenchArgs(file, threads, promptTokens, genTokens);
  const { stdout, stderr, code } = await run(bin, args);
  if (code !== 0) throw new Error(`llama-bench failed (${code}): ${stderr.slice(-500)}`);
  return parseLlamaBench(stdout);
}

/** Generation tok/s after `depth` prompt tokens in the context (llama-bench's tg at -d depth). */
export async function measureOursDepth(model: Model, depth: number, genTokens: number): Promise<number> {
  // the depth tokens decode as a prompt; genMs times only the generation after it
  const stream = model.stream(depth > 0 ? promptOf(model, depth) : " hello", { maxTokens: genTokens + 1, temperature: 0, ignoreEos: true, cachePrompt: false });
  for await (const _ of stream) {
    // consume as a user would
  }
  const r = await stream.result;
  return genTokens / (r.timings.genMs / 1000);
}

export function llamaBenchDepthArgs(file: string, threads: number, depth: number, genTokens: number, fa: 0 | 1): string[] {
  return ["-m", file, "-t", String(threads), "-p", "0", "-n", String(genTokens), "-d", String(depth), "-fa", String(fa), "-b", "512", "-ub", "512", "-r", "1", "-o", "json"];
}

async function measureLlamaBenchDepth(bin: string, file: string, threads: number, depth: number, genTokens: number, fa: 0 | 1): Promise<number> {
  const { stdout, stderr, code } = await run(bin, llamaBenchDepthArgs(file, threads, depth, genTokens, fa));
  if (code !== 0) throw new Error(`llama-bench failed (${code}): ${stderr.slice(-500)}`);
  const rows = JSON.parse(stdout) as { n_prompt: number; n_gen: number; avg_ts: number }[];
  const tg = rows.find((r) => r.n_gen > 0 && r.n_prompt === 0);
  if (!tg) throw new Error("llama-bench output lacks a tg row");
  return tg.avg_ts;
}

const contextFor = (depth: number, genTokens: number) => Math.max(1024, Math.ceil((depth + genTokens + 64) / 256) * 256);

/** One measurement of ours in a child process (so QWEN_GGUF_ATTENTION takes effect when the addon loads). */
function measureOursChild(file: string, threads: number, depth: number, genTokens: number, attention: "ours" | "ggml"): Promise<number> {
  const env = { ...process.env };
  if (attention === "ggml") env.QWEN_GGUF_ATTENTION = "ggml";
  else delete env.QWEN_GGUF_ATTENTION;
  const args = ["--import", "tsx", fileURLToPath(import.meta.url), file, "--threads", String(threads), "--child-depth", String(depth), "--gen", String(genTokens)];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("close", (code) => {
      const line = stdout.trim().split("\n").pop() ?? "";
      if (code !== 0 || !line.startsWith("{")) reject(new Error(`child failed (${code}): ${stderr.slice(-500)}`));
      else resolve((JSON.parse(line) as { tg: number }).tg);
    });
  });
}

async function childDepth(file: string, threads: number, depth: number, genTokens: number) {
  const model = await loadModel(file, { threads, contextSize: contextFor(depth, genTokens), batchSize: 512 });
  await measureOurs(model, 32, 8); // warm-up: page in the weights
  const tg = await measureOursDepth(model, depth, genTokens);
  await model.dispose();
  console.log(JSON.stringify({ tg }));
}

async function waitForQuiet(maxLoad: number) {
  for (let waited = 0; loadavg()[0] >= maxLoad; waited += 15) {
    if (waited % 300 === 0) console.error(`waiting for the 1-minute load (${loadavg()[0].toFixed(2)}) to drop below ${maxLoad}…`);
    await new Promise((r) => setTimeout(r, 15_000));
  }
}

async function depthMain(file: string, flags: Record<string, string>, bench: string, threads: number, genTokens: number, reps: number) {
  const depths = flags.depth.split(",").map(Number);
  if (depths.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`--depth: comma-separated token counts, not ${flags.depth}`);
  const maxLoad = flags["max-load"] ? Number(flags["max-load"]) : Infinity;
  console.log(`${file}\nthreads ${threads}, generate ${genTokens}, CPU variant ${versions().cpuVariant}, llama.cpp ${versions().llamaCpp.slice(0, 7)}`);
  const names = ["stream() (our kernel)", "stream() QWEN_GGUF_ATTENTION=ggml", "llama-bench -fa 1", "llama-bench -fa 0"];
  const table: { depth: number; xs: number[][] }[] = [];
  for (const depth of depths) {
    const xs: number[][] = names.map(() => []);
    for (let i = 0; i < reps; i++) {
      await waitForQuiet(maxLoad);
      xs[0].push(await measureOursChild(file, threads, depth, genTokens, "ours"));
      xs[1].push(await measureOursChild(file, threads, depth, genTokens, "ggml"));
      xs[2].push(await measureLlamaBenchDepth(bench, file, threads, depth, genTokens, 1));
      xs[3].push(await measureLlamaBenchDepth(bench, file, threads, depth, genTokens, 0));
      console.log(`depth ${depth} run ${i + 1}: ${names.map((n, j) => `${n} ${xs[j][i].toFixed(1)}`).join(" | ")} (load ${loadavg()[0].toFixed(2)})`);
    }
    table.push({ depth, xs });
  }
  console.log(`\n| tg tok/s, median (range) of ${reps} | ${names.join(" | ")} | ours / fa 1 | ours / fa 0 | ours / ggml kernel |`);
  console.log(`|---|${names.map(() => "---|").join("")}---|---|---|`);
  for (const { depth, xs } of table) {
    const m = xs.map(median);
    console.log(`| depth ${depth} | ${xs.map((x, j) => `${m[j].toFixed(1)} (${spread(x)})`).join(" | ")} | ${(m[0] / m[2]).toFixed(2)} | ${(m[0] / m[3]).toFixed(2)} | ${(m[0] / m[1]).toFixed(2)} |`);
  }
}

async function main() {
  const { flags, positionals } = parseFlags(process.argv.slice(2));
  if (flags["child-depth"]) return childDepth(positionals[0], Number(flags.threads ?? 2), Number(flags["child-depth"]), Number(flags.gen ?? 128));
  const threads = Number(flags.threads ?? 2), promptTokens = Number(flags.prompt ?? 512), genTokens = Number(flags.gen ?? 128), reps = Number(flags.reps ?? 3);
  const file = positionals[0] ?? (await benchModel(flags.shape ?? "qwen3-0.6b", (flags.type ?? "q4_k_m") as never));
  const variant = versions().cpuVariant;
  // --llama-bench: another build to compare with, e.g. a GGML_NATIVE=ON build (see --native)
  const bench = flags["llama-bench"] ?? llamaTool("llama-bench", flags.native ? "native" : variant);
  if (flags.depth) return depthMain(file, flags, bench, threads, genTokens, reps);
  const model = await loadModel(file, { threads, contextSize: 1024, batchSize: 512 });
  console.log(`${file}\n${model.info.quantization}, ${(model.info.fileSize / 1e6).toFixed(0)} MB, threads ${threads}, CPU variant ${variant}, llama.cpp ${versions().llamaCpp.slice(0, 7)}`);
  await measureOurs(model, 32, 8); // warm-up: page in the weights
  const ours: StreamFigures[] = [], theirs: StreamFigures[] = [];
  for (let i = 0; i < reps; i++) {
    ours.push(await measureOurs(model, promptTokens, genTokens));
    theirs.push(await measureLlamaBench(bench, file, threads, promptTokens, genTokens));
    console.log(`run ${i + 1}: stream() pp ${ours[i].pp.toFixed(1)} tg ${ours[i].tg.toFixed(1)} | llama-bench pp ${theirs[i].pp.toFixed(1)} tg ${theirs[i].tg.toFixed(1)}`);
  }
  await model.dispose();
  const row = (name: string, xs: StreamFigures[]) => `| ${name} | ${median(xs.map((x) => x.pp)).toFixed(1)} (${spread(xs.map((x) => x.pp))}) | ${median(xs.map((x) => x.tg)).toFixed(1)} (${spread(xs.map((x) => x.tg))}) |`;
  console.log(`\n| tok/s, median (range) of ${reps} | prompt ${promptTokens} | generate ${genTokens} |\n|---|---|---|`);
  console.log(row("qwen-gguf stream()", ours));
  console.log(row("llama-bench", theirs));
  const ratio = (k: "pp" | "tg") => median(ours.map((x) => x[k])) / median(theirs.map((x) => x[k]));
  console.log(`| ratio | ${ratio("pp").toFixed(3)} | ${ratio("tg").toFixed(3)} |`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
