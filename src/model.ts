/**
 * The typed facade: loadModel() → Model with stream(), generate(), chat(), tokenize(), logits().
 *
 * Concurrency: a Model owns one native context. Calls that use it (stream, generate, chat, logits) are queued
 * and run one after another in call order, so two concurrent stream() calls both complete correctly, the second
 * starting when the first ends. The weights are loaded once. The queue also gives multi-turn prefix reuse: the
 * context keeps the previous call's tokens and a prompt that starts with them decodes only the new part.
 */
import { availableParallelism } from "node:os";
import { abortError, fromNative, QwenError } from "./errors.js";
import { GgmlType, metaNumber, metaString, readGguf, type GgufFile } from "./gguf.js";
import { native, type NativeGenerationResult, type NativeModel, type NativeSamplingOptions, type NativeSession } from "./native.js";
import { renderChat, splitReasoning, type ChatMessage, type ChatPiece } from "./chat.js";
import {
  checkBool, checkFunction, checkInt, checkNumber, checkOneOf, checkSignal, checkString, checkStringList, optionalObject,
} from "./validate.js";

export const SUPPORTED_ARCHITECTURES = ["qwen3", "qwen2"] as const;
export const KV_CACHE_TYPES = ["f16", "q8_0", "q4_0", "f32"] as const;
export type KvCacheType = (typeof KV_CACHE_TYPES)[number];
const KV_GGML_TYPE: Record<KvCacheType, GgmlType> = { f16: GgmlType.F16, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0, f32: GgmlType.F32 };

/** Names of llama.cpp's `general.file_type` values (enum llama_ftype). */
export const FILE_TYPE_NAMES: Record<number, string> = {
  0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M",
  13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
};

export interface LoadModelOptions {
  /** Threads for generation. Default: the number of CPUs available to the process (`os.availableParallelism()`). */
  threads?: number;
  /** Threads for prompt processing. Default: `threads`. */
  threadsBatch?: number;
  /** Context window in tokens (prompt + reply). Default: 4096, capped at the model's trained context length. */
  contextSize?: number;
  /** Largest number of prompt tokens decoded in one step. Default: 512. */
  batchSize?: number;
  /** Storage type of the KV cache: "f16" (default), "q8_0" (about half the memory), "q4_0" (about a quarter), or
   * "f32" (twice the memory; exact, for numerical comparisons). */
  kvCacheType?: KvCacheType;
  /**
   * Map the file instead of reading it. Default: false. On CPUs where ggml repacks weights for its fast kernels
   * (Q4_0, Q4_K, … with AVX2/AVX-512) a mapped file stays resident beside the repacked copy, nearly doubling RSS;
   * reading keeps one copy. Map when several processes share one file and no repacking applies.
   */
  mmap?: boolean;
  /**
   * How long ggml's worker threads spin waiting for the next step before sleeping, 0 (sleep at once) to 100.
   * Default: 50, llama.cpp's own default: the fastest hand-off between decode steps on an otherwise idle CPU. Lower
   * it when the CPU is shared (other busy processes, several models at once): spinning threads then steal the time
   * of the threads that have work.
   */
  poll?: number;
  /** Called with the loaded fraction, 0 to 1. */
  onProgress?: (fraction: number) => void;
  /** Aborts loading; the promise rejects with an AbortError (code ABORT_ERR). */
  signal?: AbortSignal;
}

