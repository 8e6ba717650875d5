/**
 * `npm run bench:batch`: the engine under concurrent load, next to the anchors built from the vendored tree.
 *
 *   npm run bench:batch [-- --models qwen3-0.6b,qwen3-4b] [--type q4_k_m] [--streams 1,2,4,8] [--threads 2]
 *                        [--prompt 128] [--gen 128] [--reps 2] [--skip throughput,ttft,table] [--no-llama-server]
 *
 * 1. Throughput: N concurrent greedy streams (distinct `prompt`-token prompts, `gen` tokens each, EOS ignored),
 *    ours with `parallel` = N, next to `llama-batched-bench -npp P -ntg G -npl …` (same threads, batch 512) and to
 *    llama-server (`-np N`, continuous batching, a unified KV pool) driven by the same N concurrent streaming
 *    requests. Prompt tok/s = N × P / (time until every stream has its first token); generation tok/s =
 *    N × G / (the rest); total = N × (P + G) / wall. Contenders alternate within each rep.
 * 2. Time to first token over a 1,000-token shared system prompt: cold, warm (right after), warm after another long
 *    prompt ran, and restored from the host-memory prompt cache after the sequence was evicted.
 * 3. Seed 001's table: memory (peak RSS of a child process), generation tok/s, P99 inter-token latency and cost per
 *    1M tokens with 4 concurrent streams, for KV f16 / q8_0 and weights q4_k_m / mixed.
 */
import { spawn } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { loadModel, type Model } from "../../src/index.js";
import { packageRoot } from "../../src/native.js";
import { versions } from "../../src/versions.js";
import { benchModel, llamaTool, median, parseFlags, run, spread } from "./common.js";
import { httpRequest, llamaServer, percentile, startServer, stopServer } from "./serve.js";

interface Throughput { pp: number; tg: number; total: number }
const PRICE = 3.6, CURRENCY = "¥"; // the seed's example price of this machine per hour

/** A prompt of exactly `n` tokens starting with a word of its own (so no two share a prefix). */
function distinctPrompt(model: Model, n: number, tag: string): string {
  const head = `${tag}:`;
  const text = head + " hello".repeat(Math.max(0, n - model.tokenize(head).length));
  const count = model.tokenize(text).length;
  if (count !== n) throw new Error(`prompt has ${count} tokens, wanted ${n}`);
  return text;
}

async function oursThroughput(model: Model, streams: number, promptTokens: number, gen: number, rep: number): Promise<Throughput> {
  const t0 = performance.now();
  let firsts = 0, tAll = 0;
  await Promise.all(Array.from({ length: streams }, async (_, i) => {
    let first = true;
    for await (const _ of model.stream(distinctPrompt(model, promptTokens, `s${rep}x${i}`), { maxTokens: gen, temperature: 0, ignoreEos: true, cachePrompt: false })) {
      if (first && ++firsts === streams) tAll = performance.now();
      first = false;
    }
  }));
  const wall = (performance.now() - t0) / 1000, pp = (tAll - t0) / 1000;
  return { pp: (streams * promptTokens) / pp, tg: (streams * gen) / (wall - pp), total: (streams * (promptTokens + gen)) / wall };
}

async function serverThroughput(url: string, model: Model, streams: number, promptTokens: number, gen: number, rep: number): Promise<Throughput> {
  const t0 = performance.now();
  const samples = await Promise.all(Array.from({ length: streams }, (_, i) => httpRequest(url, distinctPrompt(model, promptTokens, `h${rep}x${i}`), gen)));
  const wall = (performance.now() - t0) / 1000;
  const bad = samples.find((s) => s.error);
  if (bad) throw new Error(`llama-server: ${bad.error}`);
  const pp = Math.max(...samples.map((s) => s.ttftMs)) / 1000;
  return { pp: (streams * promptTokens) / pp, tg: (streams * gen) / (wall - pp), total: (streams * (promptTokens + gen)) / wall };
}

async function batchedBench(bin: string, file: string, threads: number, levels: number[], promptTokens: number, gen: number): Promise<Map<number, Throughput>> {
  const ctx = Math.max(...levels) * (promptTokens + gen) + 64;
  const args = ["-m", file, "-t", String(threads), "-c", String(ctx), "-b", "512", "-ub", "512", "-npp", String(promptTokens), "-ntg", String(gen), "-npl", levels.join(","), "--output-format", "jsonl", "-kvu"];
  const { stdout, stderr, code } = await run(bin, args);
  if (code !== 0) throw new Error(`llama-batched-bench failed (${code}): ${stderr.slice(-500)}`);
  const out = new Map<number, Throughput>();
  for (const line of (stdout + stderr).split("\n")) {
    if (!line.startsWith("{")) continue;
    const r = JSON.parse(line) as { pl: number; speed_pp: number; speed_tg: number; speed: number };
    out.set(r.pl, { pp: r.speed_pp, tg: r.speed_tg, total: r.speed });
  }
  return out;
}

