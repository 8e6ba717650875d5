/** Chat prompts rendered with the model's own Jinja template, and the reasoning/answer split of Qwen3 replies. */
import { Template } from "@huggingface/jinja";
import { QwenError } from "./errors.js";
import type { Piece, TokenLogprob } from "./generation.js";
import { ToolCallStreamParser, validateTools, type ToolCall, type ToolDefinition } from "./tools.js";

/** A message in OpenAI's shape. */
export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  /** Text, or OpenAI content parts of type "text" (joined). May be null or absent on an assistant message with
   * tool_calls. */
  content: string | null | Array<{ type: "text"; text: string }>;
  /** Assistant: the calls it made; `arguments` may be JSON text (OpenAI) or an object. */
  tool_calls?: Array<{ id?: string; type?: "function"; function: { name: string; arguments: string | Record<string, unknown> } }>;
  /** Assistant: Qwen3 reasoning, rendered in `<think>…</think>` where the template keeps it. */
  reasoning_content?: string | null;
  /** Tool: the id of the call this message answers. */
  tool_call_id?: string;
  /** Tool (or user): a name, passed to the template. */
  name?: string;
}

export interface ChatPiece {
  /** "reasoning": inside `<think>…</think>`; "answer": the reply proper; "tool_call": a complete call the model
   * made (with `tools`), its text empty. */
  type: "reasoning" | "answer" | "tool_call";
  text: string;
  /** With `logprobs: true`: the tokens of this piece. */
  logprobs?: TokenLogprob[];
  toolCall?: ToolCall;
}

export interface RenderChatOptions {
  thinking: boolean;
  bosToken: string;
  eosToken: string;
  /** Tool definitions for the template's tool section (Qwen's templates list them in the system turn). */
  tools?: ToolDefinition[];
}

const templates = new Map<string, Template>();
const ROLES = ["system", "user", "assistant", "tool"];

/** A message as templates expect it: content a string, tool call arguments a mapping (when they are JSON). */
function templateMessage(m: unknown, i: number): Record<string, unknown> {
  const where = `messages[${i}]`;
  if (!m || typeof m !== "object" || Array.isArray(m)) throw new QwenError("ERR_INVALID_ARG_TYPE", `${where} must be { role: string, content: string }`);
  const msg = m as Record<string, unknown>;
  if (typeof msg.role !== "string" || !ROLES.includes(msg.role)) {
    throw new QwenError(typeof msg.role === "string" ? "ERR_INVALID_ARG_VALUE" : "ERR_INVALID_ARG_TYPE", `${where}.role must be one of ${ROLES.join(", ")}, got ${JSON.stringify(msg.role ?? null)}`);
  }
  const out: Record<string, unknown> = { role: msg.role };
  const calls = msg.tool_calls;
  const hasCalls = msg.role === "assistant" && Array.isArray(calls) && calls.length > 0;
  let content = msg.content;
  if (Array.isArray(content)) {
    // OpenAI content parts: text only (this is a text model)
    content = content.map((part, j) => {
      const p = part as { type?: unknown; text?: unknown };
      if (!p || p.type !== "text" || typeof p.text !== "string") throw new QwenError("ERR_INVALID_ARG_VALUE", `${where}.content[${j}] must be { type: "text", text: string }`);
      return p.text;
    }).join("");
  }
  if ((content === null || content === undefined) && hasCalls) content = "";
  if (typeof content !== "string") {
    throw new QwenError("ERR_INVALID_ARG_TYPE", `${where} must be { role: string, content: string }${msg.role === "assistant" ? " (content may be null only with tool_calls)" : ""}`);
  }
  out.content = content;
  if (calls !== undefined && calls !== null) {
    if (msg.role !== "assistant") throw new QwenError("ERR_INVALID_ARG_VALUE", `${where}.tool_calls is allowed only on assistant messages`);
    if (!Array.isArray(calls)) throw new QwenError("ERR_INVALID_ARG_TYPE", `${where}.tool_calls must be an array`);
    if (calls.length) {
      out.tool_calls = calls.map((c, j) => {
        const call = c as { id?: unknown; type?: unknown; function?: { name?: unknown; arguments?: unknown } };
        const fn = call?.function;
        if (!fn || typeof fn.name !== "string") throw new QwenError("ERR_INVALID_ARG_VALUE", `${where}.tool_calls[${j}] must be { type: "function", function: { name, arguments } }`);
        let args = fn.arguments ?? {};
        if (typeof args === "string") {
          // OpenAI sends JSON text; templates want a mapping (Qwen's writes strings verbatim, others tojson them)
          try {
            const parsed = JSON.parse(args);
            if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) args = parsed;
          } catch {
            // not JSON: passed through as text, which Qwen's template writes as it is
          }
        } else if (typeof args !== "object" || Array.isArray(args)) {
          throw new QwenError("ERR_INVALID_ARG_TYPE", `${where}.tool_calls[${j}].function.arguments must be a JSON string or an object`);
        }
        return { id: call.id, type: "function", function: { name: fn.name, arguments: args } };
      });
    }
  }
  if (msg.reasoning_content !== undefined && msg.reasoning_content !== null) {
    if (typeof msg.reasoning_content !== "string") throw new QwenError("ERR_INVALID_ARG_TYPE", `${where}.reasoning_content must be a string`);
    out.reasoning_content = msg.reasoning_content;
  }
  if (msg.tool_call_id !== undefined) {
    if (typeof msg.tool_call_id !== "string") throw new QwenError("ERR_INVALID_ARG_TYPE", `${where}.tool_call_id must be a string`);
    out.tool_call_id = msg.tool_call_id;
  }
  if (typeof msg.name === "string") out.name = msg.name;
  return out;
}

