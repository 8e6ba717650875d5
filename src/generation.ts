/**
 * GenerationStream: the async iterator of one generation, fed by the engine's events (or replayed from the
 * response cache). Cancellation: `break` (return()) and an AbortSignal end the request within one decode step;
 * a request still waiting in the queue settles at once.
 */
import type { Context } from "./context.js";
import { abortError, QwenError } from "./errors.js";
import type { NativeEngineEvent, NativeRequest } from "./native.js";

export type FinishReason = "stop" | "length" | "abort";

export interface TokenAlternative {
  /** The token's text (a partial UTF-8 character shows as U+FFFD; `bytes` has the exact bytes). */
  token: string;
  id: number;
  logprob: number;
  bytes: number[];
}

export interface TokenLogprob extends TokenAlternative {
  /** The most likely tokens at this position (as many as `topLogprobs` asked for). */
  top: TokenAlternative[];
}

export interface Piece {
  text: string;
  /** With `logprobs: true`: the tokens this piece's text came from. */
  logprobs?: TokenLogprob[];
}

export interface GenerationTimings {
  promptTokens: number;
  /** Prompt tokens taken from the prefix cache (not decoded again). */
  cachedTokens: number;
  promptMs: number;
  genTokens: number;
  genMs: number;
  /** The whole result came from the response cache: nothing was decoded. */
  cached: boolean;
}

export interface GenerationResult {
  text: string;
  /** The generated token ids. */
  tokens: number[];
  finishReason: FinishReason;
  timings: GenerationTimings;
  /** With `logprobs: true`: one entry per generated token. */
  logprobs?: TokenLogprob[];
}

/** A finished generation as the response cache keeps it. */
export interface RecordedGeneration {
  pieces: Piece[];
  result: GenerationResult;
}

export type LogprobConverter = (list: NonNullable<Extract<NativeEngineEvent, { kind: "piece" }>["logprobs"]>) => TokenLogprob[];

export interface GenerationSource {
  context: Context;
  /** Builds the engine request (tokenizes) when iteration starts; throws for a prompt that cannot run. */
  request: () => Omit<NativeRequest, "id">;
  convertLogprobs: LogprobConverter;
  /** A cached result to replay instead of decoding. */
  replay?: RecordedGeneration;
  /** Called with a finished, complete generation (for the response cache). */
  record?: (recorded: RecordedGeneration) => void;
}

