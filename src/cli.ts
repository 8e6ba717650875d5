#!/usr/bin/env node
/** qwen-gguf command line: convert, inspect, pull, list, rm, doctor, build-native, serve, chat. */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { parseArgs } from "node:util";
import cliProgress from "cli-progress";
import { convert } from "./convert/convert.js";
import { OUTPUT_TYPES, type OutputType } from "./convert/plan.js";
import { QwenError } from "./errors.js";
import { ggmlTypeName, readGguf, type GgufTypedValue } from "./gguf.js";
import { cpuFeatures, CPU_VARIANTS, featureNames, packageRoot } from "./native.js";
import { versions } from "./versions.js";
import type { PullProgress } from "./pull/index.js";

const USAGE = `usage:
  qwen-gguf convert <hf-dir> -o <out.gguf> [--type ${OUTPUT_TYPES.join("|")}] [--tensor-type pattern=type]... [--threads N] [--force] [--dry-run]
  qwen-gguf inspect <file.gguf>
  qwen-gguf pull <ref> [--type ${OUTPUT_TYPES.join("|")}] [--tensor-type pattern=type]... [--threads N] [--force]
  qwen-gguf list [--json]
  qwen-gguf rm <ref|file> [--type T] | rm --partial
  qwen-gguf doctor
  qwen-gguf build-native [--variant avx2|avx512|dotprod|i8mm]
  qwen-gguf serve <model> [--pull] [--type T] [--host 127.0.0.1] [--port 8080] [--parallel N] [--context-size N] [--kv-cache-type f16|q8_0|q4_0|f32]
                  [--threads N] [--api-key K | --no-api-key] [--max-queue N (64)] [--cors ORIGIN]... [--model-id NAME]   (key also from QWEN_GGUF_API_KEY)
  qwen-gguf chat <model> [--pull] [--type T] [--system TEXT] [--no-think] [--context-size N] [--threads N] [--max-tokens N] [--temperature T]
<ref>/<model>: a .gguf path, hf:owner/repo[@revision][:type] (safetensors: converted while downloading; a GGUF
repository: its file for the type), hf:owner/repo/file.gguf, or https://…/file.gguf. Models live in $QWEN_GGUF_MODELS
(default ~/.cache/qwen-gguf/models); HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured.`;

function formatBytes(n: number) {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

async function runConvert(args: string[]) {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: {
      out: { type: "string", short: "o" }, type: { type: "string", default: "f16" }, "tensor-type": { type: "string", multiple: true },
      threads: { type: "string" }, force: { type: "boolean" }, "dry-run": { type: "boolean" }, name: { type: "string" },
    },
  });
  if (positionals.length !== 1) throw new QwenError("ERR_INVALID_ARG_VALUE", `convert needs one checkpoint directory\n${USAGE}`);
  const dryRun = values["dry-run"] ?? false;
  const bar = !dryRun && process.stderr.isTTY ? new cliProgress.SingleBar({ format: "{bar} {percentage}% | ETA {eta_formatted} | {tensor}", stream: process.stderr }, cliProgress.Presets.shades_classic) : undefined;
  const controller = new AbortController();
  process.once("SIGINT", () => controller.abort(new Error("interrupted")));
  bar?.start(100, 0, { tensor: "" });
  try {
    const result = await convert(positionals[0], {
      out: values.out, type: values.type as OutputType, tensorTypes: values["tensor-type"], force: values.force, dryRun, name: values.name,
      threads: values.threads === undefined ? undefined : Number(values.threads), signal: controller.signal,
      onProgress: (p) => bar?.update(Math.round((100 * p.bytesDone) / p.bytesTotal), { tensor: p.tensor }),
    });
    bar?.stop();
    if (dryRun) {
      for (const t of result.tensors) console.log(`${t.name.padEnd(32)} ${t.type.padEnd(6)} [${t.dims.join(", ")}] ${formatBytes(t.bytes)}`);
      console.log(`total ${formatBytes(result.bytes)} (${result.type}, ${result.architecture})`);
    } else {
      console.log(`wrote ${result.out}: ${formatBytes(result.bytes)} (${result.type}) in ${result.seconds.toFixed(1)} s`);
    }
  } finally {
    bar?.stop();
  }
}