export interface SamplingOptions {
  /** Most tokens to generate. Default: 512. */
  maxTokens?: number;
  /** Softmax temperature; 0 means greedy (always the most likely token). Default: the GGUF's `general.sampling.temp`, else 0.8. */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 disables. Default: the GGUF's `general.sampling.top_k`, else 40. */
  topK?: number;
  /** Nucleus sampling threshold; 1 disables. Default: the GGUF's `general.sampling.top_p`, else 0.95. */
  topP?: number;
  /** Drop tokens below minP × the top probability; 0 disables. Default: the GGUF's `general.sampling.min_p`, else 0.05. */
  minP?: number;
  /** Penalty for repeating tokens of the last `penaltyLastN`; 1 disables. Default: the GGUF's `general.sampling.penalty_repeat`, else 1. */
  repeatPenalty?: number;
  /** Flat penalty for any token already present; 0 disables. Default: 0. */
  presencePenalty?: number;
  /** Penalty proportional to a token's count; 0 disables. Default: 0. */
  frequencyPenalty?: number;
  /** Window of recent tokens the penalties look at. Default: 64. */
  penaltyLastN?: number;
  /** Seed of the sampler's random numbers. Default: a random seed. */
  seed?: number;
  /** Strings that end the reply; the stop string itself is not returned. Default: none. */
  stop?: string | string[];
  /** Keep generating through end-of-generation tokens (for benchmarks). Default: false. */
  ignoreEos?: boolean;
  /** Reuse the tokens the context already holds when the prompt starts with them. Default: true. */
  cachePrompt?: boolean;
  /** Stops the generation within one decode step; the stream throws an AbortError. */
  signal?: AbortSignal;
}

export interface StreamOptions extends SamplingOptions {
  /** Parse special tokens such as `<|im_start|>` written in the prompt. Default: true. */
  special?: boolean;
}

export type FinishReason = "stop" | "length" | "abort";

export interface GenerationResult {
  text: string;
  /** The generated token ids. */
  tokens: number[];
  finishReason: FinishReason;
  timings: { promptTokens: number; cachedTokens: number; promptMs: number; genTokens: number; genMs: number };
}

export interface ChatOptions extends SamplingOptions {
  /** Qwen3 thinking mode: true lets the model reason in `<think>…</think>` first; false uses the template's
   * `enable_thinking=false` path. Default: true. */
  thinking?: boolean;
}

export interface ModelInfo {
  architecture: string;
  name?: string;
  /** Number of weights. */
  parameters: number;
  /** File type from `general.file_type`, e.g. "Q4_K_M". */
  quantization: string;
  contextLengthTrained: number;
  fileSize: number;
  vocabSize: number;
  layers: number;
  embeddingLength: number;
  heads: number;
  kvHeads: number;
  chatTemplate?: string;
}

export interface MemoryEstimate {
  /** Bytes of weights (the mapped file's tensor data). */
  weights: number;
  /** Bytes of the KV cache for the context size and cache type (reserved at load; its pages become resident as the context fills). */
  kvCache: number;
  /** Rough bytes of compute buffers (logits rows and activations of one batch). */
  compute: number;
  total: number;
}

function fileTypeName(file: GgufFile): string {
  const ft = metaNumber(file, "general.file_type");
  return ft === undefined ? "unknown" : FILE_TYPE_NAMES[ft] ?? `type ${ft}`;
}

