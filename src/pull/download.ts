/**
 * Resumable, verified file downloads: bytes go to `<models>/.partial/<name>.<content id>.part`, a request resumes
 * from the partial file's size with `Range`, the content is hashed on the way (sha256 of LFS files, git's blob sha1
 * of small files) and checked against what the hub publishes, and only a verified, complete file is renamed into
 * the models directory. A cut connection is retried from the byte reached; an interrupted pull leaves the partial
 * file for the next one. A checksum mismatch or a full disk removes it.
 */
import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, readFile, rename, stat, unlink, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { checkFreeSpace } from "../convert/convert.js";
import { abortError, QwenError } from "../errors.js";
import { readGguf } from "../gguf.js";
import { Hub, RetryableError, requestFollowing, type RemoteFile, type RequestContext } from "./hub.js";

export interface Expected {
  /** sha256 hex (an LFS oid). */
  sha256?: string;
  /** git blob sha1 hex (a small file's oid in the hub's tree listing). */
  gitSha1?: string;
}

export interface DownloadOptions {
  ctx: RequestContext;
  expected: Expected;
  /** Directory of partial files, and the partial file's name (stable across runs so that a pull resumes). */
  partialDir: string;
  partialName: string;
  signal?: AbortSignal;
  onBytes?: (done: number, total: number) => void;
  /** Checks the finished file before it is renamed into place (e.g. that it is a GGUF). */
  validate?: (path: string) => Promise<void>;
}

const STAGING = 8 * 1024 * 1024;

function newHashes(expected: Expected, size: number) {
  const sha256 = createHash("sha256");
  const sha1 = expected.gitSha1 ? createHash("sha1").update(`blob ${size}\0`) : undefined;
  return { sha256, sha1, update(b: Uint8Array) { sha256.update(b); sha1?.update(b); } };
}

async function hashPrefix(path: string, bytes: number, h: { update(b: Uint8Array): void }) {
  if (bytes === 0) return;
  for await (const chunk of createReadStream(path, { start: 0, end: bytes - 1, highWaterMark: 4 * 1024 * 1024 })) h.update(chunk as Buffer);
}

/** Downloads `file` to `dest` (atomically); returns its sha256. */
export async function downloadVerified(hub: Hub, file: RemoteFile, dest: string, o: DownloadOptions): Promise<{ sha256: string; size: number; resumedFrom: number }> {
  await mkdir(o.partialDir, { recursive: true });
  const partial = join(o.partialDir, o.partialName);
  const releaseLock = await lockPartial(`${partial}.lock`);
  try {
    return await download(hub, file, dest, o, partial);
  } finally {
    await releaseLock();
  }
}

/** One process at a time per partial file: a second pull of the same file fails with ERR_BUSY instead of mixing bytes. */
async function lockPartial(lock: string): Promise<() => Promise<void>> {
  for (let attempt = 0; ; attempt++) {
    try {
      const fh = await open(lock, "wx");
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => unlink(lock).catch(() => undefined);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw err;
      const pid = Number(await readFile(lock, "utf8").catch(() => ""));
      let alive = false;
      try {
        if (pid > 0) process.kill(pid, 0);
        alive = pid > 0;
      } catch (e) {
        alive = (e as NodeJS.ErrnoException).code === "EPERM";
      }
      if (alive) throw new QwenError("ERR_BUSY", `another qwen-gguf process (pid ${pid}) is downloading this file (${lock}); wait for it to finish`);
      await unlink(lock).catch(() => undefined); // left by a process that died: take it over
    }
  }
}

