/**
 * Where a checkpoint's bytes come from. The converter reads through this interface only, so the same code converts a
 * directory on disk (`DirectorySource`) or a Hugging Face repository read with HTTP range requests (src/pull/remote.ts).
 */
import { open, readFile, stat, type FileHandle } from "node:fs/promises";
import { basename, join } from "node:path";
import { QwenError } from "../errors.js";

/** One read the converter will make: `bytes` bytes of `file` from `start`. */
export interface ByteRange {
  file: string;
  start: number;
  bytes: number;
}

export interface CheckpointSource {
  /** The default `general.name` (a directory's or repository's name). */
  readonly name: string;
  /** How a file of the checkpoint is named in messages (a path or a URL). */
  describe(file: string): string;
  /** A whole (small) file, or undefined when the checkpoint has none by that name. */
  readFile(file: string): Promise<Buffer | undefined>;
  /** A file's size in bytes, or undefined when the checkpoint has none by that name. */
  size(file: string): Promise<number | undefined>;
  /**
   * Reads exactly `bytes` bytes of `file` at `position`. Returns a buffer holding them: the start of `into`, or a
   * buffer of the source's own, which stays valid until it is passed to `release`.
   */
  read(file: string, position: number, bytes: number, into: Buffer): Promise<Buffer>;
  /** Gives back a buffer `read` returned, once its bytes are no longer needed. */
  release?(buffer: Buffer): void;
  /** The reads the converter is about to make, in order, so a remote source can fetch ahead (bounded). */
  plan?(reads: ByteRange[]): void;
  close(): Promise<void>;
}

/** A checkpoint directory on disk; each shard stays open once opened. */
export class DirectorySource implements CheckpointSource {
  readonly name: string;
  private handles = new Map<string, FileHandle>();

  constructor(readonly dir: string) {
    this.name = basename(dir);
  }

  describe(file: string): string {
    return join(this.dir, file);
  }

  async readFile(file: string): Promise<Buffer | undefined> {
    try {
      return await readFile(join(this.dir, file));
    } catch {
      return undefined;
    }
  }

  async size(file: string): Promise<number | undefined> {
    try {
      const s = await stat(join(this.dir, file));
      return s.isFile() ? s.size : undefined;
    } catch {
      return undefined;
    }
  }

  async read(file: string, position: number, bytes: number, into: Buffer): Promise<Buffer> {
    let fh = this.handles.get(file);
    if (!fh) {
      fh = await open(join(this.dir, file), "r");
      this.handles.set(file, fh);
    }
    const { bytesRead } = await fh.read(into, 0, bytes, position);
    if (bytesRead !== bytes) throw new QwenError("ERR_SAFETENSORS_INVALID", `${this.describe(file)}: short read (${bytesRead} of ${bytes} bytes at ${position})`);
    return into.subarray(0, bytes);
  }

  async close() {
    const handles = [...this.handles.values()];
    this.handles.clear();
    for (const fh of handles) await fh.close();
  }
}
