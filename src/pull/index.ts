/**
 * `pull`: a model reference to a local GGUF. A Hugging Face safetensors repository is converted while it downloads
 * (tensor byte ranges fetched as the converter needs them, never stored); a GGUF (in a repository or at a URL) is
 * downloaded as is, resumably and verified. `resolveModel` is what loadModel, chat and serve call: the local copy
 * when there is one, a pull only when asked.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import type { ListFileEntry } from "@huggingface/hub";
import { convertCheckpoint } from "../convert/convert.js";
import { OUTPUT_TYPES, parseTensorTypeOverride, type OutputType } from "../convert/plan.js";
import { QwenError } from "../errors.js";
import { checkBool, checkFunction, checkInt, checkOneOf, checkSignal, checkStringList, optionalObject } from "../validate.js";
import { downloadVerified, validateGguf } from "./download.js";
import { Hub, RetryableError, type RemoteFile } from "./hub.js";
import { parseReference, type Reference } from "./reference.js";
import { RemoteCheckpoint } from "./remote.js";
import { fileNameFor, listModels, modelsDir, PARTIAL_DIR, readIndex, removeEntries, sweepTemporaries, updateIndex, type ModelEntry } from "./store.js";

export { isReference, parseReference, type Reference } from "./reference.js";
export { listModels, modelsDir, partialFiles, removePartials, type ModelEntry } from "./store.js";
export { hubSettings, type HubSettings } from "./hub.js";

export const DEFAULT_PULL_TYPE: OutputType = "q4_k_m";

export interface PullProgress {
  ref: string;
  /** "metadata": repository info and small files; "convert": tensors streamed into the converter; "download": a GGUF. */
  phase: "metadata" | "convert" | "download";
  file?: string;
  /** GGUF tensor being written (convert). */
  tensor?: string;
  /** Bytes received of bytesTotal (for convert: tensor bytes of all shards). */
  bytesDone: number;
  bytesTotal: number;
}

export interface PullOptions {
  /** Output type of a conversion, or which GGUF of a GGUF repository. Default q4_k_m (or the reference's `:type`). */
  type?: OutputType;
  /** llama-quantize `--tensor-type` overrides for a conversion. */
  tensorTypes?: string[];
  /** Quantization threads. Default: the CPUs available. */
  threads?: number;
  /** Pull again even when the local copy is of the current commit. */
  force?: boolean;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
  /** Tensor bytes fetched ahead of the converter at most. Default 96 MiB. */
  readAheadBytes?: number;
  /** Parallel range requests while converting. Default 4. */
  connections?: number;
}

export interface PullResult {
  /** Absolute path of the local GGUF. */
  path: string;
  entry: ModelEntry;
  /** "pulled": fetched now; "up-to-date": the local copy already matched (no transfer). */
  status: "pulled" | "up-to-date";
  /** For a download: the bytes a previous, interrupted pull had already fetched. */
  resumedFrom?: number;
}

export interface ResolveOptions extends Omit<PullOptions, "force"> {
  /** Pull when there is no local copy. Default false: a reference without a local copy is an error saying how to pull. */
  pull?: boolean;
}

function checkPullOptions(options: PullOptions | undefined) {
  const o = optionalObject<PullOptions>("options", options);
  if (o.type !== undefined) checkOneOf("type", o.type, OUTPUT_TYPES, DEFAULT_PULL_TYPE);
  const tensorTypes = checkStringList("tensorTypes", o.tensorTypes);
  tensorTypes.forEach(parseTensorTypeOverride);
  return {
    type: o.type as OutputType | undefined, tensorTypes,
    threads: checkInt("threads", o.threads, availableParallelism(), 1, 1024),
    force: checkBool("force", o.force, false),
    onProgress: checkFunction<(p: PullProgress) => void>("onProgress", o.onProgress),
    signal: checkSignal("signal", o.signal),
    readAheadBytes: checkInt("readAheadBytes", o.readAheadBytes, 96 * 1024 * 1024, 1, Number.MAX_SAFE_INTEGER),
    connections: checkInt("connections", o.connections, 4, 1, 64),
  };
}