async function throughput(name: string, file: string, flags: Record<string, string>, report: string[], json: unknown[]) {
  const threads = Number(flags.threads ?? 2), promptTokens = Number(flags.prompt ?? 128), gen = Number(flags.gen ?? 128), reps = Number(flags.reps ?? 2);
  const levels = (flags.streams ?? "1,2,4,8").split(",").map(Number);
  const variant = versions().cpuVariant;
  const bench = llamaTool("llama-batched-bench", variant);
  const withServer = flags["no-llama-server"] !== "true";
  const serverBin = withServer ? llamaServer(variant) : "";
  const rows: string[] = [];
  for (const streams of levels) {
    const model = await loadModel(file, { threads, parallel: streams, contextSize: promptTokens + gen + 16 });
    const port = 19000 + Math.floor(Math.random() * 1000);
    const server = withServer
      ? await startServer(serverBin, ["-m", file, "--host", "127.0.0.1", "--port", String(port), "-t", String(threads), "-tb", String(threads), "-c", String(streams * (promptTokens + gen + 16)), "-np", String(streams), "--kv-unified", "--cont-batching", "-b", "512", "-ub", "512", "--no-webui"], `http://127.0.0.1:${port}`, "llama-server")
      : undefined;
    const ours: Throughput[] = [], anchor: Throughput[] = [], srv: Throughput[] = [];
    try {
      await oursThroughput(model, 1, 16, 4, -1); // warm-up
      for (let rep = 0; rep < reps; rep++) {
        ours.push(await oursThroughput(model, streams, promptTokens, gen, rep));
        anchor.push((await batchedBench(bench, file, threads, [streams], promptTokens, gen)).get(streams)!);
        if (server) srv.push(await serverThroughput(`http://127.0.0.1:${port}`, model, streams, promptTokens, gen, rep));
        console.error(`  ${name} ×${streams} rep ${rep + 1}: ours total ${ours.at(-1)!.total.toFixed(1)}, batched-bench ${anchor.at(-1)!.total.toFixed(1)}${server ? `, llama-server ${srv.at(-1)!.total.toFixed(1)}` : ""} tok/s`);
      }
    } finally {
      if (server) await stopServer(server);
      await model.dispose();
    }
    const m = (xs: Throughput[], k: keyof Throughput) => median(xs.map((x) => x[k]));
    const cell = (xs: Throughput[]) => xs.length ? `${m(xs, "pp").toFixed(1)} / ${m(xs, "tg").toFixed(1)} / ${m(xs, "total").toFixed(1)} (${spread(xs.map((x) => x.total))})` : "–";
    rows.push(`| ${name} | ${streams} | ${cell(ours)} | ${cell(anchor)} | ${cell(srv)} | ${(m(ours, "total") / m(anchor, "total")).toFixed(3)} | ${srv.length ? (m(ours, "total") / m(srv, "total")).toFixed(3) : "–"} |`);
    json.push({ kind: "throughput", model: name, streams, ours, batchedBench: anchor, llamaServer: srv });
  }
  report.push(
    `### Throughput, ${name} (${threads} threads, prompt ${promptTokens}, generate ${gen}; median of ${reps}, range of total)`, "",
    "| model | streams | ours pp / tg / total tok/s | llama-batched-bench | llama-server | total vs batched-bench (goal ≥ 0.95) | total vs llama-server (goal ≥ 1.0) |",
    "|---|---|---|---|---|---|---|", ...rows, "");
}

async function ttft(name: string, file: string, flags: Record<string, string>, report: string[], json: unknown[]) {
  const threads = Number(flags.threads ?? 2);
  // one generation slot, a pool of 2,048 cells: a 1,500-token prompt evicts the idle system-prompt sequence
  const model = await loadModel(file, { threads, parallel: 1, contextSize: 2048, cacheSize: 2048, promptCache: { maxBytes: 1 << 30 } });
  try {
    const system = distinctPrompt(model, 1000, "system");
    const first = async (prompt: string) => {
      const t0 = performance.now();
      const stream = model.stream(prompt, { maxTokens: 1, temperature: 0, ignoreEos: true });
      for await (const _ of stream) break;
      const ms = performance.now() - t0;
      return { ms, cached: (await stream.result).timings.cachedTokens };
    };
    await first(distinctPrompt(model, 64, "warmup"));
    const cold = await first(`${system} Question one?`);
    const warm = await first(`${system} Question two?`);
    await model.generate(distinctPrompt(model, 600, "other"), { maxTokens: 1, temperature: 0 });
    const afterOther = await first(`${system} Question three?`);
    await model.generate(distinctPrompt(model, 1500, "evict"), { maxTokens: 1, temperature: 0 });
    const restored = await first(`${system} Question four?`);
    const hits = model.stats().promptCache.hits;
    const row = (label: string, r: { ms: number; cached: number }) => `| ${name} | ${label} | ${r.ms.toFixed(0)} | ${r.cached} | ${(r.ms / cold.ms).toFixed(3)} |`;
    report.push(`### Time to first token over a 1,000-token system prompt, ${name}`, "",
      "| model | case | TTFT ms | cached tokens | vs cold (goal ≤ 0.10) |", "|---|---|---|---|---|",
      row("cold", cold), row("warm (right after)", warm), row("warm after another 600-token prompt", afterOther), row(`restored from the host prompt cache (hits: ${hits})`, restored), "");
    json.push({ kind: "ttft", model: name, cold, warm, afterOther, restored });
  } finally {
    await model.dispose();
  }
}