function checkArchitecture(file: GgufFile, path: string): string {
  const arch = metaString(file, "general.architecture");
  if (!arch || !(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new QwenError("ERR_UNSUPPORTED_ARCHITECTURE", `${path}: architecture ${JSON.stringify(arch ?? null)} is not supported (supported: ${SUPPORTED_ARCHITECTURES.join(", ")})`);
  }
  return arch;
}

/** Memory a model will need at a given context size, from the GGUF header alone (nothing is loaded). */
export async function estimateMemory(path: string, options: { contextSize?: number; kvCacheType?: KvCacheType; batchSize?: number } = {}): Promise<MemoryEstimate> {
  const file = await readGguf(checkString("path", path));
  const arch = checkArchitecture(file, path);
  const n = (key: string) => metaNumber(file, `${arch}.${key}`) ?? 0;
  const contextSize = checkInt("contextSize", options.contextSize, Math.min(4096, n("context_length") || 4096), 1, 1 << 24);
  const kvType = checkOneOf("kvCacheType", options.kvCacheType, KV_CACHE_TYPES, "f16");
  const batch = checkInt("batchSize", options.batchSize, 512, 1, 1 << 16);
  const heads = n("attention.head_count");
  const kvHeads = n("attention.head_count_kv") || heads;
  const embd = n("embedding_length");
  const keyLen = n("attention.key_length") || embd / heads;
  const valueLen = n("attention.value_length") || embd / heads;
  const bytesPerElement = { f32: 4, f16: 2, q8_0: 34 / 32, q4_0: 18 / 32 }[kvType];
  const kvCache = Math.ceil(n("block_count") * contextSize * kvHeads * (keyLen + valueLen) * bytesPerElement);
  const vocab = (file.metadata.get("tokenizer.ggml.tokens")?.value as unknown[] | undefined)?.length ?? 0;
  // llama.cpp's compute buffer (flash attention): logits rows (the addon allows 32 per decode), the f16
  // attention mask of one ubatch, and activations, the feed-forward's three intermediate rows dominating
  const ubatch = Math.min(batch, 512);
  const attentionScores = kvType === "f32" ? ubatch * contextSize * heads * 4 : 0;  // f32 runs without flash attention
  const compute = vocab * 4 * Math.min(32, ubatch) + contextSize * ubatch * 2 + ubatch * (embd + 3 * n("feed_forward_length")) * 4 + attentionScores;
  const weights = file.fileSize - file.dataOffset;
  return { weights, kvCache, compute, total: weights + kvCache + compute };
}

/** Runs tasks one after another. */
class TaskQueue {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task);
    this.tail = result.catch(() => undefined);
    return result;
  }
  idle(): Promise<unknown> {
    return this.tail;
  }
}

interface ResolvedSampling extends NativeSamplingOptions { signal?: AbortSignal }

export class Model {
  readonly path: string;
  readonly info: ModelInfo;
  /** Context size in tokens that this model was loaded with. */
  readonly contextSize: number;
  private readonly file: GgufFile;
  private readonly nativeModel: NativeModel;
  private readonly session: NativeSession;
  private readonly queue = new TaskQueue();
  private readonly defaults: Partial<NativeSamplingOptions>;
  /** Text of the end-of-sequence token, for chat templates' `eos_token`. */
  private readonly eosText: string;
  private disposed = false;
  private active: GenerationStream | undefined;

  /** @internal use loadModel() */
  constructor(path: string, file: GgufFile, nativeModel: NativeModel, session: NativeSession, contextSize: number) {
    this.path = path;
    this.file = file;
    this.nativeModel = nativeModel;
    this.session = session;
    this.contextSize = contextSize;
    const ni = nativeModel.info();
    this.eosText = ni.eos >= 0 ? nativeModel.tokenPiece(ni.eos, true).toString("utf8") : "";
    const arch = metaString(file, "general.architecture")!;
    this.info = {
      architecture: arch,
      name: metaString(file, "general.name"),
      parameters: ni.parameters,
      quantization: fileTypeName(file),
      contextLengthTrained: ni.contextLengthTrained,
      fileSize: file.fileSize,
      vocabSize: ni.vocabSize,
      layers: ni.layers,
      embeddingLength: ni.embeddingLength,
      heads: ni.heads,
      kvHeads: metaNumber(file, `${arch}.attention.head_count_kv`) ?? ni.heads,
      chatTemplate: ni.chatTemplate,
    };
    const meta = (key: string) => metaNumber(file, `general.sampling.${key}`);
    this.defaults = {
      temperature: meta("temp"), topK: meta("top_k"), topP: meta("top_p"), minP: meta("min_p"),
      repeatPenalty: meta("penalty_repeat"), penaltyLastN: meta("penalty_last_n"),
    };
  }

  private assertUsable() {
    if (this.disposed) throw new QwenError("ERR_DISPOSED", "the model was disposed");
  }