const sameList = (a: string[] | undefined, b: string[] | undefined) => (a ?? []).join("\n") === (b ?? []).join("\n");

/** The local entry a reference names: with a type, exactly that one; without, q4_k_m, else the latest pulled. */
function findEntry(models: ModelEntry[], ref: Reference, type: OutputType | undefined, tensorTypes: string[] | undefined): ModelEntry | undefined {
  if (ref.kind === "local") return undefined;
  const dir = modelsDir();
  const candidates = models.filter((m) => m.ref === ref.text && existsSync(join(dir, m.file)));
  if (ref.kind === "url" || (ref.kind === "hf" && ref.file)) return candidates[0];
  const wanted = type ?? ref.type;
  if (wanted || tensorTypes?.length) return candidates.find((m) => m.type === (wanted ?? DEFAULT_PULL_TYPE) && sameList(m.tensorTypes, tensorTypes));
  return candidates.find((m) => m.type === DEFAULT_PULL_TYPE && !m.tensorTypes?.length) ??
    [...candidates].sort((a, b) => b.date.localeCompare(a.date))[0];
}

function howToPull(text: string, type: OutputType | undefined): string {
  const t = type ? ` --type ${type}` : "";
  return `pull it first with \`npx qwen-gguf pull ${text}${t}\`, or pass { pull: true } to loadModel (--pull to chat and serve)`;
}

/**
 * The local GGUF path for a reference: a local path as is; a pulled model's file; otherwise a pull when `pull` is
 * set, else ERR_MODEL_NOT_PULLED (ERR_HUB_OFFLINE under HF_HUB_OFFLINE) saying how to pull it.
 */
export async function resolveModel(ref: string, options: ResolveOptions = {}): Promise<string> {
  const parsed = parseReference(ref);
  if (parsed.kind === "local") return parsed.path;
  const o = optionalObject<ResolveOptions>("options", options);
  const pullIt = checkBool("pull", o.pull, false);
  const checked = checkPullOptions({ ...o, pull: undefined } as PullOptions);
  const entry = findEntry(await readIndex(), parsed, checked.type, checked.tensorTypes);
  if (entry) return join(modelsDir(), entry.file);
  const type = checked.type ?? (parsed.kind === "hf" ? parsed.type : undefined);
  if (new Hub().settings.offline) {
    throw new QwenError("ERR_HUB_OFFLINE", `${parsed.text} has no local copy in ${modelsDir()} and HF_HUB_OFFLINE is set: unset it and ${howToPull(parsed.text, type)}`);
  }
  if (!pullIt) throw new QwenError("ERR_MODEL_NOT_PULLED", `${parsed.text} is not in ${modelsDir()}: ${howToPull(parsed.text, type)}`);
  return (await pull(ref, { ...o, force: false })).path;
}

/** Fetches a model (converting a safetensors repository on the fly) into the models directory. */
export async function pull(ref: string, options: PullOptions = {}): Promise<PullResult> {
  const parsed = parseReference(ref);
  if (parsed.kind === "local") throw new QwenError("ERR_INVALID_REFERENCE", `${ref} is a local path; pull takes hf:owner/repo[@revision], hf:owner/repo/file.gguf or an https://…/file.gguf URL`);
  const o = checkPullOptions(options);
  const hub = new Hub();
  const dir = modelsDir();
  if (hub.settings.offline) {
    const entry = findEntry(await readIndex(dir), parsed, o.type, o.tensorTypes);
    if (entry && !o.force) return { path: join(dir, entry.file), entry, status: "up-to-date" };
    throw new QwenError("ERR_HUB_OFFLINE", `HF_HUB_OFFLINE is set and ${parsed.text} has no local copy in ${dir}`);
  }
  await mkdir(dir, { recursive: true });
  await sweepTemporaries(dir);
  return parsed.kind === "url" ? pullUrl(hub, parsed, o, dir) : pullHf(hub, parsed, o, dir);
}

type Checked = ReturnType<typeof checkPullOptions>;

