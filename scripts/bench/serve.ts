/**
 * `npm run bench:serve`: our server vs llama-server (built from the vendored tree) under the same streaming load on
 * loopback, and the same load through the library directly (what the HTTP layer costs).
 *
 *   npm run bench:serve [-- --models qwen3-0.6b,qwen3-4b] [--type q4_k_m] [--clients 1,4,16] [--threads 2]
 *                        [--parallel 4] [--context 4096] [--prompt 128] [--gen 64] [--requests 2] [--reps 2]
 *   npm run bench:serve -- --model file.gguf [--no-llama-server]      (one given file; skip the llama-server build)
 *
 * Each of N clients sends `requests` streaming /v1/completions one after another (distinct prompts of `prompt`
 * tokens, greedy, `gen` tokens through end-of-generation). Per level: aggregate generated tok/s (all tokens / wall
 * time of the level), time to first token P50/P99 and inter-token P99 over all requests, errors. Contenders stay
 * loaded and are alternated within each level (A B C A B C …). Both servers get the same threads and parallel slots,
 * and the same KV pool: ours `contextSize` per generation × `parallel` (its default cacheSize), llama-server one
 * unified cache of `-c context × parallel` (`--kv-unified`, so any slot may use what the others leave free).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { basename, join } from "node:path";
import { loadModel, type Model } from "../../src/index.js";
import { packageRoot } from "../../src/native.js";
import { versions } from "../../src/versions.js";
import { benchModel, parseFlags, variantFlags } from "./common.js";

export interface Sample { ttftMs: number; gaps: number[]; tokens: number; error?: string }
interface LevelResult { contender: string; clients: number; tokPerSec: number; ttftP50: number; ttftP99: number; itlP99: number; errors: number; requests: number }

export function percentile(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

/** Builds llama-server once (cached) from vendor/llama.cpp with the addon's CPU flags. */
export function llamaServer(variant: string): string {
  const dir = join(packageRoot, ".cache", `llama-server-${variant}`);
  const bin = join(dir, "bin", "llama-server");
  if (existsSync(bin)) return bin;
  console.error(`building llama-server (${variant}) from vendor/llama.cpp, once…`);
  execFileSync("cmake", ["-S", join(packageRoot, "vendor", "llama.cpp"), "-B", dir, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
    ...variantFlags(variant)], { stdio: "inherit" });
  execFileSync("cmake", ["--build", dir, "--target", "llama-server", "-j", String(availableParallelism())], { stdio: "inherit" });
  return bin;
}