  /** Text → token ids. `special: true` parses special tokens such as `<|im_start|>` in the text. */
  tokenize(text: string, options: { special?: boolean } = {}): number[] {
    this.assertUsable();
    checkString("text", text);
    const special = checkBool("special", optionalObject<{ special?: boolean }>("options", options).special, false);
    return Array.from(this.nativeModel.tokenize(text, special));
  }

  /** Token ids → text. `special: true` renders control tokens such as `<|im_end|>`. */
  detokenize(tokens: readonly number[] | Int32Array, options: { special?: boolean } = {}): string {
    this.assertUsable();
    const special = checkBool("special", optionalObject<{ special?: boolean }>("options", options).special, false);
    return this.nativeModel.detokenize(this.toTokenArray("tokens", tokens), special).toString("utf8");
  }

  private toTokenArray(name: string, tokens: unknown): Int32Array {
    if (!(tokens instanceof Int32Array) && !Array.isArray(tokens)) throw new QwenError("ERR_INVALID_ARG_TYPE", `${name} must be an array of token ids`);
    const out = Int32Array.from(tokens as ArrayLike<number>);
    for (let i = 0; i < out.length; i++) {
      const t = (tokens as ArrayLike<number>)[i];
      if (!Number.isInteger(t) || t < 0 || t >= this.info.vocabSize) {
        throw new QwenError("ERR_OUT_OF_RANGE", `${name}[${i}] = ${t} is not a token id (0..${this.info.vocabSize - 1})`);
      }
    }
    return out;
  }

  /**
   * Logits of every position: a Float32Array of `tokens.length × info.vocabSize`, row-major
   * (row i holds the scores of the token that follows tokens[0..i]).
   */
  async logits(tokens: readonly number[] | Int32Array): Promise<Float32Array> {
    this.assertUsable();
    const ids = this.toTokenArray("tokens", tokens);
    if (ids.length === 0) throw new QwenError("ERR_INVALID_ARG_VALUE", "tokens is empty");
    if (ids.length > this.contextSize) throw new QwenError("ERR_CONTEXT_OVERFLOW", `${ids.length} tokens do not fit the context of ${this.contextSize} tokens`);
    return this.queue.run(async () => {
      this.assertUsable();
      try {
        return await this.session.logits(ids);
      } catch (err) {
        throw fromNative(err);
      }
    });
  }

  private resolveSampling(options: unknown): ResolvedSampling {
    const o = optionalObject<StreamOptions>("options", options);
    const d = this.defaults;
    return {
      maxTokens: checkInt("maxTokens", o.maxTokens, 512, 1, 1 << 24),
      temperature: checkNumber("temperature", o.temperature, d.temperature ?? 0.8, 0, 100),
      topK: checkInt("topK", o.topK, d.topK ?? 40, 0, 1 << 24),
      topP: checkNumber("topP", o.topP, d.topP ?? 0.95, 0, 1),
      minP: checkNumber("minP", o.minP, d.minP ?? 0.05, 0, 1),
      repeatPenalty: checkNumber("repeatPenalty", o.repeatPenalty, d.repeatPenalty ?? 1, 0.01, 100),
      presencePenalty: checkNumber("presencePenalty", o.presencePenalty, 0, -100, 100),
      frequencyPenalty: checkNumber("frequencyPenalty", o.frequencyPenalty, 0, -100, 100),
      penaltyLastN: checkInt("penaltyLastN", o.penaltyLastN, d.penaltyLastN ?? 64, 0, 1 << 20),
      seed: checkInt("seed", o.seed, Math.floor(Math.random() * 0xfffffffe), 0, 0xffffffff),
      stop: checkStringList("stop", o.stop),
      ignoreEos: checkBool("ignoreEos", o.ignoreEos, false),
      cachePrompt: checkBool("cachePrompt", o.cachePrompt, true),
      signal: checkSignal("signal", o.signal),
    };
  }

