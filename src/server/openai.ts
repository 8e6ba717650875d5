/** The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, and /v1/classify (an extension). */
import { randomUUID } from "node:crypto";
import type { FastifyInstance } from "fastify";
import type { ChatMessage } from "../chat.js";
import type { ChatOptions, GenerationResult, Model, SamplingOptions, TokenLogprob, ToolCall, ToolChoice, ToolDefinition } from "../model.js";
import { ApiError, badRequest, toApiError } from "./errors.js";
import { ClientGone, drive, SseWriter, type ServerState } from "./generation.js";
import { chatCompletionBody, classifyBody, completionBody } from "./schemas.js";

type Nullable<T> = { [K in keyof T]?: T[K] | null };

export type SamplingBody = Nullable<{
  model: string; temperature: number; top_p: number; top_k: number; min_p: number; max_tokens: number; stop: string | string[];
  seed: number; presence_penalty: number; frequency_penalty: number; repeat_penalty: number; logit_bias: Record<string, number>;
  n: number; stream: boolean; stream_options: { include_usage?: boolean | null }; grammar: string; ignore_eos: boolean;
}>;

interface InMessage {
  role: "system" | "developer" | "user" | "assistant" | "tool";
  content?: string | { type: string; text?: string }[] | null;
  name?: string;
  tool_call_id?: string;
  tool_calls?: ChatMessage["tool_calls"] | null;
}

/** A chat message whose content parts are already joined into text (what the length precheck counts). */
export type TextMessage = ChatMessage & { content: string };

type ChatBody = SamplingBody & { messages: InMessage[] } & Nullable<{
  max_completion_tokens: number; logprobs: boolean; top_logprobs: number;
  response_format: { type: "text" | "json_object" | "json_schema"; json_schema?: { name?: string; schema?: object; strict?: boolean | null } };
  tools: ToolDefinition[]; tool_choice: ToolChoice; chat_template_kwargs: { enable_thinking?: boolean | null }; thinking: boolean; reasoning_budget: number;
}>;

type CompletionBody = SamplingBody & { prompt: string | string[] | number[] } & Nullable<{ logprobs: number; echo: boolean; suffix: string; best_of: number }>;

const undef = <T>(v: T | null | undefined): T | undefined => (v === null ? undefined : v);

/** Sampling fields of a request → model options. */
export function samplingOptions(b: SamplingBody): SamplingOptions {
  if (b.n != null && b.n > 1) throw badRequest(`n = ${b.n} is not supported: this server generates one choice per request (send n requests)`, "n", "unsupported_value");
  const stop = undef(b.stop);
  let logitBias: Record<number, number> | undefined;
  if (b.logit_bias) logitBias = Object.fromEntries(Object.entries(b.logit_bias).map(([k, v]) => [Number(k), v]));
  return {
    maxTokens: undef(b.max_tokens), temperature: undef(b.temperature), topP: undef(b.top_p), topK: undef(b.top_k), minP: undef(b.min_p),
    stop: stop === undefined ? undefined : typeof stop === "string" ? [stop] : stop, seed: undef(b.seed),
    presencePenalty: undef(b.presence_penalty), frequencyPenalty: undef(b.frequency_penalty), repeatPenalty: undef(b.repeat_penalty),
    logitBias, grammar: undef(b.grammar), ignoreEos: undef(b.ignore_eos),
  };
}

/** OpenAI messages → the model's: content parts joined, `developer` read as `system`, tool fields passed through. */
function toMessages(messages: InMessage[]): TextMessage[] {
  return messages.map((m, i) => {
    let content: string;
    if (typeof m.content === "string") content = m.content;
    else if (m.content == null) content = "";
    else {
      const other = m.content.find((p) => p.type !== "text");
      if (other) throw badRequest(`messages[${i}].content has a part of type ${JSON.stringify(other.type)}; only text parts are supported`, `messages[${i}].content`, "unsupported_content");
      content = m.content.map((p) => p.text ?? "").join("");
    }
    const out: TextMessage = { role: m.role === "developer" ? "system" : m.role, content };
    if (m.tool_calls) out.tool_calls = m.tool_calls;
    if (m.tool_call_id !== undefined) out.tool_call_id = m.tool_call_id;
    if (m.name !== undefined) out.name = m.name;
    return out;
  });
}