/** Starts a server process and waits until GET /health answers 200. */
export async function startServer(cmd: string, args: string[], url: string, name: string): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
  const t0 = Date.now();
  while (Date.now() - t0 < 600_000) {
    if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}): ${stderr}`);
    try {
      if ((await fetch(`${url}/health`)).status === 200) return child;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  child.kill();
  throw new Error(`${name} did not become ready: ${stderr}`);
}

export function stopServer(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill("SIGTERM");
  });
}

/** One streaming /v1/completions request, timed per SSE data event. */
export async function httpRequest(url: string, prompt: string, gen: number): Promise<Sample> {
  const t0 = performance.now();
  const gaps: number[] = [];
  let first = 0, last = 0, tokens = 0, pieces = 0;
  try {
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt, max_tokens: gen, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
    });
    if (res.status !== 200) return { ttftMs: NaN, gaps, tokens: 0, error: `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}` };
    const decoder = new TextDecoder();
    let buffer = "";
    for await (const bytes of res.body!) {
      buffer += decoder.decode(bytes as Uint8Array, { stream: true });
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").find((l) => l.startsWith("data: "))?.slice(6);
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data) as { choices?: { text?: string }[]; usage?: { completion_tokens: number }; timings?: { predicted_n: number }; error?: unknown };
        if (chunk.error) return { ttftMs: NaN, gaps, tokens, error: JSON.stringify(chunk.error).slice(0, 200) };
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        else if (chunk.timings && !tokens) tokens = chunk.timings.predicted_n;
        if (chunk.choices?.[0]?.text) {
          const now = performance.now();
          if (!first) first = now;
          else gaps.push(now - last);
          last = now;
          pieces++;
        }
      }
    }
  } catch (err) {
    return { ttftMs: NaN, gaps, tokens, error: (err as Error).message };
  }
  return { ttftMs: first - t0, gaps, tokens: tokens || pieces };
}

/** The same request through the library in this process. */
async function directRequest(model: Model, prompt: string, gen: number): Promise<Sample> {
  const t0 = performance.now();
  const gaps: number[] = [];
  let first = 0, last = 0;
  try {
    const stream = model.stream(prompt, { maxTokens: gen, temperature: 0, ignoreEos: true });
    for await (const _ of stream) {
      const now = performance.now();
      if (!first) first = now;
      else gaps.push(now - last);
      last = now;
    }
    return { ttftMs: first - t0, gaps, tokens: (await stream.result).timings.genTokens };
  } catch (err) {
    return { ttftMs: NaN, gaps, tokens: 0, error: (err as Error).message };
  }
}

/** `clients` concurrent clients, each sending `requests` requests in turn. */
async function level(name: string, clients: number, requests: number, send: (prompt: string) => Promise<Sample>, promptFor: (c: number, r: number) => string): Promise<LevelResult> {
  const t0 = performance.now();
  const samples = (await Promise.all(Array.from({ length: clients }, async (_, c) => {
    const out: Sample[] = [];
    for (let r = 0; r < requests; r++) out.push(await send(promptFor(c, r)));
    return out;
  }))).flat();
  const seconds = (performance.now() - t0) / 1000;
  const ok = samples.filter((s) => !s.error);
  for (const s of samples) if (s.error) console.error(`  ${name}: ${s.error}`);
  return {
    contender: name, clients, requests: samples.length, errors: samples.length - ok.length,
    tokPerSec: ok.reduce((a, s) => a + s.tokens, 0) / seconds,
    ttftP50: percentile(ok.map((s) => s.ttftMs), 50), ttftP99: percentile(ok.map((s) => s.ttftMs), 99), itlP99: percentile(ok.flatMap((s) => s.gaps), 99),
  };
}

function median(xs: number[]) {
  return percentile(xs, 50);
}

async function main() {
  const { flags } = parseFlags(process.argv.slice(2));
  const threads = Number(flags.threads ?? 2), parallel = Number(flags.parallel ?? 4), context = Number(flags.context ?? 4096);
  const promptTokens = Number(flags.prompt ?? 128), gen = Number(flags.gen ?? 64), requests = Number(flags.requests ?? 2), reps = Number(flags.reps ?? 2);
  const clientLevels = (flags.clients ?? "1,4,16").split(",").map(Number);
  const withLlama = flags["no-llama-server"] !== "true";
  const variant = versions().cpuVariant;
  const files: [string, string][] = flags.model
    ? [[basename(flags.model), flags.model]]
    : await Promise.all((flags.models ?? "qwen3-0.6b,qwen3-4b").split(",").map(async (m) => [m, await benchModel(m, (flags.type ?? "q4_k_m") as never)] as [string, string]));
  const bin = withLlama ? llamaServer(variant) : "";
  const cli = join(packageRoot, "src", "cli.ts");
  const all: (LevelResult & { model: string })[] = [];
  console.log(`threads ${threads}, parallel ${parallel}, context ${context}, prompt ${promptTokens} tokens, gen ${gen}, ${requests} requests per client, ${reps} reps; CPU variant ${variant}, llama.cpp ${versions().llamaCpp.slice(0, 7)}`);

  for (const [name, file] of files) {
    const direct = await loadModel(file, { threads, contextSize: context, parallel } as never);
    // distinct prompts of exactly promptTokens tokens (" hello" is one token; the number in front makes each differ)
    const promptFor = (c: number, r: number) => {
      const head = `${name} ${c} ${r} ${Math.random()}:`;
      const fill = Math.max(0, promptTokens - direct.tokenize(head).length);
      return head + " hello".repeat(fill);
    };
    const ourPort = 18000 + Math.floor(Math.random() * 1000), theirPort = ourPort + 1000;
    const ours = await startServer(process.execPath, ["--import", "tsx", cli, "serve", file, "--port", String(ourPort), "--threads", String(threads), "--parallel", String(parallel), "--context-size", String(context), "--max-queue", "1000"], `http://127.0.0.1:${ourPort}`, "qwen-gguf serve");
    const theirs = withLlama
      ? await startServer(bin, ["-m", file, "--host", "127.0.0.1", "--port", String(theirPort), "-t", String(threads), "-tb", String(threads), "-c", String(context * parallel), "-np", String(parallel), "--kv-unified", "-b", "512", "-ub", "512", "--no-webui"], `http://127.0.0.1:${theirPort}`, "llama-server")
      : undefined;
    const contenders: [string, (p: string) => Promise<Sample>][] = [
      ["qwen-gguf serve", (p) => httpRequest(`http://127.0.0.1:${ourPort}`, p, gen)],
      ...(theirs ? [["llama-server", (p: string) => httpRequest(`http://127.0.0.1:${theirPort}`, p, gen)] as [string, (p: string) => Promise<Sample>]] : []),
      ["library (no HTTP)", (p) => directRequest(direct, p, gen)],
    ];
    try {
      for (const [, send] of contenders) await send(promptFor(99, 99)); // warm-up: weights paged in, threads started
      for (const clients of clientLevels) {
        const runs = new Map<string, LevelResult[]>();
        for (let rep = 0; rep < reps; rep++) {
          for (const [cname, send] of contenders) {
            const r = await level(cname, clients, requests, send, promptFor);
            console.error(`  ${name} ${cname} ×${clients}: ${r.tokPerSec.toFixed(1)} tok/s, TTFT P50 ${r.ttftP50.toFixed(0)} ms, errors ${r.errors}`);
            runs.set(cname, [...(runs.get(cname) ?? []), r]);
          }
        }
        for (const [cname, rs] of runs) {
          all.push({
            model: name, contender: cname, clients, requests: rs.reduce((a, r) => a + r.requests, 0), errors: rs.reduce((a, r) => a + r.errors, 0),
            tokPerSec: median(rs.map((r) => r.tokPerSec)), ttftP50: median(rs.map((r) => r.ttftP50)), ttftP99: median(rs.map((r) => r.ttftP99)), itlP99: median(rs.map((r) => r.itlP99)),
          });
        }
      }
    } finally {
      await stopServer(ours);
      if (theirs) await stopServer(theirs);
      await direct.dispose();
    }
  }

  const lines = [
    `| model | clients | contender | aggregate tok/s | TTFT P50 ms | TTFT P99 ms | inter-token P99 ms | errors |`,
    `|---|---|---|---|---|---|---|---|`,
    ...all.map((r) => `| ${r.model} | ${r.clients} | ${r.contender} | ${r.tokPerSec.toFixed(1)} | ${r.ttftP50.toFixed(0)} | ${r.ttftP99.toFixed(0)} | ${r.itlP99.toFixed(1)} | ${r.errors}/${r.requests} |`),
    "",
    `| model | clients | tok/s vs llama-server (goal ≥ 1.0) | TTFT P50 vs llama-server (goal ≤ 1.0) | HTTP cost vs library (goal ≤ 3%) |`,
    `|---|---|---|---|---|`,
  ];
  for (const [name] of files) {
    for (const clients of clientLevels) {
      const get = (c: string) => all.find((r) => r.model === name && r.clients === clients && r.contender === c);
      const o = get("qwen-gguf serve"), t = get("llama-server"), d = get("library (no HTTP)");
      lines.push(`| ${name} | ${clients} | ${t && o ? (o.tokPerSec / t.tokPerSec).toFixed(3) : "–"} | ${t && o ? (o.ttftP50 / t.ttftP50).toFixed(3) : "–"} | ${o && d ? `${((1 - o.tokPerSec / d.tokPerSec) * 100).toFixed(1)}%` : "–"} |`);
    }
  }
  console.log("\n" + lines.join("\n"));
  const dir = join(packageRoot, "bench", "results");
  await mkdir(dir, { recursive: true });
  const out = join(dir, `serve-${new Date().toISOString().slice(0, 10)}.json`);
  await writeFile(out, JSON.stringify({ date: new Date().toISOString(), threads, parallel, context, promptTokens, gen, requests, reps, variant, results: all }, null, 2));
  console.error(`wrote ${out}`);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
