/**
 * The typed facade: loadModel() → Model with stream(), generate(), chat(), complete(), classify(), logits(),
 * createChat().
 *
 * Concurrency: a Model owns one native context whose engine thread runs up to `parallel` generations at once
 * (continuous batching over one shared KV cache); further calls wait in FIFO order. Every prompt starts from the
 * longest prefix any sequence holds (the prefix cache), so a shared system prompt or the earlier turns of a
 * conversation are not decoded again. Classifications and logits() run on their own sequences beside the
 * generations and never wait behind them.
 */
import { createHash } from "node:crypto";
import { open } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { abortError, fromNative, QwenError } from "./errors.js";
import { GgmlType, metaNumber, metaString, readGguf, type GgufFile } from "./gguf.js";
import { native, type NativeModel, type NativeRequest, type NativeSamplingOptions, type NativeTokenLogprob } from "./native.js";
import { chatContents, renderChat, splitReasoning, type ChatMessage, type ChatPiece } from "./chat.js";
import { Context } from "./context.js";
import {
  generationIterable, GenerationStream, mapIterator, type GenerationResult, type Piece, type RecordedGeneration, type TokenLogprob,
} from "./generation.js";
import { parseGbnf } from "./grammar/gbnf.js";
import { jsonSchemaToGbnf } from "./grammar/json-schema.js";
import { ResponseCache, type ResponseCacheOptions } from "./response-cache.js";
import type { OutputType } from "./convert/plan.js";
import { isReference, resolveModel, type PullProgress } from "./pull/index.js";
import { toolCallGrammar, validateToolChoice, validateTools, type ToolCall, type ToolChoice, type ToolDefinition } from "./tools.js";
import {
  checkBool, checkFunction, checkInt, checkNumber, checkOneOf, checkSignal, checkString, checkStringList, optionalObject,
} from "./validate.js";

export type { FinishReason, GenerationResult, GenerationTimings, Piece, TokenLogprob } from "./generation.js";
export type { ToolCall, ToolChoice, ToolDefinition } from "./tools.js";

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
  /** Generations that decode together (continuous batching). Default: 4. Further calls wait in FIFO order. */
  parallel?: number;
  /** Calls allowed to wait for a free generation slot; one more rejects at once with ERR_QUEUE_FULL. Default: unbounded. */
  maxQueue?: number;
  /**
   * Tokens the shared KV cache holds across all sequences (running generations and the idle ones kept for the
   * prefix cache). Default: contextSize × parallel, so every generation can fill its context at once. Its pages
   * become resident only as they are used.
   */
  cacheSize?: number;
  /**
   * Host-memory prompt cache: the KV state of an idle sequence that is evicted from the KV cache is saved
   * (up to `maxBytes`, least recently used dropped first) and restored when a later prompt starts with it; with
   * `dir`, states are also written there (and at dispose) so a restarted process reuses them. Default: off.
   */
  promptCache?: { maxBytes?: number; dir?: string };
  /** Results of deterministic requests (temperature 0 or a fixed seed; every classification) returned without
   * decoding. `true` for the default bounds (256 entries, 16 MiB). Default: off. */
  responseCache?: boolean | ResponseCacheOptions;
  /** With a Hugging Face reference (`hf:owner/repo[@revision][:type]`, `hf:owner/repo/file.gguf`, an https URL):
   * download (and convert) it when there is no local copy. Default: false — a missing copy is ERR_MODEL_NOT_PULLED. */
  pull?: boolean;
  /** With a reference: the output type to use or pull. Default: the local copy's, else "q4_k_m". */
  type?: OutputType;
  /** With `pull`: download and conversion progress. */
  onPullProgress?: (progress: PullProgress) => void;
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
  /** Start from the longest prefix of the prompt that the KV cache holds (the prefix cache). Default: true. */
  cachePrompt?: boolean;
  /** Constrain the output with a GBNF grammar (root rule `root`), applied by llama.cpp's grammar sampler. */
  grammar?: string;
  /** Constrain the output to JSON valid for this JSON Schema (converted to a grammar; unsupported keywords throw ERR_SCHEMA_UNSUPPORTED). */
  jsonSchema?: object;
  /** Bias added to the logits of token ids before sampling (-100 bans a token). */
  logitBias?: Record<number, number>;
  /** Report each generated token's log-probability. Default: false. */
  logprobs?: boolean;
  /** With logprobs: how many most likely alternatives to report per token, 0 to 20. Default: 0. */
  topLogprobs?: number;
  /** Stops the generation within one decode step; the stream throws an AbortError. */
  signal?: AbortSignal;
}

export interface StreamOptions extends SamplingOptions {
  /** Parse special tokens such as `<|im_start|>` written in the prompt. Default: true. */
  special?: boolean;
}