function chatOptions(b: ChatBody): ChatOptions {
  const o: ChatOptions = samplingOptions(b);
  if (b.max_completion_tokens != null) o.maxTokens = b.max_completion_tokens;
  const thinking = undef(b.chat_template_kwargs?.enable_thinking) ?? undef(b.thinking);
  if (thinking !== undefined) o.thinking = thinking;
  // llama-server's convention: -1 unlimited, 0 no thinking at all, N > 0 at most N tokens of thinking
  if (b.reasoning_budget === 0) o.thinking = false;
  else if (b.reasoning_budget != null && b.reasoning_budget > 0) o.reasoningBudget = b.reasoning_budget;
  if (b.logprobs) {
    o.logprobs = true;
    if (b.top_logprobs != null) o.topLogprobs = b.top_logprobs;
  } else if (b.top_logprobs != null && b.top_logprobs > 0) {
    throw badRequest("top_logprobs needs logprobs: true", "top_logprobs", "invalid_value");
  }
  const rf = b.response_format;
  if (rf?.type === "json_object") o.jsonSchema = { type: "object" };
  else if (rf?.type === "json_schema") {
    if (!rf.json_schema?.schema) throw badRequest("response_format.json_schema.schema is required with type json_schema", "response_format.json_schema.schema", "invalid_value");
    o.jsonSchema = rf.json_schema.schema;
  }
  if (o.jsonSchema && o.grammar) throw badRequest("give either grammar or response_format, not both", "grammar", "invalid_value");
  if (b.tools?.length) o.tools = b.tools;
  if (b.tool_choice != null) {
    if (!b.tools?.length && b.tool_choice !== "none") throw badRequest("tool_choice needs tools", "tool_choice", "invalid_value");
    o.toolChoice = b.tool_choice;
  }
  return o;
}

export const newId = (prefix: string) => `${prefix}-${randomUUID().replace(/-/g, "")}`;

/** OpenAI's shape of a token's log-probability (chat `logprobs.content[]`). */
interface OpenAILogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

const toOpenAILogprobs = (list: TokenLogprob[]): OpenAILogprob[] =>
  list.map((l) => ({ token: l.token, logprob: l.logprob, bytes: l.bytes, top_logprobs: l.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes })) }));

/** The legacy completions shape of the same: parallel arrays, text offsets counted from `offset`. */
function toCompletionLogprobs(list: TokenLogprob[], offset: number) {
  const text_offset: number[] = [];
  let at = offset;
  for (const l of list) {
    text_offset.push(at);
    at += l.token.length;
  }
  return {
    tokens: list.map((l) => l.token), token_logprobs: list.map((l) => l.logprob),
    top_logprobs: list.map((l) => Object.fromEntries(l.top.map((t) => [t.token, t.logprob]))), text_offset,
  };
}

export function usage(r: GenerationResult) {
  const t = r.timings;
  return {
    prompt_tokens: t.promptTokens, completion_tokens: t.genTokens, total_tokens: t.promptTokens + t.genTokens,
    prompt_tokens_details: { cached_tokens: t.cachedTokens },
  };
}

/** llama-server's `timings` object (prompt_n counts the prompt tokens decoded, cache_n those reused). */
export function timings(r: GenerationResult) {
  const t = r.timings;
  const promptN = Math.max(0, t.promptTokens - t.cachedTokens);
  const per = (ms: number, n: number) => (n > 0 ? ms / n : 0);
  const rate = (ms: number, n: number) => (ms > 0 ? (1000 * n) / ms : 0);
  return {
    prompt_n: promptN, prompt_ms: t.promptMs, prompt_per_token_ms: per(t.promptMs, promptN), prompt_per_second: rate(t.promptMs, promptN),
    predicted_n: t.genTokens, predicted_ms: t.genMs, predicted_per_token_ms: per(t.genMs, t.genTokens), predicted_per_second: rate(t.genMs, t.genTokens),
    cache_n: t.cachedTokens, response_cached: t.cached,
  };
}

export function finishReason(r: GenerationResult & { toolCalls?: ToolCall[] }): "stop" | "length" | "tool_calls" {
  if (r.toolCalls?.length) return "tool_calls";
  return r.finishReason === "length" ? "length" : "stop"; // "abort" happens only at shutdown: the reply ends there
}

/**
 * A cheap lower bound of the prompt's length: when even that does not fit, answer 400 before queueing. The bound from
 * the texts' bytes comes first, so an oversized prompt is refused without tokenizing it on the event loop (3 MB take
 * over a second there, which every other client's stream would wait for).
 */
