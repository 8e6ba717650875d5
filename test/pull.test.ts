/**
 * pull / resolveModel / list / rm against a loopback server that speaks the Hugging Face Hub's HTTP shapes
 * (scripts/fixtures/hub.ts), with HF_ENDPOINT pointed at it and a temporary models directory.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { directoryFiles, FakeHub, HUB_TOKEN } from "../scripts/fixtures/hub.js";
import { checkFreeSpace, convert } from "../src/convert/convert.js";
import { loadModel } from "../src/model.js";
import { listModels, parseReference, pull, removeModel, resolveModel } from "../src/pull/index.js";
import { checkpoint, TINY_QWEN3 } from "./support/models.js";

const cli = join(import.meta.dirname, "..", "src", "cli.ts");
/** Runs the CLI without blocking this process's event loop (the loopback hub answers from it). */
const runCli = (args: string[], env: NodeJS.ProcessEnv) => new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => {
  const child = execFile(process.execPath, ["--import", "tsx", cli, ...args], { env, encoding: "utf8", timeout: 60_000 }, (err, stdout, stderr) =>
    resolve({ status: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr }));
  child.stdin?.end();
});
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const code = (c: string) => (e: unknown) => {
  assert.equal((e as { code?: string }).code, c, String(e));
  return true;
};

let hub: FakeHub;
let root: string, models: string;
let reference: Buffer; // the on-disk conversion of the checkpoint the hub serves, q8_0
let gguf: Buffer; // a GGUF the hub serves as is
const savedEnv = { ...process.env };

/** Runs fn with extra environment variables, restoring them after. */
async function withEnv<T>(vars: Record<string, string | undefined>, fn: () => Promise<T>): Promise<T> {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  for (const [k, v] of Object.entries(vars)) v === undefined ? delete process.env[k] : (process.env[k] = v);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(old)) v === undefined ? delete process.env[k] : (process.env[k] = v);
  }
}

async function modelsDirFiles() {
  const names = await readdir(models).catch(() => [] as string[]);
  const partial = await readdir(join(models, ".partial")).catch(() => [] as string[]);
  return { names: names.filter((n) => n !== ".partial"), partial };
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), "qwen-gguf-pull-"));
  models = join(root, "models");
  hub = await FakeHub.start();
  Object.assign(process.env, { QWEN_GGUF_MODELS: models, HF_HOME: join(root, "hf"), HF_ENDPOINT: hub.url, QWEN_GGUF_HTTP_BACKOFF_MS: "10" });
  delete process.env.HF_TOKEN;
  delete process.env.HUGGING_FACE_HUB_TOKEN;
  delete process.env.HF_HUB_OFFLINE;
  // BF16, three shards: the layout of the real Qwen3 repositories
  const { dir } = await checkpoint("pull-qwen3-bf16-sharded", TINY_QWEN3, { seed: 21, shards: 3, dtype: "BF16" });
  const refPath = join(root, "reference-q8_0.gguf");
  await convert(dir, { out: refPath, type: "q8_0", name: "tiny-qwen3" });
  reference = await readFile(refPath);
  gguf = reference;
  const files = await directoryFiles(dir);
  await hub.addRepo({ id: "test/tiny-qwen3", files });
  await hub.addRepo({ id: "test/tiny-qwen3-GGUF", files: [{ path: "tiny-qwen3-Q8_0.gguf", data: gguf }, { path: "README.md", data: Buffer.from("# tiny\n") }] });
  await hub.addRepo({ id: "test/gated-GGUF", gated: true, files: [{ path: "gated-q8_0.gguf", data: gguf }] });
  await hub.addRepo({ id: "test/bad-sha", files: [{ path: "model-q8_0.gguf", data: gguf, publishSha256: "0".repeat(64) }] });
  const llama = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
  llama.architectures = ["LlamaForCausalLM"];
  llama.model_type = "llama";
  await hub.addRepo({ id: "test/llama", files: [...files.filter((f) => f.path !== "config.json"), { path: "config.json", data: Buffer.from(JSON.stringify(llama)) }] });
});

after(async () => {
  await hub?.close();
  process.env = savedEnv;
  await rm(root, { recursive: true, force: true });
});