  /**
   * Streams the reply to a raw prompt (no chat template) as text pieces, each ending on a whole character.
   * `break`, `signal.abort()` and `maxTokens` stop the work within one decode step.
   */
  stream(prompt: string, options: StreamOptions = {}): AsyncIterable<string> & { result: Promise<GenerationResult> } {
    this.assertUsable();
    checkString("prompt", prompt);
    const special = checkBool("special", optionalObject<StreamOptions>("options", options).special, true);
    const sampling = this.resolveSampling(options);
    return this.startGeneration(() => this.nativeModel.tokenize(prompt, special), sampling);
  }

  /** Generates a whole reply: text, token ids, why it stopped and timings. */
  async generate(prompt: string, options: StreamOptions = {}): Promise<GenerationResult> {
    const stream = this.stream(prompt, options);
    for await (const _piece of stream) {
      // pieces are collected in result.text
    }
    return stream.result;
  }

  /**
   * Chat with the model's own template (`tokenizer.chat_template` in the GGUF). Pieces are tagged as
   * "reasoning" (inside `<think>…</think>`) or "answer".
   */
  chat(messages: ChatMessage[], options: ChatOptions = {}): AsyncIterable<ChatPiece> & { result: Promise<GenerationResult> } {
    this.assertUsable();
    const o = optionalObject<ChatOptions>("options", options);
    const thinking = checkBool("thinking", o.thinking, true);
    const template = this.info.chatTemplate;
    if (!template) throw new QwenError("ERR_CHAT_TEMPLATE", `${this.path} has no tokenizer.chat_template`);
    const prompt = renderChat(template, messages, { thinking, bosToken: "", eosToken: this.eosText });
    const sampling = this.resolveSampling(options);
    const inner = this.startGeneration(() => this.nativeModel.tokenize(prompt, true), sampling);
    const startsInReasoning = /<think>\s*$/.test(prompt);
    return { [Symbol.asyncIterator]: () => splitReasoning(inner[Symbol.asyncIterator](), startsInReasoning), result: inner.result };
  }

  private startGeneration(tokenizePrompt: () => Int32Array, sampling: ResolvedSampling) {
    const model = this;
    let started = false;
    let stream: GenerationStream | undefined;
    let settleResult!: { resolve: (r: GenerationResult) => void; reject: (e: unknown) => void };
    const result = new Promise<GenerationResult>((resolve, reject) => (settleResult = { resolve, reject }));
    result.catch(() => undefined); // the iterator reports the error; an unobserved result promise must not crash
    return {
      result,
      [Symbol.asyncIterator](): AsyncIterator<string> {
        if (started) throw new QwenError("ERR_INVALID_STATE", "a generation stream can be iterated only once");
        started = true;
        stream = new GenerationStream(model, tokenizePrompt, sampling, settleResult);
        return stream;
      },
    };
  }

  /** @internal runs one generation on the queue; resolves when the native side is finished with the context. */
  runGeneration(stream: GenerationStream, tokenizePrompt: () => Int32Array, sampling: ResolvedSampling): Promise<void> {
    return this.queue.run(
      () =>
        new Promise<void>((resolve) => {
          if (this.disposed) {
            stream.fail(new QwenError("ERR_DISPOSED", "the model was disposed"));
            return resolve();
          }
          if (stream.cancelled) return resolve(stream.finishCancelled());
          let prompt: Int32Array;
          try {
            prompt = tokenizePrompt();
            if (prompt.length === 0) throw new QwenError("ERR_INVALID_ARG_VALUE", "the prompt is empty (no tokens)");
            if (prompt.length + 1 > this.contextSize) {
              throw new QwenError("ERR_CONTEXT_OVERFLOW", `the prompt has ${prompt.length} tokens; with at least 1 token of reply it does not fit the context size of ${this.contextSize} tokens`);
            }
          } catch (err) {
            stream.fail(fromNative(err));
            return resolve();
          }
          const { signal, ...nativeOptions } = sampling;
          this.active = stream;
          stream.started = true;
          try {
            this.session.generate(prompt, nativeOptions, (kind, payload) => {
              if (kind === "piece") return stream.push(payload as string);
              this.active = undefined;
              if (kind === "done") stream.finish(payload as NativeGenerationResult);
              else stream.fail(fromNative(payload));
              resolve();
            });
          } catch (err) {
            this.active = undefined;
            stream.fail(fromNative(err));
            resolve();
          }
        }),
    );
  }

