/**
 * One generation behind one HTTP request: cancelled when the client goes away, stopped cleanly at shutdown, pinged
 * while it waits, measured for /metrics. Routes give it a function that starts the model's stream and a callback
 * per piece; awaiting that callback (an SSE write that waits for 'drain') is the backpressure.
 */
import type { FastifyReply } from "fastify";
import { QwenError } from "../errors.js";
import type { GenerationResult, Model } from "../model.js";
import { ApiError, type OpenAIErrorBody } from "./errors.js";
import type { ModelStats, ServerMetrics } from "./metrics.js";

/** What Model.stream(), complete() and chat() return: pieces, then the whole result. */
export type ModelStream<P, R extends GenerationResult = GenerationResult> = AsyncIterable<P> & { result: Promise<R> };

/** State shared by every route of one server. */
export class ServerState {
  model: Model | undefined;
  closing = false;
  /** Generations running now; each can be told to stop (shutdown). */
  readonly running = new Set<{ stop(): void }>();
  constructor(
    readonly metrics: ServerMetrics,
    readonly pingMs: number,
    public modelId: string,
    public readonly aliases: Set<string>,
  ) {}

  /** The model, or 503 while it loads / after shutdown began. */
  ready(): Model {
    if (this.closing) throw new ApiError(503, "the server is shutting down", "server_error", null, "shutting_down");
    if (!this.model) throw new ApiError(503, "the model is still loading; retry when GET /health answers 200", "server_error", null, "model_loading", { "retry-after": "1" });
    return this.model;
  }

  /** Accepts the served model's id, its file name, its general.name, or no model field at all. */
  checkModelName(name: string | null | undefined) {
    if (name === undefined || name === null || name === "" || this.aliases.has(name)) return;
    throw new ApiError(404, `the model ${JSON.stringify(name)} does not exist; this server serves ${JSON.stringify(this.modelId)} (GET /v1/models)`, "invalid_request_error", "model", "model_not_found");
  }

  /** The model's engine counters; undefined before it loaded and after it was disposed (stats() would throw). */
  stats(): ModelStats | undefined {
    return this.model && !this.model.isDisposed ? this.model.stats() : undefined;
  }
}

/** The client closed the connection: nothing can be sent any more. */
export class ClientGone extends Error {
  constructor() {
    super("the client disconnected");
  }
}

export interface DriveOptions<P, R extends GenerationResult> {
  /** Label of the TTFT and inter-token histograms. */
  endpoint: string;
  start(signal: AbortSignal): ModelStream<P, R>;
  onPiece(piece: P): void | Promise<void>;
  /** Called every pingMs while no piece has come yet (queued, or decoding a long prompt). */
  onWaiting?(): void;
}

export interface DriveOutcome<R extends GenerationResult> {
  result: R;
  /** Stopped by the server's shutdown (result.finishReason is then "abort"). */
  stopped: boolean;
}