describe("references", () => {
  it("parse hf: repositories, revisions, types, GGUF files, URLs and paths", () => {
    assert.deepEqual(parseReference("hf:Qwen/Qwen3-4B-Instruct-2507"), { kind: "hf", repo: "Qwen/Qwen3-4B-Instruct-2507", revision: undefined, file: undefined, type: undefined, text: "hf:Qwen/Qwen3-4B-Instruct-2507" });
    assert.deepEqual(parseReference("hf:Qwen/Qwen3-0.6B@v1.0:q8_0"), { kind: "hf", repo: "Qwen/Qwen3-0.6B", revision: "v1.0", file: undefined, type: "q8_0", text: "hf:Qwen/Qwen3-0.6B@v1.0" });
    assert.deepEqual(parseReference("hf:Qwen/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf"), { kind: "hf", repo: "Qwen/Qwen3-4B-GGUF", revision: undefined, file: "Qwen3-4B-Q4_K_M.gguf", type: undefined, text: "hf:Qwen/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf" });
    assert.equal(parseReference("https://example.com/a/model.gguf").kind, "url");
    assert.deepEqual(parseReference("./models/x.gguf"), { kind: "local", path: "./models/x.gguf" });
    for (const bad of ["hf:Qwen", "hf:Qwen/Qwen3:q9_z", "hf:Qwen/Qwen3/weights.bin", "hf:Qwen/../x", "https://example.com/model.bin"]) {
      assert.throws(() => parseReference(bad), code("ERR_INVALID_REFERENCE"), bad);
    }
  });
});

describe("pull: a safetensors repository, converted while it downloads", () => {
  it("equals the on-disk conversion byte for byte, reading tensors by ranges and storing no weights", async () => {
    hub.clearLog();
    const phases = new Set<string>();
    const r = await pull("hf:test/tiny-qwen3", { type: "q8_0", readAheadBytes: 1, onProgress: (p) => phases.add(p.phase) });
    assert.equal(r.status, "pulled");
    const bytes = await readFile(r.path);
    assert.ok(bytes.equals(reference), "streamed output differs from the on-disk conversion");
    assert.equal(r.entry.sha256, sha256(bytes));
    assert.equal(r.entry.size, bytes.length);
    assert.equal(r.entry.commit, hub.commitOf("test/tiny-qwen3"));
    assert.deepEqual([...phases], ["metadata", "convert"]);
    const weightReads = hub.requests.filter((q) => q.path.endsWith(".safetensors"));
    assert.ok(weightReads.length > 10 && weightReads.every((q) => q.range), "every safetensors read is a range request");
    assert.deepEqual(await modelsDirFiles(), { names: ["index.json", "test--tiny-qwen3--q8_0.gguf"], partial: [] });
  });

  it("a second pull of the same commit transfers nothing; resolveModel returns the local copy without the network", async () => {
    hub.clearLog();
    const r = await pull("hf:test/tiny-qwen3", { type: "q8_0" });
    assert.equal(r.status, "up-to-date");
    assert.ok(hub.requests.every((q) => q.path.startsWith("/api/")), "only the API was asked");
    hub.clearLog();
    assert.equal(await resolveModel("hf:test/tiny-qwen3:q8_0"), r.path);
    assert.equal(await resolveModel("hf:test/tiny-qwen3"), r.path, "without a type: the one local copy");
    assert.equal(hub.requests.length, 0);
  });

  it("connections cut mid-tensor and a 503 are retried; the result is still identical", async () => {
    hub.fault({ match: (p) => p.startsWith("/api/models/test/tiny-qwen3/revision/"), status: 503 });
    hub.fault({ match: (p, range) => p.endsWith("model-00001-of-00003.safetensors") && !!range && !range.startsWith("bytes=0-"), cutAfter: 5000, times: 3 });
    hub.clearLog();
    const r = await pull("hf:test/tiny-qwen3", { type: "q8_0", force: true });
    assert.ok((await readFile(r.path)).equals(reference));
    assert.equal(hub.requests.filter((q) => q.status === 503).length, 1);
    // a resumed range starts where the cut one stopped: some range request begins mid-tensor, 5000 bytes in
    const starts = hub.requests.filter((q) => q.path.includes("/cdn/") && q.range).map((q) => Number(/bytes=(\d+)-/.exec(q.range!)![1]));
    assert.ok(starts.some((s) => starts.includes(s - 5000)), "resumed from the byte reached");
  });

  it("an aborted streamed pull leaves nothing in the models directory", async () => {
    const before = await modelsDirFiles();
    const controller = new AbortController();
    await assert.rejects(pull("hf:test/tiny-qwen3", {
      type: "q4_0", signal: controller.signal,
      onProgress: (p) => p.phase === "convert" && p.bytesDone > 0 && controller.abort(new Error("stop")),
    }), code("ABORT_ERR"));
    assert.deepEqual(await modelsDirFiles(), before);
  });

  it("an unsupported architecture fails from config.json before any weight is fetched", async () => {
    hub.clearLog();
    await assert.rejects(pull("hf:test/llama"), code("ERR_UNSUPPORTED_ARCHITECTURE"));
    assert.ok(!hub.requests.some((q) => q.path.endsWith(".safetensors")), "no safetensors byte was requested");
    assert.ok(!(await modelsDirFiles()).names.some((n) => n.includes("llama")));
  });

  it("an unknown repository fails with ERR_REPO_NOT_FOUND", async () => {
    await assert.rejects(pull("hf:test/no-such-model"), (e: Error & { code?: string }) => e.code === "ERR_REPO_NOT_FOUND" && /test\/no-such-model/.test(e.message));
  });
});

