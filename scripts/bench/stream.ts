/**
 * stream() vs llama-bench on the same file, same threads, prompt 512 and 128 generated tokens, alternated A B A B.
 *
 *   npm run bench:stream -- model.gguf [--threads 2] [--prompt 512] [--gen 128] [--reps 3]
 *   npm run bench:stream -- --shape qwen3-0.6b --type q4_k_m      (a cached random-weight model of that shape)
 *   npm run bench:stream -- model.gguf --native    (against llama-bench built with GGML_NATIVE=ON: the packaging goal)
 *
 * Generation as the context grows (depth) is scripts/bench/depth.ts (`npm run bench:depth`).
 *
 * Our prompt speed is wall-clock from the stream() call to the first piece (prompt decode + one sampled token);
 * generation speed is measured like llama-bench's tg: from a 1-token prompt, `gen` tokens, timed on the
 * generation thread from the end of the prompt to the last token (it runs while JS receives the pieces).
 */
import { loadModel, type Model } from "../../src/index.js";
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

async function main() {
  const { flags, positionals } = parseFlags(process.argv.slice(2));
  const threads = Number(flags.threads ?? 2), promptTokens = Number(flags.prompt ?? 512), genTokens = Number(flags.gen ?? 128), reps = Number(flags.reps ?? 3);
  const file = positionals[0] ?? (await benchModel(flags.shape ?? "qwen3-0.6b", (flags.type ?? "q4_k_m") as never));
  const variant = versions().cpuVariant;
  // --llama-bench: another build to compare with, e.g. a GGML_NATIVE=ON build (see --native)
  const bench = flags["llama-bench"] ?? llamaTool("llama-bench", flags.native ? "native" : variant);
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