/** One configuration of seed 001's table, in a child process so that its peak RSS is its own. */
async function tableRow(file: string, kv: string, threads: number, streams: number, gen: number) {
  const model = await loadModel(file, { threads, parallel: streams, contextSize: 1024, kvCacheType: kv as never });
  const gaps: number[] = [];
  const t0 = performance.now();
  await Promise.all(Array.from({ length: streams }, async (_, i) => {
    let last = 0;
    for await (const _ of model.stream(distinctPrompt(model, 128, `t${i}`), { maxTokens: gen, temperature: 0, ignoreEos: true })) {
      const now = performance.now();
      if (last) gaps.push(now - last);
      last = now;
    }
  }));
  const wall = (performance.now() - t0) / 1000;
  await model.dispose();
  return { tokPerSec: (streams * gen) / wall, itlP99: percentile(gaps, 99), peakRssMb: process.resourceUsage().maxRSS / 1024 };
}

async function table(name: string, flags: Record<string, string>, report: string[], json: unknown[]) {
  const threads = Number(flags.threads ?? 2), streams = 4, gen = Number(flags.gen ?? 128);
  const rows: string[] = [];
  for (const type of ["q4_k_m", "mixed"]) {
    const file = await benchModel(name, type as never);
    for (const kv of ["f16", "q8_0"]) {
      const child = spawn(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, "--child-row", file, kv, String(threads), String(streams), String(gen)], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout.on("data", (d) => (out += d));
      await new Promise((r) => child.on("close", r));
      const r = JSON.parse(out.trim().split("\n").at(-1)!) as { tokPerSec: number; itlP99: number; peakRssMb: number };
      const cost = PRICE / ((r.tokPerSec * 3600) / 1e6);
      rows.push(`| ${name} | ${type} | ${kv} | ${(r.peakRssMb / 1024).toFixed(2)} GB | ${r.tokPerSec.toFixed(1)} | ${r.itlP99.toFixed(0)} ms | ${CURRENCY}${cost.toFixed(2)} |`);
      json.push({ kind: "table", model: name, type, kv, ...r, costPer1M: cost });
      console.error(`  ${name} ${type} KV ${kv}: ${r.tokPerSec.toFixed(1)} tok/s, ${r.peakRssMb.toFixed(0)} MB`);
    }
  }
  report.push(`### Seed 001's table, ${name} (${streams} concurrent streams, ${gen} tokens each, ${threads} threads, ${CURRENCY}${PRICE}/hour)`, "",
    "| model | weights | KV cache | peak RSS | generation tok/s (all streams) | P99 inter-token | cost per 1M tokens |", "|---|---|---|---|---|---|---|", ...rows, "");
}

async function main() {
  const argv = process.argv.slice(2);
  if (argv[0] === "--child-row") {
    const [file, kv, threads, streams, gen] = argv.slice(1);
    console.log(JSON.stringify(await tableRow(file, kv, Number(threads), Number(streams), Number(gen))));
    return;
  }
  const { flags } = parseFlags(argv);
  const skip = new Set((flags.skip ?? "").split(","));
  const report: string[] = [`## bench:batch — ${new Date().toISOString().slice(0, 10)}, CPU variant ${versions().cpuVariant}, llama.cpp ${versions().llamaCpp.slice(0, 7)}`, ""];
  const json: unknown[] = [];
  for (const name of (flags.models ?? "qwen3-0.6b,qwen3-4b").split(",")) {
    const file = await benchModel(name, (flags.type ?? "q4_k_m") as never);
    if (!skip.has("throughput")) await throughput(name, file, flags, report, json);
    if (!skip.has("ttft")) await ttft(name, file, flags, report, json);
    if (!skip.has("table")) await table(name, flags, report, json);
  }
  console.log(report.join("\n"));
  const dir = join(packageRoot, "bench", "results");
  await mkdir(dir, { recursive: true });
  const out = join(dir, `batch-${new Date().toISOString().slice(0, 10)}`);
  await writeFile(`${out}.json`, JSON.stringify({ date: new Date().toISOString(), flags, results: json }, null, 2));
  await writeFile(`${out}.md`, report.join("\n") + "\n");
  console.error(`wrote ${out}.{json,md}`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