export interface ChatOptions extends SamplingOptions {
  /** Qwen3 thinking mode: true lets the model reason in `<think>…</think>` first; false uses the template's
   * `enable_thinking=false` path. Default: true. With a grammar or JSON Schema, the constraint applies to the
   * answer after `</think>`; the reasoning stays free. */
  thinking?: boolean;
  /** Most tokens of reasoning: then `</think>` is forced and the answer follows. Default: unlimited. */
  reasoningBudget?: number;
  /** Functions the model may call (OpenAI's shape), rendered by the model's own template. Calls come back as
   * `tool_call` pieces and in `result.toolCalls`. */
  tools?: ToolDefinition[];
  /** "auto" (default with tools): the model decides; "none": tools are not offered; "required": at least one
   * call, enforced by a grammar over the tools' parameter schemas; `{ type: "function", function: { name } }`: that
   * call. */
  toolChoice?: ToolChoice;
}

export interface ClassifyOptions {
  /** The labels to choose from (at least 2, distinct, at most 64). */
  labels: string[];
  /** The instruction (system message) in chat mode. Default: a sentiment instruction when the labels look like
   * positive/negative (or 正面/负面), else "Classify … Answer with one of: …". */
  instruction?: string;
  /** Few-shot examples rendered as earlier turns (chat mode). */
  examples?: { text: string; label: string }[];
  /** true: render with the chat template (thinking off), labels follow the assistant turn's start. false: `text`
   * is the whole prompt, used verbatim, and each label is tokenized on its own after it. Default: true. */
  chat?: boolean;
  signal?: AbortSignal;
}

export interface ClassifyResult {
  label: string;
  /** Softmax of the label scores: sums to 1. */
  probabilities: Record<string, number>;
  /** Each label's score: the sum of its tokens' log-probabilities after the prompt. */
  logprobs: Record<string, number>;
  /** true when the result came from the response cache. */
  cached: boolean;
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
export async function estimateMemory(path: string, options: { contextSize?: number; kvCacheType?: KvCacheType; batchSize?: number; parallel?: number; cacheSize?: number } = {}): Promise<MemoryEstimate> {
  const file = await readGguf(checkString("path", path));
  const arch = checkArchitecture(file, path);
  const n = (key: string) => metaNumber(file, `${arch}.${key}`) ?? 0;
  const contextSize = checkInt("contextSize", options.contextSize, Math.min(4096, n("context_length") || 4096), 1, 1 << 24);
  const kvType = checkOneOf("kvCacheType", options.kvCacheType, KV_CACHE_TYPES, "f16");
  const batch = checkInt("batchSize", options.batchSize, 512, 1, 1 << 16);
  const parallel = checkInt("parallel", options.parallel, 4, 1, 64);
  const cells = checkInt("cacheSize", options.cacheSize, contextSize * parallel, 16, 1 << 26);
  const heads = n("attention.head_count");
  const kvHeads = n("attention.head_count_kv") || heads;
  const embd = n("embedding_length");
  const keyLen = n("attention.key_length") || embd / heads;
  const valueLen = n("attention.value_length") || embd / heads;
  const bytesPerElement = { f32: 4, f16: 2, q8_0: 34 / 32, q4_0: 18 / 32 }[kvType];
  // the KV cache at its fullest: every generation holding its whole context (pages are resident only once used)
  const kvCache = Math.ceil(n("block_count") * cells * kvHeads * (keyLen + valueLen) * bytesPerElement);
  const vocab = (file.metadata.get("tokenizer.ggml.tokens")?.value as unknown[] | undefined)?.length ?? 0;
  // llama.cpp's compute buffer (flash attention): logits rows (the addon allows 32 per decode), the f16
  // attention mask of one ubatch, and activations, the feed-forward's three intermediate rows dominating
  const ubatch = Math.min(batch, 512);
  const attentionScores = kvType === "f32" ? ubatch * cells * heads * 4 : 0;  // f32 runs without flash attention
  const compute = vocab * 4 * Math.max(32, parallel + 16) + cells * ubatch * 2 + ubatch * (embd + 3 * n("feed_forward_length")) * 4 + attentionScores;
  const weights = file.fileSize - file.dataOffset;
  return { weights, kvCache, compute, total: weights + kvCache + compute };
}

interface ResolvedSampling extends NativeSamplingOptions {
  signal?: AbortSignal;
  cachePrompt: boolean;
  /** The caller fixed the seed (or sampling is greedy): the output is reproducible and may be cached. */
  deterministic: boolean;
}

const MAX_LABELS = 64;

/**
 * What a recorded generation really holds in the JS heap: the result's text twice (result and pieces), a number per
 * token, and per piece (and per log-probability entry) an object of some 100 bytes. The response cache's byte bound
 * counts this, not just the text.
 */
function recordedBytes(r: RecordedGeneration): number {
  let bytes = 4 * r.result.text.length + 16 * r.result.tokens.length + 512;
  for (const p of r.pieces) bytes += 120 + (p.logprobs?.length ?? 0) * 400;
  return bytes;
}

/** Runs a grammar builder; a schema nested deeper than the stack allows is the caller's error, not a crash. */
function buildGrammar(what: string, build: () => string): string {
  try {
    return build();
  } catch (err) {
    if (err instanceof RangeError) throw new QwenError("ERR_SCHEMA_UNSUPPORTED", `${what}: the schema is nested too deeply to convert to a grammar`, { cause: err });
    throw err;
  }
}
const SENTIMENT_LABELS = [/^(positive|negative|neutral)$/i, /^(正面|负面|中性|积极|消极)$/];

export class Model {
  readonly path: string;
  readonly info: ModelInfo;
  /** Tokens one generation may hold (prompt + reply). */
  readonly contextSize: number;
  private readonly file: GgufFile;
  private readonly nativeModel: NativeModel;
  private readonly context: Context;
  private readonly defaults: Partial<NativeSamplingOptions>;
  /** Text of the end-of-sequence token, for chat templates' `eos_token`. */
  private readonly eosText: string;
  private readonly thinkEnd: number;
  /** Bytes of the longest token (bounds a prompt's size before it is tokenized). */
  private readonly maxTokenBytes: number;
  /** Texts of the control tokens ("<|im_end|>", …): a message's own text must not turn into them. */
  private readonly controlTexts: string[];
  private readonly responses: ResponseCache<RecordedGeneration | ClassifyResult> | undefined;
  /** Identity of the model file (hash of its header and size) for cache keys. */
  readonly identity: string;
  private disposed = false;

