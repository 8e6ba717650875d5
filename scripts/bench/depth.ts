/**
 * Generation as the conversation grows: tok/s after N cached tokens, ours next to llama-bench from the unmodified
 * vendored tree, for each shape and KV cache type.
 *
 *   npm run bench:depth -- [--shape qwen3-0.6b,qwen3-4b] [--depth 0,512,2048,4096] [--kv f16,q8_0] [--gen 64]
 *                          [--reps 3] [--pp 512] [--pp-depth 1536] [--threads 2] [--max-load 1.5] [--out FILE.md]
 *   npm run bench:depth -- model.gguf …          (one file instead of the cached random-weight shapes)
 *
 * Each rep alternates, in this order: stream() with our attention kernel, stream() with QWEN_GGUF_ATTENTION=ggml
 * (llama.cpp's op inside our build), `llama-bench -d N -fa 1` and `-fa 0`. llama.cpp refuses a quantized V cache
 * without flash attention, so `-fa 0` is n/a for q8_0. Ours runs in a child process per measurement (the variable is
 * read when the addon loads), each a fresh load like llama-bench's.
 *
 * Generation is timed like llama-bench's tg: the depth tokens decode as a prompt, then `gen` tokens are timed on the
 * generation thread. Prompt at depth: a `pp`-token prompt decoded after `pp-depth` cached tokens (ours: a second
 * stream() whose first `pp-depth` tokens the prefix cache holds; llama-bench: `-p pp -n 0 -d pp-depth`).
 *
 * The arithmetic limit beside each row: a decode step reads every weight once and, at depth d, d cells of K and V
 * per layer; on 2 cores that is bandwidth-bound, so limit(d) = tg(0) × W / (W + KV(d)), with tg(0) our measured
 * depth-0 speed, W the file's bytes and KV(d) the cache bytes of d tokens for the KV type.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { basename, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { estimateMemory, loadModel, type KvCacheType } from "../../src/index.js";
import { versions } from "../../src/versions.js";
import { benchModel, llamaTool, median, parseFlags, run, spread } from "./common.js";
import { measureOurs, promptOf } from "./stream.js";

type Attention = "ours" | "ggml";
interface ChildResult { tg?: number; pp?: number }

const contextFor = (tokens: number) => Math.max(1024, Math.ceil((tokens + 64) / 256) * 256);

/** In the child: one fresh load, a warm-up, then either tg after `depth` tokens or pp of `pp` tokens after `depth`. */
async function child(file: string, flags: Record<string, string>) {
  const threads = Number(flags.threads ?? 2), depth = Number(flags["child-depth"]), kv = flags.kv as KvCacheType;
  const gen = Number(flags.gen ?? 64), pp = Number(flags.pp ?? 0);
  const model = await loadModel(file, { threads, contextSize: contextFor(depth + Math.max(gen, pp) + 1), batchSize: 512, kvCacheType: kv });
  await measureOurs(model, 32, 8); // page in the weights
  const out: ChildResult = {};
  if (pp > 0) {
    // the first stream leaves `depth` tokens in the prefix cache; the second decodes only its last `pp` tokens
    for await (const _ of model.stream(promptOf(model, depth), { maxTokens: 1, temperature: 0, ignoreEos: true })) {
      // prompt decode only
    }
    const s = model.stream(promptOf(model, depth + pp), { maxTokens: 1, temperature: 0, ignoreEos: true });
    for await (const _ of s) {
      // the prompt at depth
    }
    const t = (await s.result).timings;
    if (t.promptTokens - t.cachedTokens !== pp) throw new Error(`prefix cache held ${t.cachedTokens} of ${t.promptTokens} tokens, wanted ${depth}`);
    out.pp = pp / (t.promptMs / 1000);
  } else {
    const s = model.stream(depth > 0 ? promptOf(model, depth) : " hello", { maxTokens: gen + 1, temperature: 0, ignoreEos: true, cachePrompt: false });
    for await (const _ of s) {
      // consume as a user would
    }
    out.tg = gen / ((await s.result).timings.genMs / 1000);
  }
  await model.dispose();
  console.log(JSON.stringify(out));
}

