/**
 * Context: the TypeScript mirror of the native AddonContext (one llama_context and its engine thread). It numbers
 * requests, routes the engine's per-step events to each request's handlers, and bounds the queue.
 */
import { fromNative, QwenError } from "./errors.js";
import type { NativeContext, NativeContextStats, NativeEngineEvent, NativeRequest } from "./native.js";

export interface RequestHandlers {
  /** The engine admitted the request (it left the queue). */
  onStart?(): void;
  onPiece?(text: string, logprobs: Extract<NativeEngineEvent, { kind: "piece" }>["logprobs"]): void;
  onDone(result: Extract<NativeEngineEvent, { kind: "done" }>): void;
  onError(error: QwenError): void;
}

export class Context {
  private readonly requests = new Map<number, RequestHandlers & { generation: boolean }>();
  private nextId = 1;
  private disposed = false;
  private drained: (() => void) | undefined;

  /** @internal */
  constructor(readonly native: NativeContext, readonly parallel: number, readonly maxQueue: number) {}

  /** The engine's events of one decode step. */
  readonly onEvents = (events: NativeEngineEvent[]) => {
    for (const ev of events) {
      const r = this.requests.get(ev.id);
      if (!r) continue; // settled on the JS side already (a cancelled queued call)
      switch (ev.kind) {
        case "start":
          r.onStart?.();
          break;
        case "piece":
          r.onPiece?.(ev.text, ev.logprobs);
          break;
        case "done":
          this.requests.delete(ev.id);
          r.onDone(ev);
          break;
        case "error":
          this.requests.delete(ev.id);
          r.onError(fromNative(ev.error));
          break;
      }
    }
    this.settled();
  };

  /** After requests ended: let the event loop go when none is left. */
  private settled() {
    if (this.requests.size > 0) return;
    if (!this.disposed) this.native.unref();
    this.drained?.();
  }

  /**
   * Generations waiting for a slot: the engine admits generations in FIFO order up to `parallel` (scoring and
   * logits requests never wait), so every generation in flight beyond the first `parallel` is waiting.
   */
  get queued(): number {
    return Math.max(0, this.generations() - this.parallel);
  }

  /** Hands a request to the engine; returns its id. Throws ERR_QUEUE_FULL when maxQueue calls already wait. */
  submit(request: Omit<NativeRequest, "id">, handlers: RequestHandlers): number {
    if (this.disposed) throw new QwenError("ERR_DISPOSED", "the model was disposed");
    if (request.kind === "generate" && this.queued >= this.maxQueue && this.generations() >= this.parallel) {
      throw new QwenError("ERR_QUEUE_FULL", `${this.queued} calls are already waiting (maxQueue ${this.maxQueue}); try again later`);
    }
    const id = this.nextId++;
    try {
      this.native.submit({ ...request, id });
    } catch (err) {
      throw fromNative(err);
    }
    if (this.requests.size === 0) this.native.ref();
    this.requests.set(id, { ...handlers, generation: request.kind === "generate" });
    return id;
  }

  private generations(): number {
    let n = 0;
    for (const r of this.requests.values()) if (r.generation) n++;
    return n;
  }

  /** Ends a request between decode steps (a queued one leaves the queue). Its handlers are not called again. */
  forget(id: number): void {
    if (this.requests.delete(id)) this.native.cancel(id);
    this.settled();
  }

  /** Ends a request between decode steps; its onDone still comes (finishReason "abort"). */
  cancel(id: number): void {
    if (this.requests.has(id)) this.native.cancel(id);
  }

  stats(): NativeContextStats {
    return this.native.stats();
  }

  /**
   * Stops the engine (the running decode is aborted) and frees the context. Every request still known ends with
   * ERR_DISPOSED: the engine's last events, or here if they cannot be delivered any more.
   */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.native.dispose(); // joins the engine thread; its final events are queued to this thread
    if (this.requests.size) {
      await new Promise<void>((resolve) => {
        this.drained = resolve;
        setTimeout(resolve, 1000).unref();
      });
    }
    for (const [id, r] of this.requests) {
      this.requests.delete(id);
      r.onError(new QwenError("ERR_DISPOSED", "the model was disposed during the request"));
    }
  }
}