function formatValue(v: GgufTypedValue): string {
  if (Array.isArray(v.value)) {
    const head = v.value.slice(0, 5).map((x) => JSON.stringify(typeof x === "bigint" ? String(x) : x)).join(", ");
    return `[${head}${v.value.length > 5 ? `, … (${v.value.length} items)` : ""}]`;
  }
  const s = typeof v.value === "string" ? JSON.stringify(v.value) : String(v.value);
  return s.length > 120 ? `${s.slice(0, 117)}…` : s;
}

async function runInspect(args: string[]) {
  const { positionals } = parseArgs({ args, allowPositionals: true });
  if (positionals.length !== 1) throw new QwenError("ERR_INVALID_ARG_VALUE", `inspect needs one GGUF file\n${USAGE}`);
  const file = await readGguf(positionals[0]);
  console.log(`GGUF v${file.version}, ${formatBytes(file.fileSize)}, ${file.metadata.size} metadata keys, ${file.tensors.length} tensors\n`);
  for (const [key, value] of file.metadata) console.log(`${key.padEnd(44)} ${formatValue(value)}`);
  const byType = new Map<string, { count: number; bytes: number }>();
  console.log();
  for (const t of file.tensors) {
    const end = file.tensors.find((o) => o.offset > t.offset)?.offset ?? file.fileSize - file.dataOffset;
    const bytes = end - t.offset;
    const entry = byType.get(ggmlTypeName(t.type)) ?? { count: 0, bytes: 0 };
    byType.set(ggmlTypeName(t.type), { count: entry.count + 1, bytes: entry.bytes + bytes });
    console.log(`${t.name.padEnd(32)} ${ggmlTypeName(t.type).padEnd(6)} [${t.dims.join(", ")}]`);
  }
  console.log("\ntype    tensors  size");
  for (const [type, { count, bytes }] of byType) console.log(`${type.padEnd(8)}${String(count).padStart(7)}  ${formatBytes(bytes)}`);
}

/** What loaded and why: the binary, its CPU variant, the CPU's features, llama.cpp's commit, the thread count. */
function runDoctor() {
  try {
    const v = versions();
    console.log(`binary:        ${v.binary}`);
    console.log(`cpu variant:   ${v.cpuVariant}`);
    console.log(`cpu features:  ${v.cpuFeatures.join(" ")}`);
    console.log(`ggml features: ${v.ggmlFeatures}`);
    console.log(`llama.cpp:     ${v.llamaCpp}`);
    console.log(`threads:       ${v.defaultThreads} (default of loadModel's threads option)`);
  } catch (err) {
    let seen = "";
    try {
      seen = featureNames(cpuFeatures()).join(" ");
    } catch {
      seen = "(the CPU probe did not load either)";
    }
    console.log(`cpu features:  ${seen}\nvariants:      ${CPU_VARIANTS.map((c) => `${c.variant} (needs ${c.needs.join(" ")})`).join("; ")}`);
    throw err;
  }
}

/** An optional integer flag, or an error naming the flag. */
function intFlag(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new QwenError("ERR_INVALID_ARG_VALUE", `--${name} must be a whole number, got ${JSON.stringify(value)}`);
  return Number(value);
}