describe("pull: GGUF files", () => {
  it("a GGUF repository: the file for the type, verified against the LFS sha256; a cut mid-file is resumed", async () => {
    hub.fault({ match: (p) => p.endsWith("tiny-qwen3-Q8_0.gguf"), cutAfter: Math.floor(gguf.length / 3) });
    hub.clearLog();
    const r = await pull("hf:test/tiny-qwen3-GGUF", { type: "q8_0" });
    assert.ok((await readFile(r.path)).equals(gguf));
    assert.equal(r.entry.sha256, sha256(gguf));
    const ranges = hub.requests.filter((q) => q.path.startsWith("/cdn/")).map((q) => q.range);
    assert.equal(ranges.length, 2, "one cut, one resumed request");
    const resumedAt = Number(/bytes=(\d+)-/.exec(ranges[1]!)![1]);
    assert.ok(resumedAt <= Math.floor(gguf.length / 3), `resumed at ${resumedAt}, at or before the cut`);
    assert.deepEqual((await modelsDirFiles()).partial, []);
  });

  it("an interrupted pull leaves its partial file and the next pull resumes from it", async () => {
    const ref = "hf:test/tiny-qwen3-GGUF/tiny-qwen3-Q8_0.gguf";
    hub.fault({ match: (p) => p.endsWith("tiny-qwen3-Q8_0.gguf"), cutAfter: 9 * 1024 * 1024 + 17 });
    await withEnv({ QWEN_GGUF_HTTP_ATTEMPTS: "1" }, () => assert.rejects(pull(ref), (e: Error & { code?: string }) => e.code === "ERR_NETWORK" && /pull again to resume/.test(e.message)));
    const { partial } = await modelsDirFiles();
    assert.equal(partial.length, 1);
    const kept = (await stat(join(models, ".partial", partial[0]))).size;
    assert.ok(kept > 0 && kept <= 9 * 1024 * 1024 + 17, `kept ${kept} bytes`);
    hub.clearLog();
    const r = await pull(ref);
    assert.equal(r.resumedFrom, kept);
    assert.deepEqual(hub.requests.filter((q) => q.path.startsWith("/cdn/")).map((q) => q.range), [`bytes=${kept}-`]);
    assert.ok((await readFile(r.path)).equals(gguf));
    assert.deepEqual((await modelsDirFiles()).partial, []);
  });

  it("a wrong sha256 fails with ERR_CHECKSUM_MISMATCH and leaves nothing behind", async () => {
    const before = await modelsDirFiles();
    await assert.rejects(pull("hf:test/bad-sha/model-q8_0.gguf"), (e: Error & { code?: string }) => e.code === "ERR_CHECKSUM_MISMATCH" && /0{64}/.test(e.message));
    assert.deepEqual(await modelsDirFiles(), before);
    assert.ok(!(await listModels()).some((m) => m.ref.includes("bad-sha")));
  });

  it("a second process pulling the same file is refused with ERR_BUSY (no mixed bytes)", async () => {
    const lock = join(models, ".partial", `test--bad-sha--model-q8_0.gguf.${"0".repeat(16)}.part.lock`);
    await mkdir(join(models, ".partial"), { recursive: true });
    await writeFile(lock, String(process.pid)); // a live process holds it
    await assert.rejects(pull("hf:test/bad-sha/model-q8_0.gguf"), (e: Error & { code?: string }) => e.code === "ERR_BUSY" && e.message.includes(String(process.pid)));
    await rm(lock);
  });

  it("a gated repository without a token fails clearly; with HF_TOKEN it downloads", async () => {
    await assert.rejects(pull("hf:test/gated-GGUF:q8_0"), (e: Error & { code?: string }) => e.code === "ERR_REPO_GATED" && /HF_TOKEN/.test(e.message) && /accept/.test(e.message));
    await withEnv({ HF_TOKEN: "hf_wrong" }, () => assert.rejects(pull("hf:test/gated-GGUF:q8_0"), (e: Error & { code?: string }) => e.code === "ERR_REPO_GATED" && /no access/.test(e.message)));
    assert.deepEqual((await modelsDirFiles()).partial, []);
    hub.clearLog();
    const r = await withEnv({ HF_TOKEN: HUB_TOKEN }, () => pull("hf:test/gated-GGUF:q8_0"));
    assert.ok((await readFile(r.path)).equals(gguf));
    assert.ok(hub.requests.filter((q) => q.path.startsWith("/cdn/")).every((q) => !q.auth), "the token is not sent to the redirect target");
  });

  it("an https URL: downloaded as is", async () => {
    const url = await hub.addPlain("plain-q8_0.gguf", { data: gguf });
    const r = await pull(url);
    assert.ok((await readFile(r.path)).equals(gguf));
    assert.equal(await resolveModel(url), r.path);
  });
});