async function runChild(file: string, attention: Attention, args: Record<string, string | number>): Promise<ChildResult> {
  const env = { ...process.env };
  if (attention === "ggml") env.QWEN_GGUF_ATTENTION = "ggml";
  else delete env.QWEN_GGUF_ATTENTION;
  const argv = ["--import", "tsx", fileURLToPath(import.meta.url), file, ...Object.entries(args).flatMap(([k, v]) => [`--${k}`, String(v)])];
  const { stdout, stderr, code } = await run(process.execPath, argv, env);
  const line = stdout.trim().split("\n").pop() ?? "";
  if (code !== 0 || !line.startsWith("{")) throw new Error(`child failed (${code}): ${stderr.slice(-800)}`);
  return JSON.parse(line) as ChildResult;
}

/** llama-bench at depth: tg (`-p 0 -n gen`) or pp (`-p pp -n 0`); undefined where llama.cpp refuses the combination. */
async function llamaBench(bin: string, file: string, o: { threads: number; depth: number; kv: string; fa: 0 | 1; gen?: number; pp?: number }): Promise<number | undefined> {
  if (o.fa === 0 && o.kv !== "f16" && o.kv !== "f32") return undefined; // quantized V needs flash attention in llama.cpp
  const args = ["-m", file, "-t", String(o.threads), "-p", String(o.pp ?? 0), "-n", String(o.gen ?? 0), "-d", String(o.depth), "-fa", String(o.fa),
    "-ctk", o.kv, "-ctv", o.kv, "-b", "512", "-ub", "512", "-r", "1", "-o", "json"];
  const { stdout, stderr, code } = await run(bin, args);
  if (code !== 0) throw new Error(`llama-bench ${args.join(" ")} failed (${code}): ${stderr.slice(-500)}`);
  const rows = JSON.parse(stdout) as { n_prompt: number; n_gen: number; avg_ts: number }[];
  const row = rows.find((r) => (o.pp ? r.n_prompt > 0 : r.n_gen > 0));
  if (!row) throw new Error("llama-bench output lacks the row");
  return row.avg_ts;
}

async function waitForQuiet(maxLoad: number) {
  for (let waited = 0; loadavg()[0] >= maxLoad; waited += 15) {
    if (waited % 300 === 0) console.error(`waiting for the 1-minute load (${loadavg()[0].toFixed(2)}) to drop below ${maxLoad}…`);
    await new Promise((r) => setTimeout(r, 15_000));
  }
}

const NAMES = ["ours", "ours, ggml kernel", "llama-bench fa 1", "llama-bench fa 0"];
const fmt = (xs: (number | undefined)[]) => {
  const v = xs.filter((x): x is number => x !== undefined);
  return v.length ? `${median(v).toFixed(1)} (${spread(v)})` : "n/a";
};
const med = (xs: (number | undefined)[]) => {
  const v = xs.filter((x): x is number => x !== undefined);
  return v.length ? median(v) : undefined;
};