async function runServe(args: string[]) {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: {
      host: { type: "string", default: "127.0.0.1" }, port: { type: "string", default: "8080" }, parallel: { type: "string" },
      "context-size": { type: "string" }, "kv-cache-type": { type: "string" }, threads: { type: "string" }, "api-key": { type: "string" },
      "max-queue": { type: "string" }, cors: { type: "string", multiple: true }, "model-id": { type: "string" },
      pull: { type: "boolean" }, type: { type: "string" }, "no-api-key": { type: "boolean" },
    },
  });
  if (positionals.length !== 1) throw new QwenError("ERR_INVALID_ARG_VALUE", `serve needs one model (a GGUF file or a reference)\n${USAGE}`);
  const apiKey = values["api-key"] ?? (process.env.QWEN_GGUF_API_KEY || undefined);
  // Beyond loopback, anyone who reaches the port could use the model and the CPU: a key, or an explicit opt-out.
  const loopback = /^(127\.\d+\.\d+\.\d+|localhost|::1|\[::1\])$/i.test(values.host ?? "");
  if (!loopback && !apiKey && !values["no-api-key"]) {
    throw new QwenError("ERR_INVALID_ARG_VALUE", `--host ${values.host} puts the server on the network: give it --api-key (or QWEN_GGUF_API_KEY), or pass --no-api-key to serve it open`);
  }
  const modelPath = await resolveCliModel(positionals[0], values.pull, values.type);
  const { serve } = await import("./server/index.js");
  const server = await serve(modelPath, {
    host: values.host, port: intFlag("port", values.port), parallel: intFlag("parallel", values.parallel),
    contextSize: intFlag("context-size", values["context-size"]), kvCacheType: values["kv-cache-type"] as never, threads: intFlag("threads", values.threads),
    apiKey, maxQueue: intFlag("max-queue", values["max-queue"]) ?? 64,
    cors: values.cors?.flatMap((c) => c.split(",")).map((c) => c.trim()).filter(Boolean),
    // a pulled hf: reference is served under its repository name (the file name stays an alias)
    modelId: values["model-id"] ?? (/^hf:/i.test(positionals[0]) ? positionals[0].slice(3).replace(/^\/\//, "").replace(/[@:].*$/, "") : undefined),
    onListening: (url) => console.error(`loading ${positionals[0]} (GET ${url}/health answers 503 until ready)…`),
  });
  console.log(`qwen-gguf serving ${server.model.info.name ?? positionals[0]} at ${server.url} (OpenAI API at ${server.url}/v1)`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(130); // a second signal: leave now
    stopping = true;
    console.error(`${signal}: finishing the running requests and stopping…`);
    server.close().then(() => process.exit(0), (err) => {
      console.error(err);
      process.exit(1);
    });
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
}

async function runChat(args: string[]) {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: {
      system: { type: "string" }, "no-think": { type: "boolean" }, "context-size": { type: "string" }, threads: { type: "string" },
      "max-tokens": { type: "string" }, temperature: { type: "string" }, pull: { type: "boolean" }, type: { type: "string" },
    },
  });
  if (positionals.length !== 1) throw new QwenError("ERR_INVALID_ARG_VALUE", `chat needs one model (a GGUF file or a reference)\n${USAGE}`);
  const modelPath = await resolveCliModel(positionals[0], values.pull, values.type);
  const temperature = values.temperature === undefined ? undefined : Number(values.temperature);
  if (temperature !== undefined && !(temperature >= 0)) throw new QwenError("ERR_INVALID_ARG_VALUE", `--temperature must be a number ≥ 0, got ${JSON.stringify(values.temperature)}`);
  const [{ loadModel }, { runTerminalChat }] = await Promise.all([import("./model.js"), import("./terminal-chat.js")]);
  const model = await loadModel(modelPath, { contextSize: intFlag("context-size", values["context-size"]), threads: intFlag("threads", values.threads) });
  try {
    await runTerminalChat(model, { system: values.system, thinking: !values["no-think"], sampling: { maxTokens: intFlag("max-tokens", values["max-tokens"]), temperature } });
  } finally {
    await model.dispose();
  }
}

