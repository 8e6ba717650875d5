#!/usr/bin/env node
/**
 * `npm run stress -- [--duration 120] [--clients 64] [--model file.gguf] [--parallel 4] [--json]`
 *
 * The server under abuse, on 127.0.0.1 only: `qwen-gguf serve` runs in a child process (so a crash is seen as
 * one, and its RSS is read from /proc); `clients` streaming chat clients loop for `duration` seconds, a third of them
 * vanishing mid-stream; beside them, abusers: slow readers that never drain, bodies over the limit, malformed and
 * deeply nested JSON, invalid UTF-8, max_tokens of 10⁹, negative and non-finite numbers, 10,000 stop strings, a
 * 10 MB prompt, a prompt of 3 MB under the limit, a prompt of special tokens, a deeply nested tool schema, a wrong
 * API key (`--scale` shrinks the prompts and nesting that stay under the body limit; bodies over it stay 5 and 10 MB). Reported: requests and answers by kind (HTTP status or how the connection ended), server crashes,
 * slots and queue entries still held after the run (/metrics), the server's RSS before/after (and its peak), and the
 * inter-token gaps of the well-behaved clients before and during the abuse (P50/P99/max).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { Rng } from "./fixtures/checkpoint.js";
import { fullVocabGguf } from "./fixtures/compact.js";

const root = join(import.meta.dirname, "..");
const KEY = "stress-key";

export interface StressOptions {
  model: string;
  /** Seconds of traffic. Default 120. */
  duration?: number;
  /** Concurrent streaming clients (a third vanish mid-stream). Default 64. */
  clients?: number;
  /** Engine slots. Default 4 (the CLI's default). */
  parallel?: number;
  contextSize?: number;
  threads?: number;
  /** Multiplies the abusers' sizes (1 = the issue's sizes); the short test uses less. */
  scale?: number;
  /** Seconds of well-behaved traffic before the abuse starts (the baseline of the inter-token gaps). Default 10% of the run. */
  warmup?: number;
  onProgress?: (line: string) => void;
}

export interface Percentiles { n: number; p50: number; p99: number; max: number }

export interface StressReport {
  seconds: number;
  requests: number;
  /** Per kind of request: outcome → count (HTTP status, "closed-by-client", or a network error name). */
  outcomes: Record<string, Record<string, number>>;
  /** Requests that got neither an HTTP answer nor a clean close we caused (resets, hangs over the time limit). */
  unanswered: number;
  /** The server process ended during the run (signal or exit code), with the tail of its stderr. */
  crash?: { code: number | null; signal: string | null; stderr: string };
  /** Slots and queue entries still held 10 s after the run (from /metrics). */
  leaked: { active: number; queued: number };
  rss: { before: number; after: number; peak: number };
  /** Heap bytes in use from /metrics, warmed up and idle after the run: native (glibc malloc) and V8's. */
  heap: { nativeBefore: number; nativeAfter: number; v8Before: number; v8After: number };
  /** Inter-token gaps (ms) of the well-behaved streaming clients, before and during the abuse. */
  interToken: { baseline: Percentiles; abuse: Percentiles };
  /** Time (ms) the abusive requests took to be answered, by kind (max). */
  slowestAnswer: Record<string, number>;
  completedStreams: number;
  tokens: number;
}

function percentiles(values: number[]): Percentiles {
  if (!values.length) return { n: 0, p50: NaN, p99: NaN, max: NaN };
  const s = [...values].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  return { n: s.length, p50: at(0.5), p99: at(0.99), max: s[s.length - 1] };
}

function rssOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) * 1024;
  return { rss: kb("VmRSS"), peak: kb("VmHWM") };
}

/** A full GC in the server (scripts/stress-gc.mjs), then a pause for V8's sweeper and glibc to give pages back. */
async function collectGarbage(proc: ChildProcess) {
  proc.kill("SIGUSR2");
  await sleep(500);
}

/** Starts `qwen-gguf serve` on 127.0.0.1 with a free port; resolves with its URL once the model is loaded. */
async function startServer(o: Required<Pick<StressOptions, "model" | "parallel" | "contextSize" | "threads">>) {
  const proc = spawn(process.execPath, ["--expose-gc", "--import", join(root, "scripts", "stress-gc.mjs"), "--import", "tsx", join(root, "src", "cli.ts"), "serve", o.model, "--host", "127.0.0.1", "--port", "0",
    "--parallel", String(o.parallel), "--context-size", String(o.contextSize), "--threads", String(o.threads), "--api-key", KEY], { stdio: ["ignore", "pipe", "pipe"], cwd: root });
  let stderr = "";
  proc.stderr!.on("data", (d) => (stderr = (stderr + d).slice(-8000)));
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    proc.stdout!.on("data", (d) => {
      out += d;
      const m = /serving .* at (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
      if (m) resolve(m[1]);
    });
    proc.once("exit", (code, signal) => reject(new Error(`the server exited while starting (code ${code}, signal ${signal}): ${stderr}`)));
  });
  return { proc, url, stderr: () => stderr };
}

