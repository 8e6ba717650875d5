/**
 * ResponseCache: finished results of deterministic requests (temperature 0 or a fixed seed, and every
 * classification), keyed by the model file's identity, the exact prompt tokens and every option that changes the
 * output. Least recently used entries go first when either bound is reached.
 */
import { createHash } from "node:crypto";

export interface ResponseCacheOptions {
  /** Most entries kept. Default: 256. */
  maxEntries?: number;
  /** Most bytes kept (estimated from the stored text and tokens). Default: 16 MiB. */
  maxBytes?: number;
}

interface Entry<T> { value: T; bytes: number }

export class ResponseCache<T = unknown> {
  private readonly entries = new Map<string, Entry<T>>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxEntries: number, readonly maxBytes: number) {}

  /** A stable key for a request: a hash of its parts (order-sensitive, JSON-encoded). */
  static key(parts: unknown[]): string {
    return createHash("sha256").update(JSON.stringify(parts, (_k, v) => (ArrayBuffer.isView(v) ? Array.from(v as Int32Array) : v))).digest("hex");
  }

  get(key: string): T | undefined {
    const entry = this.entries.get(key);
    if (!entry) {
      this.misses++;
      return undefined;
    }
    // refresh: a Map iterates in insertion order, so re-inserting makes it the most recent
    this.entries.delete(key);
    this.entries.set(key, entry);
    this.hits++;
    return entry.value;
  }

  set(key: string, value: T, bytes: number): void {
    if (bytes > this.maxBytes) return;
    const old = this.entries.get(key);
    if (old) {
      this.bytes -= old.bytes;
      this.entries.delete(key);
    }
    this.entries.set(key, { value, bytes });
    this.bytes += bytes;
    for (const [k, e] of this.entries) {
      if (this.entries.size <= this.maxEntries && this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= e.bytes;
    }
  }

  get size(): number {
    return this.entries.size;
  }

  get byteSize(): number {
    return this.bytes;
  }
}