async function record(entry: ModelEntry, dir: string): Promise<ModelEntry> {
  await updateIndex((models) => [
    ...models.filter((m) => !(m.ref === entry.ref && m.file === entry.file) && !(m.ref === entry.ref && m.type === entry.type && sameList(m.tensorTypes, entry.tensorTypes) && !entry.path && !m.path)),
    entry,
  ], dir);
  return entry;
}

function resolveUrl(endpoint: string, repo: string, commit: string, path: string) {
  return `${endpoint}/${repo}/resolve/${encodeURIComponent(commit)}/${path.split("/").map(encodeURIComponent).join("/")}`;
}

/** Chooses the GGUF of a GGUF-only repository for `type` (file names carry the type, e.g. Qwen3-4B-Q4_K_M.gguf). */
function chooseGguf(repo: string, files: string[], type: OutputType | undefined): string {
  const ggufs = files.filter((f) => /\.gguf$/i.test(f) && !/-\d{5}-of-\d{5}\.gguf$/i.test(f));
  if (ggufs.length === 0) {
    throw new QwenError("ERR_HUB_NO_WEIGHTS", `${repo} has neither safetensors weights (model.safetensors or model.safetensors.index.json) nor a single-file GGUF`);
  }
  if (!type && ggufs.length === 1) return ggufs[0];
  const t = type ?? DEFAULT_PULL_TYPE;
  const norm = (s: string) => s.toLowerCase().replace(/-/g, "_");
  const match = ggufs.filter((f) => norm(f.split("/").pop()!).includes(t));
  if (match.length >= 1) return match.sort((a, b) => a.length - b.length)[0];
  throw new QwenError("ERR_HUB_FILE_NOT_FOUND", `${repo} has no GGUF file for type ${t}; it has: ${ggufs.join(", ")} (name one: hf:${repo}/<file>.gguf)`);
}