/** Reads the engine's gauges and the heap sizes from /metrics. */
async function gauges(url: string): Promise<{ active: number; queued: number; nativeHeap: number; v8Heap: number }> {
  const text = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
  const g = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
  return {
    active: g("qwen_gguf_generations_active"), queued: g("qwen_gguf_generations_queued"),
    nativeHeap: g("qwen_gguf_native_heap_bytes"), v8Heap: g("qwen_gguf_process_nodejs_heap_size_used_bytes"),
  };
}

export async function runStress(options: StressOptions): Promise<StressReport> {
  const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as StressOptions;
  const o = { duration: 120, clients: 64, parallel: 4, contextSize: 1024, threads: 1, scale: 1, ...given };
  const warmup = o.warmup ?? Math.max(2, o.duration * 0.1);
  const log = o.onProgress ?? (() => undefined);
  const server = await startServer(o);
  const { url, proc } = server;
  let crashed: StressReport["crash"];
  proc.once("exit", (code, signal) => (crashed = { code, signal, stderr: server.stderr().slice(-3000) }));
  const report: StressReport = {
    seconds: 0, requests: 0, outcomes: {}, unanswered: 0, leaked: { active: NaN, queued: NaN }, rss: { before: 0, after: 0, peak: 0 },
    heap: { nativeBefore: NaN, nativeAfter: NaN, v8Before: NaN, v8After: NaN }, interToken: { baseline: percentiles([]), abuse: percentiles([]) }, slowestAnswer: {}, completedStreams: 0, tokens: 0,
  };
  const count = (kind: string, outcome: string, ms?: number) => {
    report.requests++;
    const k = (report.outcomes[kind] ??= {});
    k[outcome] = (k[outcome] ?? 0) + 1;
    if (ms !== undefined) report.slowestAnswer[kind] = Math.max(report.slowestAnswer[kind] ?? 0, Math.round(ms));
  };
  const auth = { authorization: `Bearer ${KEY}`, "content-type": "application/json" };
  const post = (path: string, body: string | Buffer, headers: Record<string, string> = auth, signal?: AbortSignal) =>
    fetch(url + path, { method: "POST", headers, body, signal: signal ?? AbortSignal.timeout(120_000) });

  // warm the server so "before" is the server at work, not a fresh process
  for (let i = 0; i < 4; i++) await (await post("/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: "warm up" }], max_tokens: 8 }))).text();
  await collectGarbage(proc);
  report.rss.before = rssOf(proc.pid!).rss;
  const idle = await gauges(url);
  report.heap.nativeBefore = idle.nativeHeap;
  report.heap.v8Before = idle.v8Heap;
  const started = performance.now();
  const abuseFrom = started + warmup * 1000;
  const end = started + o.duration * 1000;
  const gaps = { baseline: [] as number[], abuse: [] as number[] };
  let stopping = false;

  /** A streaming chat client looping until the end; `vanish`: closes the connection after a few chunks. */
  async function streamingClient(id: number, vanish: boolean) {
    const rng = new Rng(1000 + id);
    while (!stopping && performance.now() < end && !crashed) {
      const controller = new AbortController();
      const t0 = performance.now();
      const kind = vanish ? "chat stream (vanishing)" : "chat stream";
      const leaveAfter = 1 + Math.floor(rng.uniform() * 6);
      try {
        const res = await post("/v1/chat/completions", JSON.stringify({
          messages: [{ role: "user", content: `Client ${id} says hello ${Math.floor(rng.uniform() * 1000)}` }],
          max_tokens: 16 + Math.floor(rng.uniform() * 48), stream: true, temperature: 0.8, ignore_eos: rng.uniform() < 0.5,
        }), auth, controller.signal);
        if (res.status !== 200) {
          count(kind, String(res.status), performance.now() - t0);
          await res.text();
          continue;
        }
        const reader = res.body!.getReader();
        const decoder = new TextDecoder();
        let buffered = "";
        let last = 0;
        let chunks = 0;
        let done = false;
        let left = false;
        while (!done) {
          const r = await reader.read();
          if (r.done) break;
          const now = performance.now();
          buffered += decoder.decode(r.value, { stream: true });
          let at: number;
          while ((at = buffered.indexOf("\n\n")) >= 0) {
            const event = buffered.slice(0, at);
            buffered = buffered.slice(at + 2);
            if (!event.startsWith("data: ")) continue;
            if (event === "data: [DONE]") { done = true; break; }
            const chunk = JSON.parse(event.slice(6));
            if (chunk.error) throw new Error(`stream error: ${JSON.stringify(chunk.error)}`);
            const delta = chunk.choices?.[0]?.delta;
            if (!delta?.content && !delta?.reasoning_content) continue;
            report.tokens++;
            if (last && !vanish) (last >= abuseFrom ? gaps.abuse : gaps.baseline).push(now - last);
            last = now;
            if (vanish && ++chunks >= leaveAfter) {
              controller.abort();
              left = true;
              done = true;
              break;
            }
          }
        }
        if (left) count(kind, "closed-by-client");
        else {
          count(kind, done ? "200 [DONE]" : "200 without [DONE]", performance.now() - t0);
          if (done) report.completedStreams++;
        }
      } catch (err) {
        if (controller.signal.aborted) count(kind, "closed-by-client");
        else {
          count(kind, `network error: ${(err as Error).cause ? ((err as Error).cause as Error).message : (err as Error).message}`);
          report.unanswered++;
        }
      }
    }
  }

  /** Raw TCP clients that send a streaming request with a long reply and never read: the server must hold back. */
  const slowReaders: Socket[] = [];
  async function slowReader(i: number) {
    const body = JSON.stringify({ messages: [{ role: "user", content: `slow ${i}` }], max_tokens: o.contextSize, ignore_eos: true, stream: true });
    const u = new URL(url);
    const socket = connect({ host: u.hostname, port: Number(u.port) });
    socket.on("error", () => undefined);
    await new Promise((r) => socket.once("connect", r));
    socket.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: ${u.host}\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    socket.pause(); // never drain
    slowReaders.push(socket);
    count("slow reader (never drains)", "opened");
  }

  /**
   * A request over a raw socket, for bodies the server refuses before they are fully sent: it may answer 413 and
   * close while the upload is still going, which fetch reports as EPIPE although the answer came. Resolves with the
   * status line's code, or "closed without an answer".
   */
  const rawPost = (path: string, body: Buffer) => new Promise<{ status: number | string; arrayBuffer: () => Promise<ArrayBuffer> }>((resolve) => {
    const u = new URL(url);
    const socket = connect({ host: u.hostname, port: Number(u.port) });
    let response = "";
    let settled = false;
    const finish = (status: number | string) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      resolve({ status, arrayBuffer: async () => new ArrayBuffer(0) });
    };
    socket.on("data", (d) => {
      response += d.toString("latin1");
      const m = /^HTTP\/1\.1 (\d{3})/.exec(response);
      if (m && response.includes("\r\n\r\n")) finish(Number(m[1]));
    });
    let reset = false;
    // EPIPE / ECONNRESET: the server closed while the upload went on, with the rest of it unread; the kernel then
    // resets the connection and may drop an answer that had arrived but was not read yet (no lingering close)
    socket.on("error", (e: NodeJS.ErrnoException) => { if (e.code === "ECONNRESET" || e.code === "EPIPE") reset = true; });
    socket.on("close", () => finish(reset ? "reset by the server during the upload (answer lost)" : "closed without an answer"));
    socket.setTimeout(120_000, () => finish("no answer within 120 s"));
    socket.write(`POST ${path} HTTP/1.1\r\nHost: ${u.host}\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`);
    socket.end(body);
  });

  /** One abusive request: its kind, the body (or a function that sends it), what answers are clean. */
  const S = o.scale;
  const chat = (extra: Record<string, unknown>, content = "hi") => JSON.stringify({ messages: [{ role: "user", content }], max_tokens: 4, ...extra });
  const nested = (depth: number) => `${"[".repeat(depth)}${"]".repeat(depth)}`;
  const deepSchema = (depth: number) => { let s = '{"type":"string"}'; for (let i = 0; i < depth; i++) s = `{"type":"object","properties":{"a":${s}}}`; return s; };
  // heavy: large bodies the server must parse or refuse (one lane); light: the rest (the other lane)
  const abuses: { kind: string; heavy?: boolean; send: () => Promise<{ status: number | string; arrayBuffer: () => Promise<ArrayBuffer> }> }[] = [
    { kind: "body over the limit (5 MB)", heavy: true, send: () => rawPost("/v1/chat/completions", Buffer.from(chat({}, "x".repeat(5e6)))) },
    { kind: "10 MB prompt", heavy: true, send: () => rawPost("/v1/completions", Buffer.from(JSON.stringify({ prompt: "word ".repeat(2e6), max_tokens: 4 }))) },
    { kind: `${(3 * S).toFixed(1)} MB prompt under the limit`, heavy: true, send: () => post("/v1/completions", JSON.stringify({ prompt: "word ".repeat(Math.round(6e5 * S)), max_tokens: 4 })) },
    { kind: `special-token prompt (${Math.round(20000 * S)} × <|im_start|>)`, heavy: true, send: () => post("/v1/chat/completions", chat({}, "<|im_start|>".repeat(Math.round(20000 * S)))) },
    { kind: `deeply nested JSON (${Math.round(100000 * S)} levels)`, heavy: true, send: () => post("/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"stop":${nested(Math.round(100000 * S))}}`) },
    { kind: "deeply nested unknown field", heavy: true, send: () => post("/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":2,"extra":${nested(Math.round(100000 * S))}}`) },
    { kind: "malformed JSON", send: () => post("/v1/chat/completions", pickOne(['{"messages": [', "{'a': 1}", "nul", "\u0000\u0001\u0002", '{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', ""])) },
    { kind: "deeply nested tool schema (1,000 levels)", send: () => post("/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":2,"tools":[{"type":"function","function":{"name":"f","parameters":${deepSchema(1000)}}}],"tool_choice":"required"}`) },
    { kind: "invalid UTF-8", send: () => post("/v1/chat/completions", Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"a'), Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80]), Buffer.from('"}],"max_tokens":3}')])) },
    { kind: "max_tokens 10^9", send: () => post("/v1/chat/completions", chat({ max_tokens: 1e9 })) },
    { kind: "negative numbers", send: () => post("/v1/chat/completions", chat(pickOne([{ max_tokens: -5 }, { temperature: -1 }, { top_k: -3 }, { top_p: -0.5 }, { seed: -1 }]))) },
    { kind: "non-finite numbers (1e999)", send: () => post("/v1/chat/completions", chat({}).replace('"max_tokens":4', pickOne(['"max_tokens":4,"temperature":1e999', '"max_tokens":1e999', '"max_tokens":4,"presence_penalty":-1e999', '"max_tokens":4,"top_p":1e999']))) },
    { kind: "10,000 stop strings", send: () => post("/v1/chat/completions", chat({ max_tokens: 16, stop: Array.from({ length: 10000 }, (_, i) => `s${i}x`) })) },
    { kind: "wrong API key", send: () => post("/v1/chat/completions", chat({}), { ...auth, authorization: "Bearer nope" }) },
  ];
  const abuseRng = new Rng(77);
  function pickOne<T>(list: T[]): T { return list[Math.floor(abuseRng.uniform() * list.length)]; }

  async function abuser(heavy: boolean) {
    const mine = abuses.filter((a) => !!a.heavy === heavy);
    await sleep(Math.max(0, abuseFrom - performance.now()) + (heavy ? 150 : 0));
    let i = 0;
    while (!stopping && performance.now() < end && !crashed) {
      const a = mine[i++ % mine.length];
      const t0 = performance.now();
      try {
        const res = await a.send();
        await res.arrayBuffer();
        count(a.kind, String(res.status), performance.now() - t0);
        if (typeof res.status !== "number" && !String(res.status).startsWith("reset")) report.unanswered++;
      } catch (err) {
        count(a.kind, `network error: ${(err as Error).cause ? ((err as Error).cause as Error).message : (err as Error).message}`);
        report.unanswered++;
      }
      await sleep(100);
    }
  }

  const sampler = setInterval(() => {
    if (crashed) return;
    try {
      const r = rssOf(proc.pid!);
      report.rss.peak = Math.max(report.rss.peak, r.rss);
    } catch { /* exited */ }
  }, 500);
  const progress = setInterval(() => log(`${((performance.now() - started) / 1000).toFixed(0)} s: ${report.requests} requests, ${report.tokens} tokens, RSS ${(rssOf(proc.pid!).rss / 2 ** 20).toFixed(0)} MiB`), 10_000);
  try {
    const clients = Array.from({ length: o.clients }, (_, i) => streamingClient(i, i % 3 === 2));
    const slow = (async () => {
      await sleep(Math.max(0, abuseFrom - performance.now()));
      for (let i = 0; i < 2; i++) await slowReader(i);
    })();
    const lanes = [abuser(false), abuser(true)];
    await Promise.all([...clients, slow, ...lanes]);
    stopping = true;
    for (const s of slowReaders) s.destroy();
    report.seconds = (performance.now() - started) / 1000;
    if (!crashed) {
      // back to idle: every slot and queue entry released once the clients are gone
      const deadline = performance.now() + 10_000;
      let s = await gauges(url);
      while ((s.active > 0 || s.queued > 0) && performance.now() < deadline) {
        await sleep(200);
        s = await gauges(url);
      }
      report.leaked = { active: s.active, queued: s.queued };
      // RSS once idle: the lowest of 16 samples, each after a full GC (one sample catches the allocator mid-swing)
      let low = Infinity;
      for (let i = 0; i < 16; i++) {
        await collectGarbage(proc);
        const r = rssOf(proc.pid!);
        low = Math.min(low, r.rss);
        report.rss.peak = Math.max(report.rss.peak, r.peak);
      }
      report.rss.after = low;
      const end = await gauges(url);
      report.heap.nativeAfter = end.nativeHeap;
      report.heap.v8After = end.v8Heap;
    }
  } finally {
    clearInterval(sampler);
    clearInterval(progress);
    report.crash = crashed;
    report.interToken = { baseline: percentiles(gaps.baseline), abuse: percentiles(gaps.abuse) };
    if (!crashed) {
      proc.kill("SIGTERM");
      await new Promise((r) => (proc.exitCode !== null || proc.signalCode !== null ? r(null) : proc.once("exit", r)));
    }
  }
  return report;
}

export function formatReport(r: StressReport): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const p = (x: Percentiles) => `P50 ${x.p50.toFixed(1)} ms, P99 ${x.p99.toFixed(1)} ms, max ${x.max.toFixed(1)} ms (${x.n} gaps)`;
  const lines = [
    `${r.seconds.toFixed(0)} s, ${r.requests} requests, ${r.completedStreams} streams completed, ${r.tokens} streamed tokens`,
    `server crash: ${r.crash ? `YES (code ${r.crash.code}, signal ${r.crash.signal})\n${r.crash.stderr}` : "none"}`,
    `unanswered (reset or no reply): ${r.unanswered}`,
    `slots after the run: ${r.leaked.active} active, ${r.leaked.queued} queued`,
    `server RSS: before ${mib(r.rss.before)}, after ${mib(r.rss.after)} (${r.rss.after >= r.rss.before ? "+" : ""}${mib(r.rss.after - r.rss.before)}), peak ${mib(r.rss.peak)}`,
    `heap in use: native ${mib(r.heap.nativeBefore)} → ${mib(r.heap.nativeAfter)}, V8 ${mib(r.heap.v8Before)} → ${mib(r.heap.v8After)}`,
    `inter-token gaps of well-behaved clients: before the abuse ${p(r.interToken.baseline)}; during ${p(r.interToken.abuse)}`,
    "requests by kind:",
    ...Object.entries(r.outcomes).map(([k, v]) => `  ${k}: ${Object.entries(v).map(([o, n]) => `${o} × ${n}`).join(", ")}${r.slowestAnswer[k] !== undefined ? ` (slowest answer ${r.slowestAnswer[k]} ms)` : ""}`),
  ];
  return lines.join("\n");
}

/** The stress model: the tiny Qwen3 test model (151,936-token vocabulary, F32), converted once into .cache/fuzz. */
export const stressModel = () => fullVocabGguf(join(root, ".cache", "fuzz"));

async function main(argv: string[]) {
  const arg = (name: string) => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1] : undefined; };
  const num = (name: string) => (arg(name) === undefined ? undefined : Number(arg(name)));
  const report = await runStress({
    model: arg("model") ?? (await stressModel()), duration: num("duration"), clients: num("clients"), parallel: num("parallel"),
    contextSize: num("context-size"), threads: num("threads"), scale: num("scale"), onProgress: (l) => process.stderr.write(`${l}\n`),
  });
  console.log(argv.includes("--json") ? JSON.stringify(report, null, 2) : formatReport(report));
  const bad = report.crash || report.unanswered > 0 || report.leaked.active > 0 || report.leaked.queued > 0 || report.rss.after - report.rss.before > 50 * 2 ** 20;
  process.exitCode = bad ? 1 : 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main(process.argv.slice(2));