/** Renders messages with a chat template, ending with the assistant's generation prompt. */
/** Each message's text as the template receives it (content parts joined), in order. */
export function chatContents(messages: ChatMessage[]): string[] {
  return messages.map((m, i) => templateMessage(m, i).content as string);
}

export function renderChat(template: string, messages: ChatMessage[], options: RenderChatOptions): string {
  if (!Array.isArray(messages) || messages.length === 0) throw new QwenError("ERR_INVALID_ARG_VALUE", "messages must be a non-empty array");
  const prepared = messages.map(templateMessage);
  const tools = options.tools === undefined || options.tools.length === 0 ? undefined : validateTools(options.tools);
  let compiled = templates.get(template);
  try {
    if (!compiled) {
      compiled = new Template(template);
      templates.set(template, compiled);
    }
    return compiled.render({
      messages: prepared,
      // absent rather than empty: templates test `if tools`
      ...(tools ? { tools } : {}),
      add_generation_prompt: true,
      enable_thinking: options.thinking,
      bos_token: options.bosToken,
      eos_token: options.eosToken,
    });
  } catch (err) {
    throw new QwenError("ERR_CHAT_TEMPLATE", `the chat template failed to render: ${(err as Error).message}`, { cause: err });
  }
}

const OPEN = "<think>";
const CLOSE = "</think>";

/**
 * Tags text pieces as reasoning or answer (`<think>` and `</think>` are single tokens, so they arrive whole); with
 * `tools`, turns Qwen's `<tool_call>{…}</tool_call>` blocks in the answer into tool_call pieces.
 */
export function splitReasoning(inner: AsyncIterator<Piece>, startsInReasoning: boolean, options: { tools?: boolean; onToolCall?: (call: ToolCall) => void } = {}): AsyncIterator<ChatPiece> {
  let reasoning = startsInReasoning;
  const ready: ChatPiece[] = [];
  const calls = options.tools ? new ToolCallStreamParser() : undefined;
  const answer = (text: string, logprobs?: TokenLogprob[]) => {
    if (!calls) return void ready.push({ type: "answer", text, logprobs });
    const out = calls.push(text);
    if (out.content || logprobs) ready.push({ type: "answer", text: out.content, logprobs });
    for (const toolCall of out.toolCalls) {
      options.onToolCall?.(toolCall);
      ready.push({ type: "tool_call", text: "", toolCall });
    }
  };
  const emit = (piece: Piece) => {
    let rest = piece.text;
    let logprobs = piece.logprobs; // on the first part of a piece that a tag splits
    if (!rest && logprobs) {
      // tokens whose text was held back (a stop string's start) or empty: keep their log-probabilities
      if (reasoning) ready.push({ type: "reasoning", text: "", logprobs });
      else answer("", logprobs);
    }
    while (rest.length) {
      const tag = reasoning ? CLOSE : OPEN;
      const at = rest.indexOf(tag);
      const chunk = at < 0 ? rest : rest.slice(0, at);
      if (chunk || logprobs) {
        if (reasoning) ready.push({ type: "reasoning", text: chunk, logprobs });
        else answer(chunk, logprobs);
        logprobs = undefined;
      }
      if (at < 0) break;
      reasoning = !reasoning;
      rest = rest.slice(at + tag.length);
    }
  };
  const flush = () => {
    if (!calls) return;
    const out = calls.flush();
    if (out.content) ready.push({ type: "answer", text: out.content });
    for (const toolCall of out.toolCalls) {
      options.onToolCall?.(toolCall);
      ready.push({ type: "tool_call", text: "", toolCall });
    }
  };
  let finished = false;
  return {
    async next() {
      while (!ready.length) {
        if (finished) return { value: undefined, done: true };
        const r = await inner.next();
        if (r.done) {
          finished = true;
          flush();
          continue;
        }
        emit(r.value);
      }
      return { value: ready.shift()!, done: false };
    },
    async return() {
      await inner.return?.();
      return { value: undefined, done: true };
    },
  };
}