/** Runs one generation to its end, its cancellation, or the server's shutdown. */
export async function drive<P, R extends GenerationResult>(state: ServerState, reply: FastifyReply, o: DriveOptions<P, R>): Promise<DriveOutcome<R>> {
  const { metrics } = state;
  const controller = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableFinished) controller.abort(new ClientGone());
  };
  reply.raw.on("close", onClose);
  let stopNow!: () => void;
  const stopRequested = new Promise<"stop">((resolve) => (stopNow = () => resolve("stop")));
  const runner = { stop: () => stopNow() };
  const t0 = performance.now();
  let last = 0;
  let ping: NodeJS.Timeout | undefined;
  let stream: ModelStream<P, R>;
  try {
    stream = o.start(controller.signal);
  } catch (err) {
    reply.raw.off("close", onClose);
    throw err;
  }
  state.running.add(runner);
  const it = stream[Symbol.asyncIterator]();
  if (o.onWaiting) ping = setInterval(() => o.onWaiting!(), state.pingMs);
  let stopped = false;
  try {
    for (;;) {
      const next = it.next();
      next.catch(() => undefined); // when the stop wins the race, this one settles unobserved
      const r = await Promise.race([next, stopRequested]);
      if (r === "stop") {
        stopped = true;
        await it.return?.();
        break;
      }
      if (r.done) break;
      const now = performance.now();
      if (last === 0) {
        metrics.ttft.observe({ endpoint: o.endpoint }, (now - t0) / 1000);
        if (ping) clearInterval(ping);
        ping = undefined;
      } else {
        metrics.interToken.observe({ endpoint: o.endpoint }, (now - last) / 1000);
      }
      last = now;
      try {
        await o.onPiece(r.value);
      } catch (err) {
        await it.return?.(); // the write failed (client gone): stop the native work before leaving
        throw controller.signal.aborted ? new ClientGone() : err;
      }
    }
    const result = await stream.result;
    const t = result.timings;
    metrics.tokens.inc({ kind: "generated" }, t.genTokens);
    metrics.tokens.inc({ kind: "prompt" }, Math.max(0, t.promptTokens - t.cachedTokens));
    metrics.tokens.inc({ kind: "cached" }, t.cachedTokens);
    if (t.cachedTokens > 0) {
      metrics.prefixCacheHits.inc();
      metrics.prefixCachedTokens.inc(t.cachedTokens);
    }
    // timings.cached is false too when the model has no response cache: count lookups only where one exists
    if (state.stats()?.responseCache) metrics.responseCache.inc({ result: t.cached ? "hit" : "miss" });
    return { result, stopped };
  } catch (err) {
    if (controller.signal.aborted && (err instanceof ClientGone || (err as QwenError)?.code === "ABORT_ERR")) throw new ClientGone();
    throw err;
  } finally {
    if (ping) clearInterval(ping);
    reply.raw.off("close", onClose);
    state.running.delete(runner);
  }
}

/**
 * SSE output through @fastify/sse (its framing, its drain-aware writes). Headers are committed lazily: an error
 * before the first piece or ping can still be answered with its HTTP status and a JSON body.
 */
export class SseWriter {
  committed = false;
  /** Settles when the connection closes: a write waiting for 'drain' on a dead socket would otherwise wait forever. */
  private readonly closed: Promise<"closed">;
  constructor(private readonly reply: FastifyReply) {
    this.closed = new Promise((resolve) => reply.raw.once("close", () => resolve("closed")));
  }

  private commit() {
    if (this.committed) return;
    this.committed = true;
    this.reply.sse.sendHeaders(200);
  }

  private async send(message: Parameters<FastifyReply["sse"]["send"]>[0]) {
    this.commit();
    const sent = this.reply.sse.send(message);
    sent.catch(() => undefined); // a send that loses the race rejects once the socket is gone
    if ((await Promise.race([sent, this.closed])) === "closed" || !this.reply.sse.isConnected) throw new ClientGone();
  }

  /** A JSON event (`data: {…}`). */
  async data(payload: unknown, event?: string) {
    await this.send(event ? { event, data: payload } : { data: payload });
  }

  /** `data: [DONE]`, OpenAI's end marker. */
  async done() {
    await this.send("[DONE]");
  }

  /**
   * A comment line keeps proxies and clients from timing out while the request waits in the queue or its prompt
   * decodes. The plugin's own heartbeat runs on a fixed timer from the first write whether or not tokens flow; this
   * one pings only while nothing else is sent.
   */
  ping() {
    if (!this.reply.sse.isConnected) return;
    this.commit();
    this.reply.raw.write(": ping\n\n");
  }

  /** An error after the headers went out: OpenAI's error body as an event (the openai client throws it as APIError). */
  async error(body: OpenAIErrorBody) {
    if (!this.reply.sse.isConnected) return;
    await this.data(body);
  }
}
