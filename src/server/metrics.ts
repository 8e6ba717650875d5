/** Prometheus metrics of one server (its own registry, so two servers in one process never mix their numbers). */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { Model } from "../model.js";
import { native } from "../native.js";

/** What Model.stats() returns (the library does not name the type). */
export type ModelStats = ReturnType<Model["stats"]>;

export interface ServerMetrics {
  registry: Registry;
  requests: Counter<"route" | "method" | "status">;
  tokens: Counter<"kind">;
  ttft: Histogram<"endpoint">;
  interToken: Histogram<"endpoint">;
  prefixCacheHits: Counter;
  prefixCachedTokens: Counter;
  responseCache: Counter<"result">;
}

export function createMetrics(stats: () => ModelStats | undefined, options: { defaultMetrics?: boolean } = {}): ServerMetrics {
  const registry = new Registry();
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: "qwen_gguf_process_" });
  const requests = new Counter({ name: "qwen_gguf_http_requests_total", help: "HTTP requests by route, method and status", labelNames: ["route", "method", "status"] as const, registers: [registry] });
  const tokens = new Counter({ name: "qwen_gguf_tokens_total", help: "Tokens: prompt (decoded), cached (reused from the prefix cache), generated", labelNames: ["kind"] as const, registers: [registry] });
  // Buckets from 10 ms to 60 s: a long prompt on a 2-core CPU takes seconds before its first token
  const ttft = new Histogram({ name: "qwen_gguf_time_to_first_token_seconds", help: "Time from the request to its first generated piece", labelNames: ["endpoint"] as const, buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers: [registry] });
  const interToken = new Histogram({ name: "qwen_gguf_inter_token_seconds", help: "Time between consecutive generated pieces", labelNames: ["endpoint"] as const, buckets: [0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5], registers: [registry] });
  const prefixCacheHits = new Counter({ name: "qwen_gguf_prefix_cache_hits_total", help: "Generations that reused cached prompt tokens (timings.cachedTokens > 0)", registers: [registry] });
  const prefixCachedTokens = new Counter({ name: "qwen_gguf_prefix_cache_tokens_total", help: "Prompt tokens reused from the prefix cache", registers: [registry] });
  const responseCache = new Counter({ name: "qwen_gguf_response_cache_total", help: "Response-cache lookups by result (hit, miss)", labelNames: ["result"] as const, registers: [registry] });
  new Gauge({
    name: "qwen_gguf_generations_active", help: "Generations running now", registers: [registry],
    collect() { this.set(stats()?.active ?? 0); },
  });
  new Gauge({
    name: "qwen_gguf_generations_queued", help: "Generations waiting for a slot", registers: [registry],
    collect() { this.set(stats()?.queued ?? 0); },
  });
  new Gauge({
    name: "qwen_gguf_kv_cells_used_ratio", help: "Fraction of the KV cache's cells in use", registers: [registry],
    collect() { const s = stats(); this.set(s && s.kvCells > 0 ? s.kvCellsUsed / s.kvCells : 0); },
  });
  // RSS alone cannot tell a leak from allocator fragmentation (freed pages glibc keeps); the bytes malloc has handed
  // out and not had back can (glibc only; the gauge stays 0 elsewhere)
  new Gauge({
    name: "qwen_gguf_native_heap_bytes", help: "Native heap bytes in use (malloc'd and not freed: llama.cpp, the engine, Node's buffers)", registers: [registry],
    collect() { this.set(Math.max(0, native().heapInUse())); },
  });
  return { registry, requests, tokens, ttft, interToken, prefixCacheHits, prefixCachedTokens, responseCache };
}
