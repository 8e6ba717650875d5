/** Chat prompts rendered with the model's own Jinja template, and the reasoning/answer split of Qwen3 replies. */
import { Template } from "@huggingface/jinja";
import { QwenError } from "./errors.js";

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string;
}

export interface ChatPiece {
  /** "reasoning": inside `<think>…</think>`; "answer": the reply proper. */
  type: "reasoning" | "answer";
  text: string;
}

const templates = new Map<string, Template>();

/** Renders messages with a chat template, ending with the assistant's generation prompt. */
export function renderChat(template: string, messages: ChatMessage[], options: { thinking: boolean; bosToken: string; eosToken: string }): string {
  if (!Array.isArray(messages) || messages.length === 0) throw new QwenError("ERR_INVALID_ARG_VALUE", "messages must be a non-empty array");
  messages.forEach((m, i) => {
    if (!m || typeof m.role !== "string" || typeof m.content !== "string") {
      throw new QwenError("ERR_INVALID_ARG_TYPE", `messages[${i}] must be { role: string, content: string }`);
    }
  });
  let compiled = templates.get(template);
  try {
    if (!compiled) {
      compiled = new Template(template);
      templates.set(template, compiled);
    }
    return compiled.render({
      messages,
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

/** Tags text pieces as reasoning or answer; `<think>` and `</think>` are single tokens, so they arrive whole. */
export function splitReasoning(inner: AsyncIterator<string>, startsInReasoning: boolean): AsyncIterator<ChatPiece> {
  let reasoning = startsInReasoning;
  const ready: ChatPiece[] = [];
  const emit = (text: string) => {
    let rest = text;
    while (rest.length) {
      const tag = reasoning ? CLOSE : OPEN;
      const at = rest.indexOf(tag);
      const chunk = at < 0 ? rest : rest.slice(0, at);
      if (chunk) ready.push({ type: reasoning ? "reasoning" : "answer", text: chunk });
      if (at < 0) break;
      reasoning = !reasoning;
      rest = rest.slice(at + tag.length);
    }
  };
  return {
    async next() {
      while (!ready.length) {
        const r = await inner.next();
        if (r.done) return { value: undefined, done: true };
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