async function download(hub: Hub, file: RemoteFile, dest: string, o: DownloadOptions, partial: string): Promise<{ sha256: string; size: number; resumedFrom: number }> {
  let pos = await stat(partial).then((s) => s.size, () => 0);
  if (pos > file.size) pos = 0;
  const resumedFrom = pos;
  let fh: FileHandle | undefined;
  let keepPartial = true;
  try {
    await checkFreeSpace(o.partialDir, file.size - pos, `downloading ${file.path}`);
    fh = await open(partial, pos > 0 ? "r+" : "w");
    if (pos === 0) await fh.truncate(0);
    let hashes = newHashes(o.expected, file.size);
    await hashPrefix(partial, pos, hashes);
    o.onBytes?.(pos, file.size);
    const staging = Buffer.allocUnsafe(STAGING);
    let staged = 0;
    const flush = async () => {
      if (staged === 0) return;
      hashes.update(staging.subarray(0, staged));
      await fh!.write(staging, 0, staged, pos);
      pos += staged;
      staged = 0;
      o.onBytes?.(pos, file.size);
    };
    let before = pos;
    await hub.retry(`downloading ${o.ctx.repo ? `${o.ctx.repo}/` : ""}${file.path}`, async () => {
      before = pos;
      if (pos >= file.size) return;
      const res = await requestFollowing(hub, file, { headers: { range: `bytes=${pos}-` }, signal: o.signal }, o.ctx);
      if (res.status === 206) {
        const m = /^bytes (\d+)-/.exec(res.headers.get("content-range") ?? "");
        if (!m || Number(m[1]) !== pos) {
          await res.body?.cancel().catch(() => undefined);
          throw new QwenError("ERR_HUB_RESPONSE", `${file.path}: asked for bytes from ${pos}, got Content-Range ${JSON.stringify(res.headers.get("content-range"))}`);
        }
      } else if (pos > 0) {
        // the server ignored Range: start over from its first byte
        pos = 0;
        before = 0;
        await fh!.truncate(0);
        hashes = newHashes(o.expected, file.size);
      }
      const reader = res.body!.getReader();
      try {
        for (;;) {
          let r: Awaited<ReturnType<typeof reader.read>>;
          try {
            r = await reader.read();
          } catch (err) {
            if (o.signal?.aborted) throw abortError(o.signal);
            throw new RetryableError(`${file.path}: connection lost at byte ${pos + staged} of ${file.size} (${(err as Error).message})`, undefined, { cause: err });
          }
          if (r.done) break;
          let chunk = r.value;
          if (pos + staged + chunk.length > file.size) throw new QwenError("ERR_HUB_RESPONSE", `${file.path}: the server sent more than the ${file.size} bytes the hub lists`);
          while (chunk.length > 0) {
            const n = Math.min(chunk.length, STAGING - staged);
            staging.set(chunk.subarray(0, n), staged);
            staged += n;
            chunk = chunk.subarray(n);
            if (staged === STAGING) await flush();
          }
        }
      } finally {
        await flush(); // bytes received before a cut are good: keep them
        reader.releaseLock();
      }
      if (pos < file.size) throw new RetryableError(`${file.path}: the response ended at byte ${pos} of ${file.size}`);
    }, o.signal, () => pos > before);
    await fh.close();
    fh = undefined;
    const sha256 = hashes.sha256.digest("hex");
    const sha1 = hashes.sha1?.digest("hex");
    const mismatch = o.expected.sha256 && sha256 !== o.expected.sha256.toLowerCase() ? `sha256 ${sha256}, the hub publishes ${o.expected.sha256}`
      : o.expected.gitSha1 && sha1 !== o.expected.gitSha1.toLowerCase() ? `git blob sha1 ${sha1}, the hub publishes ${o.expected.gitSha1}` : undefined;
    if (mismatch) {
      keepPartial = false;
      throw new QwenError("ERR_CHECKSUM_MISMATCH", `${o.ctx.repo ? `${o.ctx.repo}/` : ""}${file.path}: the downloaded file has ${mismatch}; it was deleted (pull again to retry)`);
    }
    if (o.validate) {
      try {
        await o.validate(partial);
      } catch (err) {
        keepPartial = false;
        throw err;
      }
    }
    await rename(partial, dest);
    keepPartial = true; // nothing left to keep
    return { sha256, size: file.size, resumedFrom };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ENOSPC" || (err instanceof QwenError && err.code === "ERR_DISK_FULL")) {
      keepPartial = false;
      if (!(err instanceof QwenError)) throw new QwenError("ERR_DISK_FULL", `downloading ${file.path} to ${o.partialDir} failed: the disk is full; the partial file was deleted`, { cause: err });
    }
    if (err instanceof QwenError && (err.code === "ERR_NETWORK" || err.code === "ABORT_ERR")) {
      err.message += ` (the ${pos} bytes received are kept: pull again to resume)`;
    }
    if (!(err instanceof QwenError)) throw new QwenError("ERR_OUTPUT_WRITE", `downloading ${file.path} to ${partial} failed: ${e.message}`, { cause: err });
    throw err;
  } finally {
    await fh?.close().catch(() => undefined);
    // an empty partial file (the first request failed) is not worth keeping
    if (!keepPartial || (await stat(partial).then((s) => s.size === 0, () => false))) await unlink(partial).catch(() => undefined);
  }
}

/** Checks that a downloaded file is a GGUF whose header reads. */
export async function validateGguf(path: string): Promise<void> {
  await readGguf(path);
}