describe("resolveModel and the models directory", () => {
  it("without pull, a reference with no local copy fails and says how to pull; with pull it pulls", async () => {
    await assert.rejects(resolveModel("hf:test/tiny-qwen3:f16"), (e: Error & { code?: string }) =>
      e.code === "ERR_MODEL_NOT_PULLED" && e.message.includes("npx qwen-gguf pull hf:test/tiny-qwen3 --type f16") && e.message.includes("pull: true"));
    const url = await hub.addPlain("resolve-q8_0.gguf", { data: gguf });
    await assert.rejects(resolveModel(url), code("ERR_MODEL_NOT_PULLED"));
    const path = await resolveModel(url, { pull: true });
    assert.ok((await readFile(path)).equals(gguf));
    assert.equal(await resolveModel("./local.gguf"), "./local.gguf", "a path is returned as is");
  });

  it("loadModel(\"hf:…\") without pull says how to pull", async () => {
    await assert.rejects(loadModel("hf:test/tiny-qwen3:f16"), (e: Error & { code?: string }) => e.code === "ERR_MODEL_NOT_PULLED" && /qwen-gguf pull/.test(e.message));
  });

  it("HF_HUB_OFFLINE=1 uses only the local copy", async () => {
    hub.clearLog();
    await withEnv({ HF_HUB_OFFLINE: "1" }, async () => {
      assert.equal(await resolveModel("hf:test/tiny-qwen3:q8_0", { pull: true }), join(models, "test--tiny-qwen3--q8_0.gguf"));
      assert.equal((await pull("hf:test/tiny-qwen3", { type: "q8_0" })).status, "up-to-date");
      await assert.rejects(resolveModel("hf:test/tiny-qwen3:q4_0", { pull: true }), code("ERR_HUB_OFFLINE"));
      await assert.rejects(pull("hf:test/other"), code("ERR_HUB_OFFLINE"));
    });
    assert.equal(hub.requests.length, 0, "no request at all");
  });

  it("a full disk is a coded error before anything is written", async () => {
    await assert.rejects(checkFreeSpace(models, Number.MAX_SAFE_INTEGER, "a test"), code("ERR_DISK_FULL"));
  });

  it("list and rm through the CLI; stale temporaries of killed pulls are swept", async () => {
    const env = { ...process.env };
    const stale = join(models, ".x.gguf.999999999.1.tmp");
    await writeFile(stale, "half");
    const pulled = await runCli(["pull", "hf:test/tiny-qwen3-GGUF:q8_0"], env);
    assert.equal(pulled.status, 0, pulled.stderr);
    assert.match(pulled.stderr, /is up to date/);
    assert.equal(existsSync(stale), false, "the stale temporary was swept");
    const list = await runCli(["list"], env);
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /hf:test\/tiny-qwen3 +q8_0 +15\.6 MiB +main@[0-9a-f]{8}/);
    const removed = await runCli(["rm", "hf:test/tiny-qwen3-GGUF"], env);
    assert.equal(removed.status, 0, removed.stderr);
    assert.match(removed.stdout, /removed hf:test\/tiny-qwen3-GGUF q8_0/);
    assert.ok(!(await listModels()).some((m) => m.ref === "hf:test/tiny-qwen3-GGUF"));
    const chat = await runCli(["chat", "hf:test/tiny-qwen3-GGUF"], env);
    assert.equal(chat.status, 1);
    assert.match(chat.stderr, /not in .* pull it first with `npx qwen-gguf pull hf:test\/tiny-qwen3-GGUF`.*--pull.*ERR_MODEL_NOT_PULLED/s);
    assert.deepEqual(await removeModel("hf:test/never-pulled"), []);
  });
});