async function pullHf(hub: Hub, ref: Extract<Reference, { kind: "hf" }>, o: Checked, dir: string): Promise<PullResult> {
  const { repo } = ref;
  const hubUrl = hub.settings.endpoint;
  const report = (p: Omit<PullProgress, "ref">) => o.onProgress?.({ ref: ref.text, ...p });
  report({ phase: "metadata", bytesDone: 0, bytesTotal: 0 });
  const { listFiles, modelInfo } = await import("@huggingface/hub"); // loaded only when pulling
  const api = hub.fetchFor({ repo, repoLevel: true }, o.signal);
  const info = await modelInfo({ name: repo, revision: ref.revision ?? "main", additionalFields: ["sha"], hubUrl, fetch: api });
  const commit = info.sha;
  if (typeof commit !== "string" || !commit) throw new QwenError("ERR_HUB_RESPONSE", `${hubUrl}: the model info of ${repo} has no commit sha`);
  const listing = new Map<string, ListFileEntry>();
  for await (const e of listFiles({ repo: { type: "model", name: repo }, revision: commit, recursive: true, hubUrl, fetch: api })) {
    if (e.type === "file") listing.set(e.path, e);
  }
  const remote = (path: string): RemoteFile => {
    const e = listing.get(path)!;
    return { path, size: e.lfs?.size ?? e.size, sha256: e.lfs?.oid, url: resolveUrl(hubUrl, repo, commit, path) };
  };
  const existing = await readIndex(dir);
  const upToDate = (entry: ModelEntry | undefined) =>
    entry && entry.commit === commit && !o.force ? { path: join(dir, entry.file), entry, status: "up-to-date" as const } : undefined;

  let ggufPath = ref.file;
  const type = o.type ?? ref.type;
  const safetensors = listing.has("model.safetensors") || listing.has("model.safetensors.index.json");
  if (ggufPath) {
    if (!listing.has(ggufPath)) throw new QwenError("ERR_HUB_FILE_NOT_FOUND", `${repo}@${ref.revision ?? "main"} has no file ${ggufPath}`);
  } else if (!safetensors) {
    ggufPath = chooseGguf(repo, [...listing.keys()], type);
  }

  if (ggufPath) {
    const chosenByType = !ref.file;
    const found = findEntry(existing, ref, chosenByType ? type ?? DEFAULT_PULL_TYPE : undefined, undefined);
    const done = upToDate(found && found.path === ggufPath ? found : undefined);
    if (done) return done;
    const file = remote(ggufPath);
    const base = { repo, revision: ref.revision ?? "main", path: ggufPath, source: "downloaded" as const, type: chosenByType ? type ?? DEFAULT_PULL_TYPE : undefined };
    const name = fileNameFor(base);
    const e = listing.get(ggufPath)!;
    const id = (e.lfs?.oid ?? e.oid ?? commit).slice(0, 16);
    const result = await downloadVerified(hub, file, join(dir, name), {
      ctx: { repo, file: ggufPath }, expected: e.lfs ? { sha256: e.lfs.oid } : e.oid ? { gitSha1: e.oid } : {},
      partialDir: join(dir, PARTIAL_DIR), partialName: `${name}.${id}.part`, signal: o.signal, validate: validateGguf,
      onBytes: (done, total) => report({ phase: "download", file: ggufPath, bytesDone: done, bytesTotal: total }),
    });
    const entry = await record({ ...base, ref: ref.text, file: name, commit, size: result.size, sha256: result.sha256, date: new Date().toISOString() }, dir);
    return { path: join(dir, name), entry, status: "pulled", resumedFrom: result.resumedFrom };
  }

  // a safetensors repository: convert while downloading
  const outType = type ?? DEFAULT_PULL_TYPE;
  const done = upToDate(findEntry(existing, ref, outType, o.tensorTypes));
  if (done) return done;
  const wanted = ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors.index.json", "model.safetensors"];
  const files = new Map<string, RemoteFile>();
  for (const path of listing.keys()) if (wanted.includes(path) || /\.safetensors$/.test(path)) files.set(path, remote(path));
  const bytesTotal = [...files.values()].filter((f) => f.path.endsWith(".safetensors")).reduce((n, f) => n + f.size, 0);
  let bytesDone = 0;
  let tensor: string | undefined;
  const source = new RemoteCheckpoint(hub, files, repo.split("/")[1], { repo, label: `hf:${repo}@${commit.slice(0, 8)}` }, {
    signal: o.signal, readAheadBytes: o.readAheadBytes, connections: o.connections,
    onBytes: (n) => {
      bytesDone += n;
      report({ phase: "convert", tensor, bytesDone, bytesTotal });
    },
    fetchWhole: (f) => fetchWhole(hub, repo, commit, f, o.signal),
  });
  const base = { repo, revision: ref.revision ?? "main", source: "converted" as const, type: outType, tensorTypes: o.tensorTypes.length ? o.tensorTypes : undefined };
  const name = fileNameFor(base);
  const hash = createHash("sha256");
  const result = await convertCheckpoint(source, {
    out: join(dir, name), type: outType, tensorTypes: o.tensorTypes, threads: o.threads, force: true, signal: o.signal,
    onWrite: (chunk) => hash.update(chunk),
    onProgress: (p) => {
      tensor = p.tensor;
    },
  });
  report({ phase: "convert", bytesDone: bytesTotal, bytesTotal });
  const entry = await record({ ...base, ref: ref.text, file: name, commit, size: result.bytes, sha256: hash.digest("hex"), date: new Date().toISOString() }, dir);
  return { path: join(dir, name), entry, status: "pulled" };
}