async function main() {
  const { flags, positionals } = parseFlags(process.argv.slice(2));
  if (flags["child-depth"] !== undefined) return child(positionals[0], flags);
  const threads = Number(flags.threads ?? 2), gen = Number(flags.gen ?? 64), reps = Number(flags.reps ?? 3);
  const pp = Number(flags.pp ?? 512), ppDepth = Number(flags["pp-depth"] ?? 1536);
  const depths = (flags.depth ?? "0,512,2048,4096").split(",").map(Number);
  if (depths.some((d) => !Number.isInteger(d) || d < 0)) throw new Error(`--depth: comma-separated token counts, not ${flags.depth}`);
  if (depths[0] !== 0) depths.unshift(0); // the limit needs depth 0
  const kvTypes = (flags.kv ?? "f16,q8_0").split(",") as KvCacheType[];
  const maxLoad = flags["max-load"] ? Number(flags["max-load"]) : Infinity;
  const files = positionals.length ? positionals : await Promise.all((flags.shape ?? "qwen3-0.6b,qwen3-4b").split(",").map((s) => benchModel(s, "q4_k_m")));
  const bench = llamaTool("llama-bench", versions().cpuVariant);
  const lines: string[] = [];
  const say = (s = "") => (console.log(s), lines.push(s));
  say(`# bench:depth, ${new Date().toISOString().slice(0, 10)}`);
  say(`threads ${threads}, generate ${gen}, reps ${reps}, CPU variant ${versions().cpuVariant}, llama.cpp ${versions().llamaCpp.slice(0, 7)}; tok/s median (range)`);

  for (const file of files) {
    for (const kv of kvTypes) {
      const mem = await estimateMemory(file, { contextSize: 4096, kvCacheType: kv, parallel: 1 }); // one sequence's cache
      const kvPerToken = mem.kvCache / 4096;
      const table: { depth: number; xs: (number | undefined)[][] }[] = [];
      for (const depth of depths) {
        const xs: (number | undefined)[][] = NAMES.map(() => []);
        for (let i = 0; i < reps; i++) {
          await waitForQuiet(maxLoad);
          const a = { threads, "child-depth": depth, kv, gen };
          xs[0].push((await runChild(file, "ours", a)).tg);
          xs[1].push((await runChild(file, "ggml", a)).tg);
          xs[2].push(await llamaBench(bench, file, { threads, depth, kv, fa: 1, gen }));
          xs[3].push(await llamaBench(bench, file, { threads, depth, kv, fa: 0, gen }));
          console.error(`${basename(file)} kv ${kv} depth ${depth} rep ${i + 1}: ${NAMES.map((n, j) => `${n} ${xs[j][i]?.toFixed(1) ?? "n/a"}`).join(" | ")} (load ${loadavg()[0].toFixed(2)})`);
        }
        table.push({ depth, xs });
      }
      const ppXs: (number | undefined)[][] = NAMES.map(() => []);
      for (let i = 0; i < reps && pp > 0; i++) {
        await waitForQuiet(maxLoad);
        const a = { threads, "child-depth": ppDepth, kv, pp };
        ppXs[0].push((await runChild(file, "ours", a)).pp);
        ppXs[1].push((await runChild(file, "ggml", a)).pp);
        ppXs[2].push(await llamaBench(bench, file, { threads, depth: ppDepth, kv, fa: 1, pp }));
        ppXs[3].push(await llamaBench(bench, file, { threads, depth: ppDepth, kv, fa: 0, pp }));
        console.error(`${basename(file)} kv ${kv} prompt ${pp} at ${ppDepth} rep ${i + 1}: ${NAMES.map((n, j) => `${n} ${ppXs[j][i]?.toFixed(1) ?? "n/a"}`).join(" | ")}`);
      }
      const tg0 = med(table[0].xs[0])!;
      const weights = mem.weights;
      say();
      say(`## ${basename(file)}, KV ${kv} (${(kvPerToken / 1024).toFixed(0)} KiB a token, weights ${(weights / 1e9).toFixed(2)} GB)`);
      say();
      say(`| | ${NAMES.join(" | ")} | limit | ours / best llama-bench | ours / limit |`);
      say(`|---|${NAMES.map(() => "---|").join("")}---|---|---|`);
      for (const { depth, xs } of table) {
        const m = xs.map(med);
        const best = Math.max(...[m[2], m[3]].filter((x): x is number => x !== undefined));
        const limit = tg0 * weights / (weights + depth * kvPerToken);
        say(`| tg ${gen} at depth ${depth} | ${xs.map(fmt).join(" | ")} | ${limit.toFixed(1)} | ${(m[0]! / best).toFixed(2)} | ${(m[0]! / limit).toFixed(2)} |`);
      }
      if (pp > 0) {
        const m = ppXs.map(med);
        const best = Math.max(...[m[2], m[3]].filter((x): x is number => x !== undefined));
        say(`| pp ${pp} at depth ${ppDepth} | ${ppXs.map(fmt).join(" | ")} | | ${(m[0]! / best).toFixed(2)} | |`);
      }
    }
  }
  if (flags.out) {
    mkdirSync(dirname(flags.out), { recursive: true });
    writeFileSync(flags.out, lines.join("\n") + "\n");
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