export function precheckLength(model: Model, texts: string[], param: string) {
  let n = 0;
  for (const t of texts) n += model.minTokens(t);
  if (n + 1 <= model.contextSize) {
    n = 0;
    for (const t of texts) n += model.tokenize(t, { special: true }).length;
  }
  if (n + 1 > model.contextSize) {
    throw new ApiError(400, `the prompt has at least ${n} tokens; with at least 1 token of reply it does not fit the context size of ${model.contextSize} tokens`, "invalid_request_error", param, "context_length_exceeded");
  }
}

/** Errors once the SSE headers went out: an error event; a gone client gets nothing. */
async function streamFailed(sse: SseWriter, err: unknown) {
  if (err instanceof ClientGone) return;
  if (!sse.committed) throw err;
  await sse.error(toApiError(err).body());
}

export function registerOpenAI(app: FastifyInstance, state: ServerState) {
  const auth = { auth: true };

  app.get("/v1/models", { config: auth }, async () => {
    const model = state.model;
    return {
      object: "list",
      data: [{
        id: state.modelId, object: "model", created: Math.floor(Date.now() / 1000), owned_by: "qwen-gguf",
        ...(model && { meta: { architecture: model.info.architecture, parameters: model.info.parameters, quantization: model.info.quantization, context_size: model.contextSize, context_length_trained: model.info.contextLengthTrained, vocab_size: model.info.vocabSize } }),
      }],
    };
  });

  app.post("/v1/chat/completions", { config: auth, schema: { body: chatCompletionBody }, sse: "manual" }, async (req, reply) => {
    const body = req.body as ChatBody;
    const model = state.ready();
    state.checkModelName(body.model);
    const messages = toMessages(body.messages);
    const options = chatOptions(body);
    options.maxTokens ??= model.contextSize; // like llama-server: without a limit, the reply may fill the context
    precheckLength(model, messages.map((m) => m.content), "messages");
    const id = newId("chatcmpl");
    const created = Math.floor(Date.now() / 1000);
    const base = { id, created, model: state.modelId, system_fingerprint: "qwen-gguf" };
    const start = (signal: AbortSignal) => model.chat(messages, { ...options, signal });

    if (!body.stream) {
      let content = "", reasoning = "";
      const { result } = await drive(state, reply, {
        endpoint: "chat", start,
        onPiece(p) {
          if (p.type === "reasoning") reasoning += p.text;
          else if (p.type === "answer") content += p.text;
        },
      });
      const calls = result.toolCalls ?? [];
      return {
        ...base, object: "chat.completion",
        choices: [{
          index: 0,
          message: {
            role: "assistant", content: calls.length && !content ? null : content,
            ...(reasoning && { reasoning_content: reasoning }), ...(calls.length && { tool_calls: calls }),
          },
          logprobs: options.logprobs ? { content: toOpenAILogprobs(result.logprobs ?? []) } : null,
          finish_reason: finishReason(result),
        }],
        usage: usage(result), timings: timings(result),
      };
    }

    const sse = new SseWriter(reply);
    const chunk = (delta: object, finish: string | null = null, extra: object = {}, logprobs: TokenLogprob[] | null = null) => ({
      ...base, object: "chat.completion.chunk", choices: [{ index: 0, delta, logprobs: logprobs && { content: toOpenAILogprobs(logprobs) }, finish_reason: finish }], ...extra,
    });
    let roleSent = false;
    let toolIndex = 0;
    const sendRole = async () => {
      if (roleSent) return;
      roleSent = true;
      await sse.data(chunk({ role: "assistant", content: "" }));
    };
    try {
      const { result } = await drive(state, reply, {
        endpoint: "chat", start,
        onWaiting: () => sse.ping(),
        async onPiece(p) {
          await sendRole();
          const lp = p.logprobs ?? null;
          if (p.type === "reasoning") await sse.data(chunk({ reasoning_content: p.text }, null, {}, lp));
          else if (p.type === "tool_call" && p.toolCall) await sse.data(chunk({ tool_calls: [{ index: toolIndex++, ...p.toolCall }] }, null, {}, lp));
          else await sse.data(chunk({ content: p.text }, null, {}, lp));
        },
      });
      await sendRole();
      await sse.data(chunk({}, finishReason(result), { timings: timings(result) }));
      if (body.stream_options?.include_usage) await sse.data({ ...base, object: "chat.completion.chunk", choices: [], usage: usage(result) });
      await sse.done();
    } catch (err) {
      await streamFailed(sse, err);
    }
  });

  app.post("/v1/completions", { config: auth, schema: { body: completionBody }, sse: "manual" }, async (req, reply) => {
    const body = req.body as CompletionBody;
    const model = state.ready();
    state.checkModelName(body.model);
    const prompts = Array.isArray(body.prompt) ? body.prompt : [body.prompt];
    if (prompts.length !== 1) throw badRequest(`prompt has ${prompts.length} entries; this server completes one prompt per request`, "prompt", "unsupported_value");
    if (typeof prompts[0] !== "string") throw badRequest("prompt must be a string: token-id prompts are not supported", "prompt", "unsupported_value");
    const prompt = prompts[0];
    if (body.suffix) throw badRequest("suffix (fill-in-the-middle) is not supported", "suffix", "unsupported_value");
    if (body.best_of != null && body.best_of > 1) throw badRequest(`best_of = ${body.best_of} is not supported`, "best_of", "unsupported_value");
    const options = samplingOptions(body);
    options.maxTokens ??= model.contextSize;
    const wantLogprobs = body.logprobs != null;
    if (wantLogprobs) {
      options.logprobs = true;
      options.topLogprobs = body.logprobs!;
    }
    precheckLength(model, [prompt], "prompt");
    const id = newId("cmpl");
    const created = Math.floor(Date.now() / 1000);
    const base = { id, object: "text_completion", created, model: state.modelId, system_fingerprint: "qwen-gguf" };
    const start = (signal: AbortSignal) => model.complete(prompt, { ...options, signal });
    const echo = body.echo ? prompt : "";

    if (!body.stream) {
      let text = echo;
      const { result } = await drive(state, reply, {
        endpoint: "completions", start,
        onPiece(p) {
          text += p.text;
        },
      });
      return {
        ...base,
        choices: [{ index: 0, text, logprobs: wantLogprobs ? toCompletionLogprobs(result.logprobs ?? [], echo.length) : null, finish_reason: finishReason(result) }],
        usage: usage(result), timings: timings(result),
      };
    }

    const sse = new SseWriter(reply);
    const chunk = (text: string, finish: string | null = null, extra: object = {}, logprobs: object | null = null) => ({ ...base, choices: [{ index: 0, text, logprobs, finish_reason: finish }], ...extra });
    let offset = echo.length;
    try {
      if (echo) await sse.data(chunk(echo));
      const { result } = await drive(state, reply, {
        endpoint: "completions", start,
        onWaiting: () => sse.ping(),
        async onPiece(p) {
          await sse.data(chunk(p.text, null, {}, wantLogprobs && p.logprobs ? toCompletionLogprobs(p.logprobs, offset) : null));
          offset += p.text.length;
        },
      });
      await sse.data(chunk("", finishReason(result), { timings: timings(result) }));
      if (body.stream_options?.include_usage) await sse.data({ ...base, choices: [], usage: usage(result) });
      await sse.done();
    } catch (err) {
      await streamFailed(sse, err);
    }
  });

  app.post("/v1/classify", { config: auth, schema: { body: classifyBody } }, async (req, reply) => {
    const body = req.body as { model?: string | null; input: string | string[]; labels: string[]; instruction?: string | null };
    const model = state.ready();
    state.checkModelName(body.model);
    const inputs = typeof body.input === "string" ? [body.input] : body.input;
    if (new Set(body.labels).size !== body.labels.length) throw badRequest("labels must be distinct", "labels", "invalid_value");
    const controller = new AbortController();
    const onClose = () => {
      if (!reply.raw.writableFinished) controller.abort(new ClientGone());
    };
    reply.raw.on("close", onClose);
    try {
      const results = [];
      for (const [index, text] of inputs.entries()) {
        const r = await model.classify(text, { labels: body.labels, instruction: undef(body.instruction), signal: controller.signal });
        results.push({ index, label: r.label, probabilities: r.probabilities });
      }
      return { object: "list", model: state.modelId, results };
    } catch (err) {
      throw controller.signal.aborted ? new ClientGone() : err;
    } finally {
      reply.raw.off("close", onClose);
    }
  });
}
