/**
 * A Hugging Face repository as a checkpoint source for the converter: small files are fetched whole, safetensors
 * headers and tensor rows with HTTP range requests. Once the converter announces its reads (`plan`), blocks are
 * fetched ahead of it on a few parallel connections into a fixed pool of buffers, so memory stays bounded
 * (`readAheadBytes`) and the weights never touch the disk.
 */
import type { ByteRange, CheckpointSource } from "../convert/source.js";
import { abortError, QwenError } from "../errors.js";
import { readRange, type Hub, type RemoteFile, type RequestContext } from "./hub.js";

export interface RemoteCheckpointOptions {
  /** Bytes of tensor data fetched ahead of the converter at most. Default 96 MiB. */
  readAheadBytes?: number;
  /** Parallel range requests at most. Default 4. */
  connections?: number;
  signal?: AbortSignal;
  /** Tensor bytes received so far (for progress). */
  onBytes?: (n: number) => void;
  /** Whole small files: by default the converter's own reads through readRange. */
  fetchWhole?: (file: RemoteFile) => Promise<Buffer>;
}

interface Slot {
  buffer: Buffer;
  busy: boolean;
}

interface Pending {
  range: ByteRange;
  slot: Slot;
  promise: Promise<Buffer>;
}

const key = (file: string, start: number, bytes: number) => `${file}\0${start}\0${bytes}`;

export class RemoteCheckpoint implements CheckpointSource {
  private readonly readAheadBytes: number;
  private readonly connections: number;
  private reads: ByteRange[] = [];
  private issued = 0;
  private inFlight = 0;
  private slots: Slot[] = [];
  private pending = new Map<string, Pending>();
  private controller = new AbortController();
  private failed?: unknown;

  constructor(
    private hub: Hub,
    private files: Map<string, RemoteFile>,
    readonly name: string,
    private ctx: RequestContext & { label: string },
    private options: RemoteCheckpointOptions = {},
  ) {
    this.readAheadBytes = options.readAheadBytes ?? 96 * 1024 * 1024;
    this.connections = options.connections ?? 4;
    if (options.signal) {
      const s = options.signal;
      if (s.aborted) this.controller.abort(s.reason);
      else s.addEventListener("abort", () => this.controller.abort(s.reason), { once: true });
    }
  }

  describe(file: string): string {
    return `${this.ctx.label}/${file}`;
  }

  async size(file: string): Promise<number | undefined> {
    return this.files.get(file)?.size;
  }

  async readFile(file: string): Promise<Buffer | undefined> {
    const f = this.files.get(file);
    if (!f) return undefined;
    if (this.options.fetchWhole) return this.options.fetchWhole(f);
    return readRange(this.hub, f, 0, f.size, Buffer.allocUnsafe(f.size), { ...this.ctx, file }, this.controller.signal);
  }

  plan(reads: ByteRange[]): void {
    this.reads = reads;
    this.issued = 0;
    const largest = Math.max(0, ...reads.map((r) => r.bytes));
    // the converter holds one block while it quantizes and asks for the next: at least three slots keep one fetching
    const count = Math.max(3, Math.floor(this.readAheadBytes / Math.max(1, largest)));
    this.slots = Array.from({ length: count }, () => ({ buffer: Buffer.allocUnsafeSlow(largest), busy: false }));
    this.pump();
  }

  private pump() {
    while (this.issued < this.reads.length && this.inFlight < this.connections && !this.failed) {
      const slot = this.slots.find((s) => !s.busy);
      if (!slot) return;
      const range = this.reads[this.issued++];
      const file = this.files.get(range.file);
      if (!file) {
        this.failed = new QwenError("ERR_CHECKPOINT_MISSING_FILE", `${this.describe(range.file)} is not in the repository`);
        return;
      }
      slot.busy = true;
      this.inFlight++;
      const promise = readRange(this.hub, file, range.start, range.bytes, slot.buffer, { ...this.ctx, file: range.file }, this.controller.signal, this.options.onBytes)
        .finally(() => {
          this.inFlight--;
          this.pump();
        });
      promise.catch(() => undefined); // awaited by read(); a failure must not go unhandled before then
      this.pending.set(key(range.file, range.start, range.bytes), { range, slot, promise });
    }
  }

  async read(file: string, position: number, bytes: number, into: Buffer): Promise<Buffer> {
    if (this.controller.signal.aborted) throw abortError(this.controller.signal);
    const k = key(file, position, bytes);
    const p = this.pending.get(k);
    if (p) {
      this.pending.delete(k);
      try {
        return await p.promise;
      } catch (err) {
        p.slot.busy = false;
        throw err;
      }
    }
    if (this.failed) throw this.failed;
    const f = this.files.get(file);
    if (!f) throw new QwenError("ERR_CHECKPOINT_MISSING_FILE", `${this.describe(file)} is not in the repository`);
    return readRange(this.hub, f, position, bytes, into, { ...this.ctx, file }, this.controller.signal);
  }

  release(buffer: Buffer): void {
    const slot = this.slots.find((s) => s.buffer.buffer === buffer.buffer);
    if (!slot) return; // the caller's own buffer
    slot.busy = false;
    this.pump();
  }

  async close(): Promise<void> {
    this.issued = this.reads.length; // nothing more
    if (!this.controller.signal.aborted) this.controller.abort(new Error("closed"));
    await Promise.allSettled([...this.pending.values()].map((p) => p.promise));
    this.pending.clear();
    this.slots = [];
  }
}
