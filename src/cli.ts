#!/usr/bin/env node
/** qwen-gguf command line: convert, inspect, versions, build-native. */
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

const USAGE = `usage:
  qwen-gguf convert <hf-dir> -o <out.gguf> [--type ${OUTPUT_TYPES.join("|")}] [--tensor-type pattern=type]... [--threads N] [--force] [--dry-run]
  qwen-gguf inspect <file.gguf>
  qwen-gguf doctor
  qwen-gguf build-native [--variant avx2|avx512]`;

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

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  switch (command) {
    case "convert": return runConvert(rest);
    case "inspect": return runInspect(rest);
    case "doctor": return runDoctor();
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