  /** Stops the running generation if it is `stream`'s (or any, when no stream is given: dispose). */
  abortActive(stream?: GenerationStream) {
    if (this.active && (!stream || this.active === stream)) this.session.abort();
  }

  /**
   * Frees the context and the weights. Safe to call twice, and during a generation: the generation stops within
   * one decode step and its stream ends with an ERR_DISPOSED error.
   */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.abortActive();
    await this.queue.idle();
    this.session.dispose();
    this.nativeModel.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  /** Tokens held in the context from the previous call (reused when the next prompt starts with them). */
  get cachedTokens(): number {
    return this.session.stats().cachedTokens;
  }

  /** Threads and sizes the native context runs with. */
  get runtime() {
    const s = this.session.stats();
    return { threads: s.threads, threadsBatch: s.threadsBatch, contextSize: s.contextSize, batchSize: s.batchSize, stateBytes: s.stateBytes };
  }

  get isDisposed() {
    return this.disposed;
  }
}

/** The async iterator of one generation: a buffer of pieces filled by native events. */
class GenerationStream implements AsyncIterator<string> {
  private pieces: string[] = [];
  private text = "";
  private waiter: { resolve: (r: IteratorResult<string>) => void; reject: (e: unknown) => void } | undefined;
  private ended = false;
  private error: unknown;
  cancelled = false;
  /** Set by the queue when the native generation begins. */
  started = false;
  private readonly ran: Promise<void>;
  private readonly onAbort: () => void;

  constructor(
    private readonly model: Model,
    tokenizePrompt: () => Int32Array,
    private readonly sampling: ResolvedSampling,
    private readonly settle: { resolve: (r: GenerationResult) => void; reject: (e: unknown) => void },
  ) {
    this.onAbort = () => this.cancel(abortError(sampling.signal));
    if (sampling.signal?.aborted) this.cancel(abortError(sampling.signal));
    else sampling.signal?.addEventListener("abort", this.onAbort, { once: true });
    this.ran = model.runGeneration(this, tokenizePrompt, sampling);
  }

