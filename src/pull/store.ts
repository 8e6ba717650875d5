/**
 * The models directory (XDG cache by default, QWEN_GGUF_MODELS to move it) and its index.json: one entry per local
 * model with the reference it came from, the revision and commit, the type, size, sha256 and date. Every write is a
 * temporary file renamed into place, under a lock file so that two processes pulling at once do not lose entries.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import { QwenError } from "../errors.js";

export interface ModelEntry {
  /** The reference as pulled, normalized: hf:owner/repo[@revision][/file.gguf] or a URL. */
  ref: string;
  /** File name in the models directory. */
  file: string;
  /** How it was made: converted from safetensors while downloading, or a GGUF downloaded as is. */
  source: "converted" | "downloaded";
  repo?: string;
  /** The revision asked for (default "main"). */
  revision?: string;
  /** The commit it resolved to. */
  commit?: string;
  /** For a GGUF from the hub: its path in the repository. */
  path?: string;
  url?: string;
  /** Output type of a conversion (q4_k_m…), or the type a GGUF file was chosen for. */
  type?: string;
  /** --tensor-type overrides of a conversion. */
  tensorTypes?: string[];
  size: number;
  sha256: string;
  /** ISO date of the pull. */
  date: string;
}

interface IndexFile {
  version: 1;
  models: ModelEntry[];
}

export function modelsDir(): string {
  const env = process.env;
  if (env.QWEN_GGUF_MODELS) return resolve(env.QWEN_GGUF_MODELS);
  return join(env.XDG_CACHE_HOME ? resolve(env.XDG_CACHE_HOME) : join(homedir(), ".cache"), "qwen-gguf", "models");
}

export const PARTIAL_DIR = ".partial";
const INDEX = "index.json";

export async function readIndex(dir = modelsDir()): Promise<ModelEntry[]> {
  let text: string;
  try {
    text = await readFile(join(dir, INDEX), "utf8");
  } catch {
    return [];
  }
  try {
    const parsed = JSON.parse(text) as IndexFile;
    return Array.isArray(parsed.models) ? parsed.models.filter((m) => m && typeof m.ref === "string" && typeof m.file === "string") : [];
  } catch {
    return []; // a damaged index is rebuilt by the next pull; the model files themselves are untouched
  }
}

async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const lock = join(dir, "index.lock");
  const started = Date.now();
  for (;;) {
    try {
      const fh = await open(lock, "wx");
      await fh.writeFile(String(process.pid));
      await fh.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      // a lock older than 30 s belongs to a process that died while holding it (writes take milliseconds)
      const age = await stat(lock).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > 30_000) await unlink(lock).catch(() => undefined);
      else if (Date.now() - started > 60_000) throw new QwenError("ERR_OUTPUT_WRITE", `${lock} has been held for a minute; remove it if no qwen-gguf is running`);
      else await new Promise((r) => setTimeout(r, 25));
    }
  }
  try {
    return await fn();
  } finally {
    await unlink(lock).catch(() => undefined);
  }
}

/** Reads, changes and writes the index atomically. */
export async function updateIndex(change: (models: ModelEntry[]) => ModelEntry[], dir = modelsDir()): Promise<ModelEntry[]> {
  await mkdir(dir, { recursive: true });
  return withLock(dir, async () => {
    const models = change(await readIndex(dir));
    const temp = join(dir, `.${INDEX}.${process.pid}.${Date.now()}.tmp`);
    try {
      await writeFile(temp, JSON.stringify({ version: 1, models } satisfies IndexFile, null, 2) + "\n");
      await rename(temp, join(dir, INDEX));
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      const e = err as NodeJS.ErrnoException;
      throw new QwenError(e.code === "ENOSPC" ? "ERR_DISK_FULL" : "ERR_OUTPUT_WRITE", `writing ${join(dir, INDEX)} failed: ${e.message}`, { cause: err });
    }
    return models;
  });
}

const safe = (s: string) => s.replace(/[^A-Za-z0-9._@-]+/g, "_");

/** The file name a model gets in the models directory. */
export function fileNameFor(e: Pick<ModelEntry, "repo" | "revision" | "path" | "url" | "type" | "tensorTypes" | "source">): string {
  if (e.url) {
    const u = new URL(e.url);
    const hash = createHash("sha256").update(e.url).digest("hex").slice(0, 8);
    return `url--${safe(u.hostname)}--${safe(basename(u.pathname).replace(/\.gguf$/i, ""))}-${hash}.gguf`;
  }
  const repo = e.repo!.split("/").map(safe).join("--");
  const rev = e.revision && e.revision !== "main" ? `@${safe(e.revision)}` : "";
  if (e.path) return `${repo}${rev}--${e.path.split("/").map(safe).join("--")}`;
  const overrides = e.tensorTypes?.length ? `-tt${createHash("sha256").update(e.tensorTypes.join("\n")).digest("hex").slice(0, 8)}` : "";
  return `${repo}${rev}--${e.type}${overrides}.gguf`;
}

/** Removes files a killed process left behind: converter temporaries (".name.<pid>.<time>.tmp") whose process is gone. */
export async function sweepTemporaries(dir = modelsDir()): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^\..+\.(\d+)\.\d+\.tmp$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch (err) {
      alive = (err as NodeJS.ErrnoException).code === "EPERM";
    }
    if (!alive) await unlink(join(dir, name)).catch(() => undefined);
  }
}

export async function partialFiles(dir = modelsDir()): Promise<{ name: string; size: number }[]> {
  try {
    const names = await readdir(join(dir, PARTIAL_DIR));
    return Promise.all(names.map(async (name) => ({ name, size: (await stat(join(dir, PARTIAL_DIR, name))).size })));
  } catch {
    return [];
  }
}

/** Deletes the partial downloads (interrupted pulls that would otherwise resume); returns their total size. */
export async function removePartials(dir = modelsDir()): Promise<number> {
  const parts = (await partialFiles(dir)).filter((p) => !p.name.endsWith(".lock"));
  for (const p of parts) await rm(join(dir, PARTIAL_DIR, p.name), { force: true });
  return parts.reduce((n, p) => n + p.size, 0);
}

/** Local models, each with its absolute path and whether the file is still there. */
export async function listModels(): Promise<(ModelEntry & { filePath: string; present: boolean })[]> {
  const dir = modelsDir();
  return (await readIndex(dir)).map((m) => ({ ...m, filePath: join(dir, m.file), present: existsSync(join(dir, m.file)) }));
}

/** Deletes entries (and their files); returns what was removed. */
export async function removeEntries(match: (m: ModelEntry) => boolean): Promise<ModelEntry[]> {
  const dir = modelsDir();
  if (!existsSync(join(dir, INDEX))) return [];
  const removed: ModelEntry[] = [];
  await updateIndex((models) => models.filter((m) => {
    if (!match(m)) return true;
    removed.push(m);
    return false;
  }), dir);
  const kept = new Set((await readIndex(dir)).map((m) => m.file));
  for (const m of removed) if (!kept.has(m.file)) await rm(join(dir, m.file), { force: true });
  const partials = await partialFiles(dir);
  for (const m of removed) for (const p of partials) if (p.name.startsWith(`${m.file}.`) && !p.name.endsWith(".lock")) await rm(join(dir, PARTIAL_DIR, p.name), { force: true });
  return removed;
}