/** A small file, whole, with @huggingface/hub's downloadFile (through our fetch: auth, retries, coded errors). */
async function fetchWhole(hub: Hub, repo: string, commit: string, f: RemoteFile, signal?: AbortSignal): Promise<Buffer> {
  const ctx = { repo, file: f.path };
  const { downloadFile, HubApiError, InvalidApiResponseFormatError } = await import("@huggingface/hub");
  return hub.retry(`downloading ${repo}/${f.path}`, async () => {
    try {
      const blob = await downloadFile({ repo: { type: "model", name: repo }, path: f.path, revision: commit, hubUrl: hub.settings.endpoint, fetch: hub.fetchFor(ctx, signal), xet: false });
      if (!blob) throw new QwenError("ERR_HUB_FILE_NOT_FOUND", `${repo}: file ${f.path} was not found`);
      const bytes = Buffer.from(await blob.arrayBuffer());
      if (bytes.length !== f.size) throw new RetryableError(`${repo}/${f.path}: received ${bytes.length} of ${f.size} bytes`);
      return bytes;
    } catch (err) {
      if (err instanceof QwenError || err instanceof RetryableError) throw err;
      if (err instanceof HubApiError || err instanceof InvalidApiResponseFormatError) throw new QwenError("ERR_HUB_RESPONSE", `${repo}/${f.path}: ${err.message}`, { cause: err });
      throw new RetryableError(`${repo}/${f.path}: ${(err as Error).message}`, undefined, { cause: err }); // a body cut mid-way
    }
  }, signal);
}

async function pullUrl(hub: Hub, ref: Extract<Reference, { kind: "url" }>, o: Checked, dir: string): Promise<PullResult> {
  const existing = findEntry(await readIndex(dir), ref, undefined, undefined);
  if (existing && !o.force) return { path: join(dir, existing.file), entry: existing, status: "up-to-date" };
  // probe: size from Content-Range, and the sha256 when the server is the hub (X-Linked-ETag of an LFS file)
  const file: RemoteFile = { path: new URL(ref.url).pathname.split("/").pop()!, size: 0, url: ref.url };
  const probe = await hub.retry(`GET ${ref.url}`, () => hub.request(ref.url, { headers: { range: "bytes=0-0" }, signal: o.signal }, { file: file.path }), o.signal);
  await probe.body?.cancel().catch(() => undefined);
  if (probe.redirected) file.location = probe.url;
  const total = probe.status === 206 ? Number(/\/(\d+)$/.exec(probe.headers.get("content-range") ?? "")?.[1]) : Number(probe.headers.get("content-length"));
  if (!Number.isSafeInteger(total) || total <= 0) throw new QwenError("ERR_HUB_RESPONSE", `${ref.url}: the server gives no file size`);
  file.size = total;
  const etag = (probe.headers.get("x-linked-etag") ?? probe.headers.get("etag") ?? "").replace(/^W\//, "").replace(/"/g, "");
  const sha256 = /^[0-9a-f]{64}$/i.test(etag) ? etag.toLowerCase() : undefined;
  const base = { url: ref.url, source: "downloaded" as const };
  const name = fileNameFor(base);
  const id = createHash("sha256").update(`${ref.url}\n${etag}\n${total}`).digest("hex").slice(0, 16);
  const result = await downloadVerified(hub, file, join(dir, name), {
    ctx: { file: ref.url }, expected: { sha256 }, partialDir: join(dir, PARTIAL_DIR), partialName: `${name}.${id}.part`, signal: o.signal,
    validate: validateGguf, onBytes: (done, t) => o.onProgress?.({ ref: ref.text, phase: "download", file: file.path, bytesDone: done, bytesTotal: t }),
  });
  const entry = await record({ ...base, ref: ref.text, file: name, size: result.size, sha256: result.sha256, date: new Date().toISOString() }, dir);
  return { path: join(dir, name), entry, status: "pulled", resumedFrom: result.resumedFrom };
}

/** Removes local copies of a reference (all types, or one), or the entry whose file name is `ref`. */
export async function removeModel(ref: string, options: { type?: OutputType } = {}): Promise<ModelEntry[]> {
  const o = optionalObject<{ type?: OutputType }>("options", options);
  const type = o.type === undefined ? undefined : checkOneOf("type", o.type, OUTPUT_TYPES, DEFAULT_PULL_TYPE);
  if (!/^(hf:|https?:\/\/)/i.test(ref)) return removeEntries((m) => m.file === ref);
  const parsed = parseReference(ref);
  const text = parsed.kind === "local" ? ref : parsed.text;
  const t = type ?? (parsed.kind === "hf" ? parsed.type : undefined);
  return removeEntries((m) => m.ref === text && (t === undefined || m.type === t));
}