export class GenerationStream implements AsyncIterator<Piece> {
  private pieces: Piece[] = [];
  private readonly all: Piece[] = [];
  private text = "";
  private readonly logprobs: TokenLogprob[] = [];
  private waiter: { resolve: (r: IteratorResult<Piece>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  private error: unknown;
  private cancelled = false;
  private cancelledByReturn = false;
  private started = false;
  private id = 0;
  private settledNative!: () => void;
  /** Resolves when the engine is finished with this request. */
  private readonly nativeDone = new Promise<void>((resolve) => (this.settledNative = resolve));
  private readonly onAbort: () => void;

  constructor(
    private readonly source: GenerationSource,
    private readonly signal: AbortSignal | undefined,
    private readonly settle: { resolve: (r: GenerationResult) => void; reject: (e: unknown) => void },
  ) {
    this.onAbort = () => this.cancel(abortError(signal));
    if (signal?.aborted) {
      this.cancel(abortError(signal));
      return;
    }
    signal?.addEventListener("abort", this.onAbort, { once: true });
    if (source.replay) {
      this.replay(source.replay);
      return;
    }
    try {
      this.id = source.context.submit(source.request(), {
        onStart: () => (this.started = true),
        onPiece: (text, logprobs) => this.push({ text, logprobs: logprobs ? source.convertLogprobs(logprobs) : undefined }),
        onDone: (r) => {
          this.settledNative();
          this.finish(r);
        },
        onError: (err) => {
          this.settledNative();
          this.fail(err);
        },
      });
    } catch (err) {
      this.settledNative();
      this.fail(err);
    }
  }

  private replay(recorded: RecordedGeneration) {
    this.started = true;
    // On a later tick, as from the engine: the pieces as they were streamed, then the result (a hit costs no
    // round trip per piece).
    setImmediate(() => {
      if (this.ended || this.cancelled) return;
      for (const piece of recorded.pieces) this.push(piece);
      this.settledNative();
      this.resolveWith({ ...recorded.result, tokens: recorded.result.tokens.slice(), timings: { ...recorded.result.timings, cachedTokens: recorded.result.timings.promptTokens, cached: true, promptMs: 0, genMs: 0 } });
    });
  }

  private push(piece: Piece) {
    if (this.cancelled) return;
    this.text += piece.text;
    this.all.push(piece);
    if (piece.logprobs) this.logprobs.push(...piece.logprobs);
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: piece, done: false });
    } else {
      this.pieces.push(piece);
    }
  }

  private finish(r: Extract<NativeEngineEvent, { kind: "done" }>) {
    if (r.finishReason === "abort") {
      if (!this.cancelled) return this.fail(new QwenError("ERR_DISPOSED", "the model was disposed during the generation"));
      // an AbortSignal rejects `result` too (as fetch does); `break` resolves it with the text so far
      if (!this.cancelledByReturn) return this.fail(this.error);
    }
    const result: GenerationResult = {
      text: this.text,
      tokens: Array.from(r.tokens),
      finishReason: r.finishReason,
      timings: { promptTokens: r.promptTokens, cachedTokens: r.cachedTokens, promptMs: r.promptMs, genTokens: r.tokens.length, genMs: r.genMs, cached: false },
      logprobs: this.logprobs.length ? this.logprobs : undefined,
    };
    if (r.finishReason !== "abort") this.source.record?.({ pieces: this.all, result });
    this.resolveWith(result);
  }

  private resolveWith(result: GenerationResult) {
    this.settle.resolve(result);
    this.end();
  }

  private fail(err: unknown) {
    if (!this.error) this.error = err;
    this.settle.reject(this.error);
    this.end();
  }

  private end() {
    if (this.ended) return;
    this.ended = true;
    this.signal?.removeEventListener("abort", this.onAbort);
    const w = this.waiter;
    this.waiter = undefined;
    if (!w) return;
    if (this.error && !this.cancelledByReturn) w.reject(this.error);
    else w.resolve({ value: undefined, done: true });
  }

  private cancel(err: unknown) {
    if (this.ended || this.cancelled) return;
    this.cancelled = true;
    this.error = err;
    this.pieces = [];
    if (this.started && !this.source.replay) {
      this.source.context.cancel(this.id); // the engine ends it within one step; onDone("abort") settles
      return;
    }
    // still queued (or a replay): settle now; the engine drops the queued request
    if (this.id) this.source.context.forget(this.id);
    this.settledNative();
    if (!this.cancelledByReturn) return this.fail(this.error ?? abortError());
    this.resolveWith({ text: this.text, tokens: [], finishReason: "abort", timings: { promptTokens: 0, cachedTokens: 0, promptMs: 0, genTokens: 0, genMs: 0, cached: false } });
  }

  next(): Promise<IteratorResult<Piece>> {
    if (this.pieces.length) return Promise.resolve({ value: this.pieces.shift()!, done: false });
    if (this.ended || this.cancelled) {
      if (this.error && !this.cancelledByReturn) return Promise.reject(this.error);
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** `break` in for-await: the engine drops the request within one decode step; resolves once it has. */
  async return(): Promise<IteratorResult<Piece>> {
    if (!this.ended) {
      this.cancelledByReturn = true;
      this.cancel(abortError());
    }
    await this.nativeDone;
    return { value: undefined, done: true };
  }
}

/** The object stream()/chat()/complete() return: iterable once, with the final result as a promise. */
export function generationIterable<T>(
  start: (settle: { resolve: (r: GenerationResult) => void; reject: (e: unknown) => void }) => AsyncIterator<T>,
): AsyncIterable<T> & { result: Promise<GenerationResult> } {
  let started = false;
  let settle!: { resolve: (r: GenerationResult) => void; reject: (e: unknown) => void };
  const result = new Promise<GenerationResult>((resolve, reject) => (settle = { resolve, reject }));
  result.catch(() => undefined); // the iterator reports the error; an unobserved result promise must not crash
  return {
    result,
    [Symbol.asyncIterator](): AsyncIterator<T> {
      if (started) throw new QwenError("ERR_INVALID_STATE", "a generation stream can be iterated only once");
      started = true;
      return start(settle);
    },
  };
}

/** Maps an iterator's values, forwarding return() (so `break` reaches the engine). */
export function mapIterator<A, B>(inner: AsyncIterator<A>, map: (a: A) => B): AsyncIterator<B> {
  return {
    async next() {
      const r = await inner.next();
      return r.done ? { value: undefined, done: true } : { value: map(r.value), done: false };
    },
    async return() {
      await inner.return?.();
      return { value: undefined, done: true };
    },
  };
}