/** A progress display for pull: a bar with bytes/s and ETA on a TTY, a line every 10% (or 30 s) otherwise. */
function pullProgress(): { onProgress: (p: PullProgress) => void; stop: () => void } {
  const tty = process.stderr.isTTY;
  let bar: cliProgress.SingleBar | undefined;
  let phase = "";
  let started = 0, lastLine = 0, lastPercent = -10;
  const rate = (done: number) => done / Math.max(1e-3, (performance.now() - started) / 1000);
  return {
    onProgress(p) {
      if (p.phase === "metadata" || p.bytesTotal <= 0) return;
      const label = p.phase === "convert" ? "converting while downloading" : `downloading ${p.file ?? ""}`;
      if (p.phase !== phase) {
        bar?.stop();
        phase = p.phase;
        started = performance.now();
        lastPercent = -10;
        if (tty) {
          bar = new cliProgress.SingleBar({
            format: `${label} |{bar}| {percentage}% | {done} / {all} | {speed}/s | ETA {eta_formatted}`, stream: process.stderr, etaBuffer: 50, fps: 5, hideCursor: true,
          }, cliProgress.Presets.shades_classic);
          bar.start(p.bytesTotal, 0, { done: "0", all: formatBytes(p.bytesTotal), speed: "–" });
        }
      }
      if (bar) {
        bar.update(p.bytesDone, { done: formatBytes(p.bytesDone), all: formatBytes(p.bytesTotal), speed: formatBytes(rate(p.bytesDone)) });
        return;
      }
      const percent = Math.floor((100 * p.bytesDone) / p.bytesTotal);
      const now = performance.now();
      if (percent >= lastPercent + 10 || now - lastLine > 30_000 || p.bytesDone === p.bytesTotal) {
        if (percent === lastPercent && p.bytesDone === p.bytesTotal) return;
        lastPercent = percent;
        lastLine = now;
        const speed = rate(p.bytesDone);
        const eta = speed > 0 && p.bytesDone > 0 ? `${Math.round((p.bytesTotal - p.bytesDone) / speed)} s` : "–";
        console.error(`${label}: ${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)} (${percent}%), ${p.bytesDone > 0 ? `${formatBytes(speed)}/s` : "–"}, ETA ${eta}`);
      }
    },
    stop: () => bar?.stop(),
  };
}

function checkType(type: string | undefined): OutputType | undefined {
  if (type !== undefined && !(OUTPUT_TYPES as readonly string[]).includes(type)) throw new QwenError("ERR_INVALID_ARG_VALUE", `--type must be one of ${OUTPUT_TYPES.join(", ")}, got ${JSON.stringify(type)}`);
  return type as OutputType | undefined;
}

/** chat/serve: a GGUF path as is; a reference through resolveModel (pulling only with --pull). */
async function resolveCliModel(ref: string, pull: boolean | undefined, type: string | undefined): Promise<string> {
  const { isReference, resolveModel } = await import("./pull/index.js");
  if (!isReference(ref)) return ref;
  const progress = pullProgress();
  const controller = new AbortController();
  const onSigint = () => controller.abort(new Error("interrupted"));
  process.once("SIGINT", onSigint);
  try {
    return await resolveModel(ref, { pull, type: checkType(type), onProgress: progress.onProgress, signal: controller.signal });
  } finally {
    progress.stop();
    process.off("SIGINT", onSigint);
  }
}