  /** @internal use loadModel() */
  constructor(path: string, file: GgufFile, nativeModel: NativeModel, context: Context, contextSize: number, identity: string, responses?: ResponseCache<RecordedGeneration | ClassifyResult>) {
    this.path = path;
    this.file = file;
    this.nativeModel = nativeModel;
    this.context = context;
    this.contextSize = contextSize;
    this.identity = identity;
    this.responses = responses;
    const ni = nativeModel.info();
    this.eosText = ni.eos >= 0 ? nativeModel.tokenPiece(ni.eos, true).toString("utf8") : "";
    this.maxTokenBytes = Math.max(1, ni.maxTokenBytes);
    this.controlTexts = ni.controlTexts;
    const thinkEnd = nativeModel.tokenize("</think>", true);
    this.thinkEnd = thinkEnd.length === 1 ? thinkEnd[0] : -1;
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

  /**
   * Refuses text that cannot fit the context whatever its tokens, before tokenizing it: tokenizing runs on the
   * calling thread, and megabytes of text would stall the event loop for seconds.
   */
  private checkPromptBytes(text: string) {
    if (this.minTokens(text) > this.contextSize) {
      throw new QwenError("ERR_CONTEXT_OVERFLOW", `the prompt has ${Buffer.byteLength(text)} bytes: more than the context size of ${this.contextSize} tokens can hold (at most ${this.maxTokenBytes} bytes a token)`);
    }
  }

  /** A lower bound of `tokenize(text).length` from the text's size alone, without tokenizing: its bytes over the longest token's. */
  minTokens(text: string): number {
    checkString("text", text);
    return Math.ceil(Buffer.byteLength(text) / this.maxTokenBytes);
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

  /** Runs one request on the engine and resolves with its `done` event. */
  private runRequest(request: Omit<NativeRequest, "id">, signal?: AbortSignal) {
    return new Promise<{ floats?: Float32Array }>((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(signal));
      let id = 0;
      const onAbort = () => {
        this.context.forget(id);
        reject(abortError(signal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const cleanup = () => signal?.removeEventListener("abort", onAbort);
      try {
        id = this.context.submit(request, {
          onDone: (r) => {
            cleanup();
            if (r.finishReason === "abort") reject(new QwenError("ERR_DISPOSED", "the model was disposed during the request"));
            else resolve(r);
          },
          onError: (err) => {
            cleanup();
            reject(err);
          },
        });
      } catch (err) {
        cleanup();
        reject(err);
      }
    });
  }

  /**
   * Logits of every position: a Float32Array of `tokens.length × info.vocabSize`, row-major
   * (row i holds the scores of the token that follows tokens[0..i]). Runs on its own sequence beside generations.
   */
  async logits(tokens: readonly number[] | Int32Array, options: { signal?: AbortSignal } = {}): Promise<Float32Array> {
    this.assertUsable();
    const ids = this.toTokenArray("tokens", tokens);
    const signal = checkSignal("signal", optionalObject<{ signal?: AbortSignal }>("options", options).signal);
    if (ids.length === 0) throw new QwenError("ERR_INVALID_ARG_VALUE", "tokens is empty");
    if (ids.length > this.contextSize) throw new QwenError("ERR_CONTEXT_OVERFLOW", `${ids.length} tokens do not fit the context of ${this.contextSize} tokens`);
    const r = await this.runRequest({ kind: "logits", prompt: ids, cachePrompt: false }, signal);
    return r.floats!;
  }

  private resolveSampling(options: unknown, thinking?: { on: boolean; budget: number }): ResolvedSampling {
    const o = optionalObject<StreamOptions>("options", options);
    const d = this.defaults;
    const temperature = checkNumber("temperature", o.temperature, d.temperature ?? 0.8, 0, 100);
    const logprobs = checkBool("logprobs", o.logprobs, false);
    const topLogprobs = checkInt("topLogprobs", o.topLogprobs, 0, 0, 20);
    if (o.grammar !== undefined && o.jsonSchema !== undefined) throw new QwenError("ERR_INVALID_ARG_VALUE", "grammar and jsonSchema cannot both be given");
    // a user's GBNF is parsed here first: llama.cpp only logs its parse errors
    const grammar = o.jsonSchema !== undefined ? buildGrammar("jsonSchema", () => jsonSchemaToGbnf(o.jsonSchema)) : o.grammar === undefined ? undefined : checkString("grammar", o.grammar);
    if (o.grammar !== undefined) parseGbnf(grammar!);
    const bias = optionalObject<Record<string, number>>("logitBias", o.logitBias);
    const logitBias: [number, number][] = Object.entries(bias).map(([token, value]) => {
      const id = Number(token);
      if (!Number.isInteger(id) || id < 0 || id >= this.info.vocabSize) throw new QwenError("ERR_OUT_OF_RANGE", `logitBias key ${token} is not a token id (0..${this.info.vocabSize - 1})`);
      return [id, checkNumber(`logitBias[${token}]`, value, 0, -100, 100)];
    });
    return {
      maxTokens: checkInt("maxTokens", o.maxTokens, 512, 1, 1 << 24),
      temperature,
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
      logitBias: logitBias.length ? logitBias : undefined,
      grammar,
      logprobs: logprobs ? topLogprobs : -1,
      thinkEnd: this.thinkEnd,
      grammarAfterThink: grammar !== undefined && !!thinking?.on,
      reasoningBudget: thinking?.on ? thinking.budget : -1,
      deterministic: temperature === 0 || o.seed !== undefined,
    };
  }

  private convertLogprobs = (list: NativeTokenLogprob[]): TokenLogprob[] => {
    const alt = (id: number, logprob: number) => {
      const bytes = this.nativeModel.tokenPiece(id, false);
      return { token: bytes.toString("utf8"), id, logprob, bytes: Array.from(bytes) };
    };
    return list.map((t) => ({ ...alt(t.id, t.logprob), top: t.top.map((a) => alt(a.id, a.logprob)) }));
  };

  /** Starts a generation over `tokenize()`'s prompt: the engine, or the response cache when it holds the result. */
  private generation(tokenize: () => Int32Array, sampling: ResolvedSampling) {
    const { signal, cachePrompt, deterministic, ...nativeOptions } = sampling;
    return generationIterable<Piece>((settle) => {
      let prompt: Int32Array | undefined;
      let failure: unknown;
      try {
        prompt = tokenize();
        if (prompt.length === 0) throw new QwenError("ERR_INVALID_ARG_VALUE", "the prompt is empty (no tokens)");
        if (prompt.length + 1 > this.contextSize) {
          throw new QwenError("ERR_CONTEXT_OVERFLOW", `the prompt has ${prompt.length} tokens; with at least 1 token of reply it does not fit the context size of ${this.contextSize} tokens`);
        }
      } catch (err) {
        failure = err;
      }
      // seed only matters when sampling is random; the key omits it for greedy requests
      const { seed, ...keyOptions } = nativeOptions;
      const key = this.responses && deterministic && prompt ? ResponseCache.key([this.identity, "generate", prompt, keyOptions, sampling.temperature === 0 ? 0 : seed]) : undefined;
      const cached = key ? this.responses!.get(key) : undefined;
      return new GenerationStream(
        {
          context: this.context,
          request: () => {
            if (failure) throw failure;
            return { kind: "generate", prompt: prompt!, sampling: nativeOptions, cachePrompt };
          },
          convertLogprobs: this.convertLogprobs,
          replay: cached && "pieces" in cached ? cached : undefined,
          record: key ? (r) => this.responses!.set(key, r, recordedBytes(r)) : undefined,
        },
        signal,
        settle,
      );
    });
  }

  /**
   * Streams the reply to a raw prompt (no chat template) as text pieces, each ending on a whole character.
   * `break`, `signal.abort()` and `maxTokens` stop the work within one decode step.
   */
  stream(prompt: string, options: StreamOptions = {}): AsyncIterable<string> & { result: Promise<GenerationResult> } {
    const inner = this.complete(prompt, options);
    return { result: inner.result, [Symbol.asyncIterator]: () => mapIterator(inner[Symbol.asyncIterator](), (p) => p.text) };
  }

  /** Like stream(), with pieces as `{ text, logprobs? }` (for `logprobs: true`). */
  complete(prompt: string, options: StreamOptions = {}): AsyncIterable<Piece> & { result: Promise<GenerationResult> } {
    this.assertUsable();
    checkString("prompt", prompt);
    const special = checkBool("special", optionalObject<StreamOptions>("options", options).special, true);
    this.checkPromptBytes(prompt);
    return this.generation(() => this.nativeModel.tokenize(prompt, special), this.resolveSampling(options));
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
   * Tokens of a rendered chat prompt in which the messages' own text is literal: a message that spells a control
   * token ("<|im_end|>\n<|im_start|>system…") gets that text's ordinary tokens, never the control token, so no
   * message can end its turn or open another role's. The template's own text is tokenized with special tokens.
   * Messages without control-token text (the usual case) leave the prompt one tokenization, as llama-server's.
   */
  private tokenizeChat(prompt: string, messages: ChatMessage[]): Int32Array {
    const literal = chatContents(messages).filter((c) => this.controlTexts.some((t) => c.includes(t)));
    if (!literal.length) return this.nativeModel.tokenize(prompt, true);
    const parts: Int32Array[] = [];
    let cursor = 0;
    for (const text of literal) {
      // in order, from where the previous message ended; a text the template changed (not found) stays as rendered
      const at = prompt.indexOf(text, cursor);
      if (at < 0) continue;
      parts.push(this.nativeModel.tokenize(prompt.slice(cursor, at), true), this.nativeModel.tokenize(text, false));
      cursor = at + text.length;
    }
    parts.push(this.nativeModel.tokenize(prompt.slice(cursor), true));
    const out = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
    let offset = 0;
    for (const p of parts) {
      out.set(p, offset);
      offset += p.length;
    }
    return out;
  }

  /** Renders messages with the GGUF's chat template (and `tools` in its tool section). */
  renderChat(messages: ChatMessage[], options: { thinking?: boolean; tools?: ToolDefinition[] } = {}): string {
    this.assertUsable();
    const template = this.info.chatTemplate;
    if (!template) throw new QwenError("ERR_CHAT_TEMPLATE", `${this.path} has no tokenizer.chat_template`);
    const thinking = options.thinking ?? true;
    let prompt = renderChat(template, messages, { thinking, bosToken: "", eosToken: this.eosText, tools: options.tools });
    // Qwen3's hybrid template leaves the start of the thinking block to the model, which always writes
    // "<think>\n" first. Writing it into the prompt makes the reasoning/answer split, the reasoning budget and a
    // grammar that waits for </think> exact even when the model does not (random weights, a model fine-tuned away).
    if (thinking && this.thinkEnd >= 0 && template.includes("enable_thinking") && !/<think>\s*$/.test(prompt)) prompt += "<think>\n";
    return prompt;
  }

  /**
   * Chat with the model's own template (`tokenizer.chat_template` in the GGUF). Pieces are tagged as
   * "reasoning" (inside `<think>…</think>`), "answer", or "tool_call" (with `tools`).
   */
  chat(messages: ChatMessage[], options: ChatOptions = {}): AsyncIterable<ChatPiece> & { result: Promise<GenerationResult & { toolCalls?: ToolCall[] }> } {
    this.assertUsable();
    const o = optionalObject<ChatOptions>("options", options);
    const thinking = checkBool("thinking", o.thinking, true);
    const budget = checkInt("reasoningBudget", o.reasoningBudget, -1, -1, 1 << 24);
    const tools = o.tools === undefined ? [] : validateTools(o.tools);
    const choice = tools.length ? validateToolChoice(o.toolChoice, tools) : "none";
    const offered = tools.length > 0 && choice !== "none";
    let sampleOptions: ChatOptions = options;
    if (offered && choice !== "auto") {
      if (o.grammar !== undefined || o.jsonSchema !== undefined) throw new QwenError("ERR_INVALID_ARG_VALUE", `toolChoice ${JSON.stringify(choice)} cannot be combined with grammar or jsonSchema`);
      sampleOptions = { ...options, grammar: buildGrammar("tools", () => toolCallGrammar(tools, choice)) };
    }
    const prompt = this.renderChat(messages, { thinking, tools: offered ? tools : undefined });
    this.checkPromptBytes(prompt);
    const sampling = this.resolveSampling(sampleOptions, { on: thinking, budget });
    const inner = this.generation(() => this.tokenizeChat(prompt, messages), sampling);
    const startsInReasoning = /<think>\s*$/.test(prompt);
    const calls: ToolCall[] = [];
    const result = inner.result.then((r) => (offered ? { ...r, toolCalls: calls } : r));
    result.catch(() => undefined);
    return {
      [Symbol.asyncIterator]: () => splitReasoning(inner[Symbol.asyncIterator](), startsInReasoning, { tools: offered, onToolCall: (c) => calls.push(c) }),
      result,
    };
  }

  /**
   * Classifies `text` into one of `labels` exactly: each label's score is the sum of its tokens' log-probabilities
   * after the prompt, and the probabilities are the softmax of the scores. The prompt is decoded once (or taken
   * from the prefix cache); the labels are scored on sequences that share its cells, in one batch.
   */
  async classify(text: string, options: ClassifyOptions): Promise<ClassifyResult> {
    this.assertUsable();
    checkString("text", text);
    const o = optionalObject<ClassifyOptions>("options", options);
    const labels = o.labels;
    if (!Array.isArray(labels) || labels.length < 2 || labels.some((l) => typeof l !== "string" || l === "")) {
      throw new QwenError("ERR_INVALID_ARG_VALUE", "labels must be an array of at least 2 non-empty strings");
    }
    if (labels.length > MAX_LABELS) throw new QwenError("ERR_OUT_OF_RANGE", `at most ${MAX_LABELS} labels, got ${labels.length}`);
    if (new Set(labels).size !== labels.length) throw new QwenError("ERR_INVALID_ARG_VALUE", "labels must be distinct");
    const chat = checkBool("chat", o.chat, true);
    const signal = checkSignal("signal", o.signal);
    this.checkPromptBytes(text);
    let prompt: Int32Array;
    if (chat) {
      const sentiment = labels.every((l) => SENTIMENT_LABELS.some((re) => re.test(l)));
      const instruction = o.instruction === undefined
        ? sentiment
          ? `Classify the sentiment of the user's message. Answer with exactly one word: ${labels.join(" or ")}.`
          : `Classify the user's message. Answer with exactly one of: ${labels.join(", ")}.`
        : checkString("instruction", o.instruction);
      const examples = o.examples ?? [];
      if (!Array.isArray(examples)) throw new QwenError("ERR_INVALID_ARG_TYPE", "examples must be an array of { text, label }");
      const messages: ChatMessage[] = [{ role: "system", content: instruction }];
      examples.forEach((e, i) => {
        if (!e || typeof e.text !== "string" || typeof e.label !== "string") throw new QwenError("ERR_INVALID_ARG_TYPE", `examples[${i}] must be { text: string, label: string }`);
        messages.push({ role: "user", content: e.text }, { role: "assistant", content: e.label });
      });
      messages.push({ role: "user", content: text });
      prompt = this.tokenizeChat(this.renderChat(messages, { thinking: false }), messages);
    } else {
      prompt = this.nativeModel.tokenize(text, true);
    }
    if (prompt.length === 0) throw new QwenError("ERR_INVALID_ARG_VALUE", "the text is empty (no tokens)");
    const labelTokens = labels.map((l) => this.nativeModel.tokenize(l, false));
    const longest = Math.max(...labelTokens.map((t) => t.length));
    if (prompt.length + longest > this.contextSize) {
      throw new QwenError("ERR_CONTEXT_OVERFLOW", `the prompt has ${prompt.length} tokens and the longest label ${longest}: more than the context size of ${this.contextSize} tokens`);
    }
    const key = this.responses ? ResponseCache.key([this.identity, "classify", prompt, labelTokens]) : undefined;
    const hit = key ? this.responses!.get(key) : undefined;
    if (hit && "label" in hit) return { ...hit, probabilities: { ...hit.probabilities }, logprobs: { ...hit.logprobs }, cached: true };
    const r = await this.runRequest({ kind: "score", prompt, labels: labelTokens }, signal);
    const floats = r.floats!;
    const scores: number[] = [];
    let at = 0;
    for (const t of labelTokens) {
      let sum = 0;
      for (let k = 0; k < t.length; k++) sum += floats[at++];
      scores.push(sum);
    }
    const max = Math.max(...scores);
    const exps = scores.map((s) => Math.exp(s - max));
    const total = exps.reduce((a, b) => a + b, 0);
    const result: ClassifyResult = { label: labels[scores.indexOf(max)], probabilities: {}, logprobs: {}, cached: false };
    labels.forEach((l, i) => {
      result.probabilities[l] = exps[i] / total;
      result.logprobs[l] = scores[i];
    });
    if (key) this.responses!.set(key, result, 64 * labels.length + 256);
    return result;
  }

  /** A multi-turn conversation that keeps its history and reuses its KV cache between turns. */
  createChat(options: ChatSessionOptions = {}): ChatSession {
    this.assertUsable();
    return new ChatSession(this, options);
  }

  /**
   * Frees the context and the weights. Safe to call twice, and during generations: they stop within one decode
   * step and end with an ERR_DISPOSED error, as do calls still waiting.
   */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.context.dispose();
    this.nativeModel.dispose();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  /** The engine now: generations running and waiting, cached tokens, KV cells in use, cache counters. */
  stats() {
    this.assertUsable();
    const s = this.context.stats();
    return {
      parallel: s.parallel,
      active: s.active,
      /** Calls waiting for a generation slot (JS side: counts a call from the moment it is made). */
      queued: this.context.queued,
      /** Tokens held by all sequences (shared cells counted once per sequence). */
      cachedTokens: s.cachedTokens,
      idleSequences: s.idleSequences,
      kvCells: s.kvCells,
      kvCellsUsed: s.kvCellsUsed,
      /** llama_decode calls so far. */
      decodes: s.decodes,
      promptCache: { hits: s.promptCacheHits, stored: s.promptCacheStored, bytes: s.promptCacheBytes },
      responseCache: this.responses ? { hits: this.responses.hits, misses: this.responses.misses, entries: this.responses.size, bytes: this.responses.byteSize } : undefined,
    };
  }

  /** Tokens held in the KV cache by all sequences (the prefix cache). */
  get cachedTokens(): number {
    return this.context.stats().cachedTokens;
  }

  /** Threads and sizes the native context runs with. */
  get runtime() {
    const s = this.context.stats();
    return {
      threads: s.threads, threadsBatch: s.threadsBatch, contextSize: s.contextSize, batchSize: s.batchSize, stateBytes: s.stateBytes,
      parallel: s.parallel, cacheSize: s.kvCells, sequences: s.sequences,
    };
  }

  get isDisposed() {
    return this.disposed;
  }
}

export interface ChatSessionOptions {
  /** The system message, always kept. */
  system?: string;
  /** Most earlier turns (a user message and its reply) sent with each new message. Default: unlimited (bounded by the context). */
  maxTurns?: number;
  /** Qwen3 thinking. Default: true. */
  thinking?: boolean;
}

/**
 * A conversation: keeps the system message and the last `maxTurns` turns, and sends them with each message. The
 * prefix cache finds the earlier turns in the KV cache, so each turn decodes only what is new. When the history
 * no longer fits the context (with room for `maxTokens` of reply), the oldest turns are dropped, never the system
 * message.
 */
export class ChatSession {
  private turns: { user: string; assistant: string }[] = [];
  private readonly system: string | undefined;
  private readonly maxTurns: number;
  private thinkingDefault: boolean;

  /** @internal use model.createChat() */
  constructor(private readonly model: Model, options: ChatSessionOptions) {
    const o = optionalObject<ChatSessionOptions>("options", options);
    this.system = o.system === undefined ? undefined : checkString("system", o.system);
    this.maxTurns = checkInt("maxTurns", o.maxTurns, Number.MAX_SAFE_INTEGER, 0, Number.MAX_SAFE_INTEGER);
    this.thinkingDefault = checkBool("thinking", o.thinking, true);
  }

  /** The messages kept: the system message and the last turns. */
  get history(): ChatMessage[] {
    return this.messagesWith(this.turns);
  }

  private messagesWith(turns: { user: string; assistant: string }[], next?: string): ChatMessage[] {
    const out: ChatMessage[] = this.system !== undefined ? [{ role: "system", content: this.system }] : [];
    for (const t of turns) out.push({ role: "user", content: t.user }, { role: "assistant", content: t.assistant });
    if (next !== undefined) out.push({ role: "user", content: next });
    return out;
  }

  /** The messages that send(content) would render now (the system message, the kept turns, the new message). */
  messagesFor(content: string, options: { thinking?: boolean; maxTokens?: number } = {}): ChatMessage[] {
    let turns = this.turns.slice(-this.maxTurns || this.turns.length);
    if (this.maxTurns === 0) turns = [];
    const reserve = options.maxTokens ?? 1;
    while (turns.length && this.model.tokenize(this.model.renderChat(this.messagesWith(turns, content), { thinking: options.thinking ?? this.thinkingDefault }), { special: true }).length + reserve > this.model.contextSize) {
      turns = turns.slice(1);
    }
    return this.messagesWith(turns, content);
  }

  /** Sends a message; streams the reply's pieces. The turn is kept once the reply ends (also when stopped by `break`). */
  send(content: string, options: ChatOptions = {}): AsyncIterable<ChatPiece> & { result: Promise<GenerationResult> } {
    checkString("content", content);
    const thinking = options.thinking ?? this.thinkingDefault;
    const stream = this.model.chat(this.messagesFor(content, { thinking, maxTokens: options.maxTokens }), { ...options, thinking });
    stream.result.then(
      (r) => {
        this.turns.push({ user: content, assistant: r.text.replace(/^[\s\S]*<\/think>\s*/, "") });
        if (this.turns.length > this.maxTurns) this.turns = this.turns.slice(this.turns.length - this.maxTurns);
      },
      () => undefined,
    );
    return stream;
  }

  /** Forgets the turns (the system message stays). */
  reset(): void {
    this.turns = [];
  }

  set thinking(on: boolean) {
    this.thinkingDefault = checkBool("thinking", on, true);
  }

  get thinking(): boolean {
    return this.thinkingDefault;
  }
}

/** A short identity of a GGUF file: a hash of its header (metadata and tensor table) and size. */
async function fileIdentity(path: string, file: GgufFile): Promise<string> {
  const handle = await open(path, "r");
  try {
    const header = Buffer.alloc(Math.min(file.dataOffset, 64 << 20));
    await handle.read(header, 0, header.length, 0);
    return createHash("sha256").update(header).update(String(file.fileSize)).digest("hex").slice(0, 32);
  } finally {
    await handle.close();
  }
}

/**
 * Loads a Qwen GGUF model and creates its context and engine. `path` is a GGUF file or a model reference
 * (`hf:…`, an https URL to a GGUF) whose local copy is used, pulled first only with `pull: true`.
 */
export async function loadModel(pathOrReference: string, options: LoadModelOptions = {}): Promise<Model> {
  checkString("path", pathOrReference);
  const o = optionalObject<LoadModelOptions>("options", options);
  const signal = checkSignal("signal", o.signal);
  const path = isReference(pathOrReference)
    ? await resolveModel(pathOrReference, { pull: checkBool("pull", o.pull, false), type: o.type, onProgress: checkFunction("onPullProgress", o.onPullProgress), signal })
    : pathOrReference;
  const onProgress = checkFunction<(fraction: number) => void>("onProgress", o.onProgress);
  const threads = checkInt("threads", o.threads, availableParallelism(), 1, 1024);
  const threadsBatch = checkInt("threadsBatch", o.threadsBatch, threads, 1, 1024);
  const batchSize = checkInt("batchSize", o.batchSize, 512, 1, 1 << 16);
  const kvCacheType = checkOneOf("kvCacheType", o.kvCacheType, KV_CACHE_TYPES, "f16");
  const mmap = checkBool("mmap", o.mmap, false);
  const poll = checkInt("poll", o.poll, 50, 0, 100);
  const parallel = checkInt("parallel", o.parallel, 4, 1, 64);
  const maxQueue = checkNumber("maxQueue", o.maxQueue, Infinity, 0, Infinity);
  const requestedContext = checkInt("contextSize", o.contextSize, 0, 0, 1 << 24);
  if (o.contextSize !== undefined && requestedContext < 16) throw new QwenError("ERR_OUT_OF_RANGE", `contextSize must be at least 16, got ${requestedContext}`);
  const promptCache = optionalObject<{ maxBytes?: number; dir?: string }>("promptCache", o.promptCache);
  const promptCacheDir = promptCache.dir === undefined ? undefined : checkString("promptCache.dir", promptCache.dir);
  const promptCacheBytes = checkInt("promptCache.maxBytes", promptCache.maxBytes, o.promptCache ? 256 << 20 : 0, 0, Number.MAX_SAFE_INTEGER);
  const responseCacheOptions = o.responseCache === true ? {} : o.responseCache === false || o.responseCache === undefined ? undefined : optionalObject<ResponseCacheOptions>("responseCache", o.responseCache);
  const responses = responseCacheOptions
    ? new ResponseCache<RecordedGeneration | ClassifyResult>(
        checkInt("responseCache.maxEntries", responseCacheOptions.maxEntries, 256, 1, 1 << 24),
        checkInt("responseCache.maxBytes", responseCacheOptions.maxBytes, 16 << 20, 1, Number.MAX_SAFE_INTEGER),
      )
    : undefined;
  if (signal?.aborted) throw abortError(signal);

  const file = await readGguf(path);
  checkArchitecture(file, path);
  const identity = `${await fileIdentity(path, file)}-${kvCacheType}`;
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
  const cacheSize = checkInt("cacheSize", o.cacheSize, contextSize * parallel, contextSize, 1 << 26);
  const nativeContext = new addon.AddonContext(nativeModel);
  const context = new Context(nativeContext, parallel, maxQueue);
  try {
    if (signal?.aborted) throw abortError(signal);
    await nativeContext.init({
      parallel, contextSize, cacheSize, batchSize, threads, threadsBatch, poll, kvType: KV_GGML_TYPE[kvCacheType],
      // CPU flash attention computes in F16; an F32 cache is asked for exactness, so it gets the plain F32 path (0 = disabled, -1 = auto)
      flashAttention: kvCacheType === "f32" ? 0 : -1,
      promptCacheBytes, promptCacheDir, modelIdentity: identity,
    }, context.onEvents);
  } catch (err) {
    nativeContext.dispose();
    nativeModel.dispose();
    throw fromNative(err);
  }
  onProgress?.(1);
  return new Model(path, file, nativeModel, context, contextSize, identity, responses);
}
export type ModelStats = ReturnType<Model["stats"]>;
