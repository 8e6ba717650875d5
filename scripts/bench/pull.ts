/**
 * `qwen-gguf pull` of a safetensors repository (converted while it downloads) against the two ways without it:
 * converting a checkpoint already on local disk, and downloading the checkpoint, then converting it. The repository
 * is a random-weight BF16 checkpoint of a full-size Qwen3 shape, in three shards like the real Qwen3-4B, served by
 * the loopback hub (scripts/fixtures/hub.ts: the hub's API, 302 redirects to a second "CDN" origin, Range).
 *
 *   npm run bench:pull -- [--shape qwen3-4b|qwen3-0.6b] [--type q4_k_m] [--threads 2]
 *
 * Each contender runs as its own process: wall time and peak RSS from getrusage of the child (the python3 wrapper
 * bench:convert uses), peak disk by sampling the bytes allocated under its output directory every 100 ms. The
 * outputs must be byte-identical.
 */
import { createHash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { mkdir, readdir, rm, stat } from "node:fs/promises";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import { listFiles, modelInfo } from "@huggingface/hub";
import { convert } from "../../src/convert/convert.js";
import { OUTPUT_TYPES, type OutputType } from "../../src/convert/plan.js";
import { downloadVerified } from "../../src/pull/download.js";
import { Hub } from "../../src/pull/hub.js";
import { makeCheckpoint } from "../fixtures/checkpoint.js";
import { directoryFiles, FakeHub } from "../fixtures/hub.js";
import { measured } from "./convert.js";
import { cacheDir, parseFlags, SHAPES } from "./common.js";

const cli = join(import.meta.dirname, "..", "..", "src", "cli.ts");
const gb = (b: number) => (b / 1e9).toFixed(2);

/** Bytes allocated on disk under `dir` (files being written included). */
async function diskUsage(dir: string): Promise<number> {
  let total = 0;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return 0;
  }
  for (const name of names) {
    const p = join(dir, name);
    const s = await stat(p).catch(() => undefined);
    if (!s) continue;
    total += s.isDirectory() ? await diskUsage(p) : s.blocks * 512;
  }
  return total;
}

/** Runs a measured child while sampling the disk use of `dir`. */
async function withDisk(dir: string, cmd: string[], env: NodeJS.ProcessEnv) {
  let peak = 0, sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, await diskUsage(dir));
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const saved = { ...process.env };
  Object.assign(process.env, env);
  // this process serves the loopback hub: its CPU time is the serving side's share of the same two cores
  const cpu0 = process.cpuUsage();
  try {
    const r = await measured(cmd);
    const cpu = process.cpuUsage(cpu0);
    return { ...r, peakDisk: peak, hubCpuSeconds: (cpu.user + cpu.system) / 1e6 };
  } finally {
    process.env = saved;
    sampling = false;
    await sampler;
  }
}

async function sha256File(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 8 << 20 })) h.update(chunk as Buffer);
  return h.digest("hex");
}

/** Child mode: download every file of the repository (verified, as `hf download` would), then convert from disk. */
async function downloadThenConvert(repo: string, work: string, out: string, type: OutputType, threads: number) {
  const hub = new Hub();
  const hubUrl = hub.settings.endpoint;
  const api = hub.fetchFor({ repo, repoLevel: true });
  const { sha } = await modelInfo({ name: repo, revision: "main", additionalFields: ["sha"], hubUrl, fetch: api });
  const dir = join(work, repo.split("/")[1]);
  await mkdir(dir, { recursive: true });
  for await (const e of listFiles({ repo: { type: "model", name: repo }, revision: sha, hubUrl, fetch: api })) {
    if (e.type !== "file") continue;
    const size = e.lfs?.size ?? e.size;
    await downloadVerified(hub, { path: e.path, size, url: `${hubUrl}/${repo}/resolve/${sha}/${e.path}` }, join(dir, e.path), {
      ctx: { repo, file: e.path }, expected: e.lfs ? { sha256: e.lfs.oid } : { gitSha1: e.oid }, partialDir: join(work, ".partial"), partialName: `${e.path}.part`,
    });
  }
  await convert(dir, { out, type, threads, force: true });
}