async function runPull(args: string[]) {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: { type: { type: "string" }, "tensor-type": { type: "string", multiple: true }, threads: { type: "string" }, force: { type: "boolean" } },
  });
  if (positionals.length !== 1) throw new QwenError("ERR_INVALID_ARG_VALUE", `pull needs one reference\n${USAGE}`);
  const { pull } = await import("./pull/index.js");
  const progress = pullProgress();
  const controller = new AbortController();
  process.once("SIGINT", () => controller.abort(new Error("interrupted")));
  const started = performance.now();
  try {
    const r = await pull(positionals[0], {
      type: checkType(values.type), tensorTypes: values["tensor-type"], threads: intFlag("threads", values.threads), force: values.force,
      onProgress: progress.onProgress, signal: controller.signal,
    });
    progress.stop();
    const what = r.entry.commit ? ` (${r.entry.revision}, commit ${r.entry.commit.slice(0, 10)})` : "";
    if (r.status === "up-to-date") console.error(`${r.entry.ref}${what} is up to date`);
    else console.error(`pulled ${r.entry.ref}${what}: ${formatBytes(r.entry.size)}${r.entry.type ? ` ${r.entry.type}` : ""} in ${((performance.now() - started) / 1000).toFixed(1)} s${r.resumedFrom ? `, resumed at ${formatBytes(r.resumedFrom)}` : ""}`);
    console.log(r.path);
  } finally {
    progress.stop();
  }
}

async function runList(args: string[]) {
  const { values } = parseArgs({ args, options: { json: { type: "boolean" } } });
  const { listModels, modelsDir, partialFiles } = await import("./pull/index.js");
  const models = await listModels();
  const partial = (await partialFiles()).filter((p) => !p.name.endsWith(".lock"));
  const partialNote = partial.length ? `${partial.length} interrupted download(s), ${formatBytes(partial.reduce((n, p) => n + p.size, 0))}: pull again to resume, or qwen-gguf rm --partial` : "";
  if (values.json) {
    console.log(JSON.stringify(models, null, 2));
    return;
  }
  if (models.length === 0) {
    console.log(`no models in ${modelsDir()} (qwen-gguf pull <ref> adds one)`);
    if (partialNote) console.log(partialNote);
    return;
  }
  const rows = models.map((m) => [m.ref, m.type ?? "gguf", formatBytes(m.size), m.commit ? `${m.revision}@${m.commit.slice(0, 8)}` : "–", m.date.slice(0, 10), m.present ? m.file : `${m.file} (missing)`]);
  const head = ["REFERENCE", "TYPE", "SIZE", "REVISION", "PULLED", "FILE"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  for (const r of [head, ...rows]) console.log(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  "));
  console.log(`\n${modelsDir()}`);
  if (partialNote) console.log(partialNote);
}

async function runRm(args: string[]) {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { type: { type: "string" }, partial: { type: "boolean" } } });
  const { removeModel, removePartials } = await import("./pull/index.js");
  if (values.partial && positionals.length === 0) {
    console.log(`removed ${formatBytes(await removePartials())} of partial downloads`);
    return;
  }
  if (positionals.length !== 1) throw new QwenError("ERR_INVALID_ARG_VALUE", `rm needs one reference or file name\n${USAGE}`);
  const removed = await removeModel(positionals[0], { type: checkType(values.type) });
  if (removed.length === 0) throw new QwenError("ERR_MODEL_NOT_FOUND", `no local model matches ${positionals[0]}${values.type ? ` --type ${values.type}` : ""} (see qwen-gguf list)`);
  for (const m of removed) console.log(`removed ${m.ref}${m.type ? ` ${m.type}` : ""} (${m.file}, ${formatBytes(m.size)})`);
}

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case "convert": return runConvert(rest);
    case "inspect": return runInspect(rest);
    case "pull": return runPull(rest);
    case "list": case "ls": return runList(rest);
    case "rm": return runRm(rest);
    case "doctor": return runDoctor();
    case "serve": return runServe(rest);
    case "chat": return runChat(rest);
    case "build-native":
      execFileSync(process.execPath, [join(packageRoot, "scripts", "build-native.mjs"), ...rest], { stdio: "inherit" });
      return;
    default:
      console.log(USAGE);
      process.exitCode = command ? 1 : 0;
  }
}

main().catch((err) => {
  console.error(err instanceof QwenError ? `qwen-gguf: ${err.message} (${err.code})` : err);
  process.exitCode = 1;
});
