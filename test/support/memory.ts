import { setTimeout as sleep } from "node:timers/promises";
import { native } from "../../src/native.js";

/**
 * Memory once freed memory has really gone: V8 sweeps ArrayBuffer backing stores and external memory after a GC
 * returns, so one gc() right before reading RSS sometimes still counts the last load's header buffers (≈ 25 MB).
 * Three collections with a pause between them settle it.
 *
 * `heapInUse`: native heap bytes in use (glibc's mallinfo2), undefined where unknown. A leak raises it; RSS after
 * freeing a model swings by 20–70 MB with how glibc's arenas are fragmented, so a bound on RSS growth alone cannot
 * catch a leak of a few MB without failing on that noise.
 */
export async function settledMemory(): Promise<{ rss: number; heapInUse?: number }> {
  for (let i = 0; i < 3; i++) {
    globalThis.gc?.();
    await sleep(20);
  }
  const heap = native().heapInUse();
  return { rss: process.memoryUsage().rss, heapInUse: heap >= 0 ? heap : undefined };
}

/** RSS once settled (see settledMemory). */
export async function settledRss(): Promise<number> {
  return (await settledMemory()).rss;
}
