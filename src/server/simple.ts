/**
 * The seeds' own shapes: `POST /generate` (seed 001: `{ prompt, max_new_tokens, … }` → `{ text, … }`) and
 * `GET /stream?q=…` (seed 000's typewriter: each SSE event's data is the JSON-encoded piece, so newlines survive).
 * Both send the prompt as one user message through the chat template (thinking off unless asked); `raw: true` on
 * /generate completes the prompt as it is.
 */
import type { FastifyInstance } from "fastify";
import type { ChatPiece } from "../chat.js";
import type { ChatOptions } from "../model.js";
import { drive, SseWriter, type ModelStream, type ServerState, ClientGone } from "./generation.js";
import { finishReason, precheckLength, samplingOptions, timings, usage, type SamplingBody, type TextMessage } from "./openai.js";
import { generateBody, streamQuery } from "./schemas.js";
import { toApiError } from "./errors.js";

type GenerateBody = SamplingBody & { prompt: string; max_new_tokens?: number | null; repetition_penalty?: number | null; do_sample?: boolean | null; thinking?: boolean | null; raw?: boolean | null; system?: string | null };

/** Starts the reply as chat pieces either way: a raw completion's text all counts as answer. */
function startFor(state: ServerState, prompt: string, options: ChatOptions, raw: boolean, system?: string): (signal: AbortSignal) => ModelStream<ChatPiece> {
  const model = state.ready();
  options.maxTokens ??= model.contextSize; // without a limit the reply may fill the context
  if (raw) {
    precheckLength(model, [prompt], "prompt");
    return (signal) => {
      const inner = model.stream(prompt, { ...options, signal });
      return { result: inner.result, async *[Symbol.asyncIterator]() { for await (const text of inner) yield { type: "answer", text }; } };
    };
  }
  const messages: TextMessage[] = [...(system ? [{ role: "system" as const, content: system }] : []), { role: "user", content: prompt }];
  precheckLength(model, messages.map((m) => m.content), "prompt");
  return (signal) => model.chat(messages, { ...options, signal });
}

export function registerSimple(app: FastifyInstance, state: ServerState) {
  app.post("/generate", { config: { auth: true }, schema: { body: generateBody } }, async (req, reply) => {
    const b = req.body as GenerateBody;
    state.ready();
    state.checkModelName(b.model);
    const options: ChatOptions = samplingOptions(b);
    if (b.max_new_tokens != null) options.maxTokens = b.max_new_tokens;
    if (b.repetition_penalty != null) options.repeatPenalty = b.repetition_penalty;
    if (b.do_sample === false) options.temperature = 0;
    options.thinking = b.thinking ?? false;
    const start = startFor(state, b.prompt, options, b.raw ?? false, b.system ?? undefined);
    let text = "", reasoning = "";
    const { result } = await drive(state, reply, {
      endpoint: "generate", start,
      onPiece(p) {
        if (p.type === "reasoning") reasoning += p.text;
        else if (p.type === "answer") text += p.text;
      },
    });
    return { text, ...(reasoning && { reasoning }), finish_reason: finishReason(result), model: state.modelId, usage: usage(result), timings: timings(result) };
  });

  app.get("/stream", { config: { auth: true }, schema: { querystring: streamQuery }, sse: "manual" }, async (req, reply) => {
    const q = req.query as Record<string, string | undefined>;
    const num = (v: string | undefined) => (v === undefined ? undefined : Number(v));
    state.ready();
    const options: ChatOptions = {
      maxTokens: num(q.max_new_tokens), temperature: num(q.temperature), topP: num(q.top_p), topK: num(q.top_k), seed: num(q.seed),
      thinking: q.thinking === "true" || q.thinking === "1",
    };
    const start = startFor(state, q.q!, options, false);
    const sse = new SseWriter(reply);
    try {
      const { result } = await drive(state, reply, {
        endpoint: "stream", start,
        onWaiting: () => sse.ping(),
        // reasoning as its own event type, so a typewriter page that listens to plain messages shows the answer only
        onPiece: (p) => (p.type === "reasoning" ? sse.data(p.text, "reasoning") : sse.data(p.text)),
      });
      await sse.data({ finish_reason: finishReason(result), usage: usage(result), timings: timings(result) }, "done");
    } catch (err) {
      if (err instanceof ClientGone) return;
      if (!sse.committed) throw err;
      await sse.data(toApiError(err).body(), "error");
    }
  });
}