  push(piece: string) {
    if (this.cancelled) return;
    this.text += piece;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve({ value: piece, done: false });
    } else {
      this.pieces.push(piece);
    }
  }

  finish(r: NativeGenerationResult) {
    if (r.finishReason === "abort") {
      // not by the consumer: dispose() stopped it
      if (!this.cancelled) return this.fail(new QwenError("ERR_DISPOSED", "the model was disposed during the generation"));
      // an AbortSignal rejects `result` too (as fetch does); `break` resolves it with the text so far
      if (!this.cancelledByReturn) return this.fail(this.error);
    }
    this.settle.resolve({
      text: this.text,
      tokens: Array.from(r.tokens),
      finishReason: r.finishReason,
      timings: { promptTokens: r.promptTokens, cachedTokens: r.cachedTokens, promptMs: r.promptMs, genTokens: r.tokens.length, genMs: r.genMs },
    });
    this.end();
  }

  fail(err: unknown) {
    if (!this.error) this.error = err;
    this.settle.reject(this.error);
    this.end();
  }

  /** Settles a stream cancelled before it started: the same outcome as for a running one. */
  finishCancelled() {
    if (this.ended) return;
    if (!this.cancelledByReturn) return this.fail(this.error ?? abortError());
    this.finish({ finishReason: "abort", tokens: new Int32Array(0), promptTokens: 0, cachedTokens: 0, promptMs: 0, genMs: 0 });
  }

  private end() {
    this.ended = true;
    this.sampling.signal?.removeEventListener("abort", this.onAbort);
    const w = this.waiter;
    this.waiter = undefined;
    if (!w) return;
    if (this.error && !this.cancelledByReturn) w.reject(this.error);
    else w.resolve({ value: undefined, done: true });
  }

  private cancelledByReturn = false;

  private cancel(err: unknown) {
    if (this.ended || this.cancelled) return;
    this.cancelled = true;
    this.error = err;
    this.pieces = [];
    if (this.started) this.model.abortActive(this);
    else this.finishCancelled(); // still queued: settle now, the queue skips it when its turn comes
  }

  next(): Promise<IteratorResult<string>> {
    if (this.pieces.length) return Promise.resolve({ value: this.pieces.shift()!, done: false });
    if (this.ended || this.cancelled) {
      if (this.error && !this.cancelledByReturn) return Promise.reject(this.error);
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  /** `break` in for-await: stop the native work at once and wait until the context is free again. */
  async return(): Promise<IteratorResult<string>> {
    if (!this.ended) {
      this.cancelledByReturn = true;
      this.cancel(abortError());
    }
    if (this.started) await this.ran; // a queued stream never touched the context: no need to wait for those ahead
    return { value: undefined, done: true };
  }
}

/** Loads a Qwen GGUF model and creates its context. */
export async function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model> {
  checkString("path", path);
  const o = optionalObject<LoadModelOptions>("options", options);
  const signal = checkSignal("signal", o.signal);
  const onProgress = checkFunction<(fraction: number) => void>("onProgress", o.onProgress);
  const threads = checkInt("threads", o.threads, availableParallelism(), 1, 1024);
  const threadsBatch = checkInt("threadsBatch", o.threadsBatch, threads, 1, 1024);
  const batchSize = checkInt("batchSize", o.batchSize, 512, 1, 1 << 16);
  const kvCacheType = checkOneOf("kvCacheType", o.kvCacheType, KV_CACHE_TYPES, "f16");
  const mmap = checkBool("mmap", o.mmap, false);
  const poll = checkInt("poll", o.poll, 50, 0, 100);
  const requestedContext = checkInt("contextSize", o.contextSize, 0, 0, 1 << 24);
  if (o.contextSize !== undefined && requestedContext < 16) throw new QwenError("ERR_OUT_OF_RANGE", `contextSize must be at least 16, got ${requestedContext}`);
  if (signal?.aborted) throw abortError(signal);

  const file = await readGguf(path);
  checkArchitecture(file, path);
  const addon = native();
  const nativeModel = new addon.AddonModel();
  const onAbort = () => nativeModel.abortLoad();
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    await nativeModel.load(path, { mmap }, onProgress);
  } catch (err) {
    if (signal?.aborted) throw abortError(signal);
    throw fromNative(err);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  const trained = nativeModel.info().contextLengthTrained;
  const contextSize = requestedContext || Math.min(4096, trained > 0 ? trained : 4096);
  const session = new addon.AddonSession(nativeModel);
  try {
    if (signal?.aborted) throw abortError(signal);
    await session.init({
      contextSize, batchSize, ubatchSize: Math.min(batchSize, 512), threads, threadsBatch, poll, kvType: KV_GGML_TYPE[kvCacheType],
      // CPU flash attention computes in F16; an F32 cache is asked for exactness, so it gets the plain F32 path (0 = disabled, -1 = auto)
      flashAttention: kvCacheType === "f32" ? 0 : -1,
    });
  } catch (err) {
    session.dispose();
    nativeModel.dispose();
    throw fromNative(err);
  }
  onProgress?.(1);
  return new Model(path, file, nativeModel, session, contextSize);
}