async function main() {
  const { flags } = parseFlags(process.argv.slice(2));
  if (flags.mode === "download-then-convert") {
    return downloadThenConvert(flags.repo, flags.work, flags.out, flags.type as OutputType, Number(flags.threads));
  }
  const shapeName = flags.shape ?? "qwen3-4b";
  const shape = SHAPES[shapeName];
  if (!shape) throw new Error(`unknown shape ${shapeName}; known: ${Object.keys(SHAPES).join(", ")}`);
  const type = (flags.type ?? "q4_k_m") as OutputType;
  if (!OUTPUT_TYPES.includes(type)) throw new Error(`--type must be one of ${OUTPUT_TYPES.join(", ")}`);
  const threads = flags.threads ?? String(Math.min(2, availableParallelism()));
  const shards = shapeName === "qwen3-4b" ? 3 : 1; // Qwen/Qwen3-4B ships three shards, Qwen/Qwen3-0.6B one file
  const name = `${shapeName}-bf16-${shards}shards`;
  const dir = join(cacheDir, name);
  if (!existsSync(join(dir, "config.json"))) {
    await mkdir(cacheDir, { recursive: true });
    console.error(`generating the random-weight ${shapeName} checkpoint (BF16, ${shards} shards) in ${dir}…`);
    await makeCheckpoint(dir, shape, { dtype: "BF16", seed: 42, shards });
  }
  const hub = await FakeHub.start();
  const repo = `bench/${name}`; // same name as the directory: general.name, and so the bytes, agree
  console.error("hashing the checkpoint for the hub's LFS listing (cached beside it)…");
  await hub.addRepo({ id: repo, files: await directoryFiles(dir) });
  const checkpointBytes = (await directoryFiles(dir)).length && (await diskUsage(dir));
  const work = join(cacheDir, "bench-pull");
  await rm(work, { recursive: true, force: true });
  const env = { HF_ENDPOINT: hub.url, HF_HOME: join(work, "hf"), HF_HUB_OFFLINE: "", HF_TOKEN: "" };
  const rows: { label: string; seconds: number; cpuSeconds: number; hubCpuSeconds: number; peakDisk: number; peakRss: number; out: string }[] = [];
  try {
    console.error(`load average before: ${loadavg().map((x) => x.toFixed(2)).join(" ")}`);
    // 1. the baseline: convert a checkpoint already on disk
    const localDir = join(work, "local");
    await mkdir(localDir, { recursive: true });
    const localOut = join(localDir, "out.gguf");
    console.error("convert from local disk…");
    const a = await withDisk(localDir, [process.execPath, "--import", "tsx", cli, "convert", dir, "-o", localOut, "--type", type, "--threads", threads], env);
    rows.push({ label: "convert from local disk (checkpoint already there)", ...a, out: localOut });
    const shaA = await sha256File(localOut);
    await rm(localOut); // keep only its hash: the disk holds one output at a time
    // 2. streamed: pull converts while it downloads
    const models = join(work, "models");
    console.error("pull (streamed conversion)…");
    const b = await withDisk(models, [process.execPath, "--import", "tsx", cli, "pull", `hf:${repo}`, "--type", type, "--threads", threads], { ...env, QWEN_GGUF_MODELS: models });
    const streamedOut = b.stdout.trim().split("\n").pop()!;
    rows.push({ label: `qwen-gguf pull hf:${repo} (streamed)`, ...b, out: streamedOut });
    // 3. download everything, then convert
    const dl = join(work, "download");
    const dlOut = join(dl, "out.gguf");
    console.error("download, then convert…");
    const c = await withDisk(dl, [process.execPath, "--import", "tsx", join(import.meta.dirname, "pull.ts"), "--mode", "download-then-convert", "--repo", repo, "--work", dl, "--out", dlOut, "--type", type, "--threads", threads], env);
    rows.push({ label: "download (verified), then convert", ...c, out: dlOut });
    const [shaB, shaC] = [await sha256File(streamedOut), await sha256File(dlOut)];
    const outSize = (await stat(streamedOut)).size;
    console.log(`\n${shapeName} (random weights; BF16 checkpoint of ${gb(checkpointBytes)} GB in ${shards} shard(s), served on loopback) → ${type}, ${threads} threads; output ${gb(outSize)} GB`);
    console.log(`load average after: ${loadavg().map((x) => x.toFixed(2)).join(" ")}\n`);
    console.log("| method | wall time | CPU time | loopback hub's CPU time | peak disk | peak RSS |\n|---|---|---|---|---|---|");
    for (const r of rows) console.log(`| ${r.label} | ${r.seconds.toFixed(1)} s | ${r.cpuSeconds.toFixed(1)} s | ${r.hubCpuSeconds.toFixed(1)} s | ${gb(r.peakDisk)} GB | ${gb(r.peakRss)} GB |`);
    console.log(`\nstreamed / local-disk conversion time: ${(b.seconds / a.seconds).toFixed(3)} (goal ≤ 1.05); streamed / download-then-convert: ${(b.seconds / c.seconds).toFixed(3)}`);
    console.log(`peak disk of the streamed pull: ${gb(b.peakDisk)} GB = ${(b.peakDisk / outSize).toFixed(3)} × the output (goal: the output only)`);
    const same = shaA === shaB && shaB === shaC;
    console.log(`outputs byte-identical (local conversion, streamed pull, download then convert): ${same ? "yes" : "NO"} (sha256 ${shaB.slice(0, 16)}…)`);
    if (!same) process.exitCode = 1;
  } finally {
    await hub.close();
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
