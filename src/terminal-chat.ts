/**
 * The `chat` command's loop: streams replies (reasoning dimmed), keeps the conversation, `/reset`, `/think on|off`,
 * `/save file.md`. Ctrl-C stops the current reply; Ctrl-C with no reply running, or Ctrl-D (end of input), exits.
 * Works on a terminal and on piped stdin (one message per line), which is how it is tested.
 */
import { writeFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import type { ChatOptions, Model } from "./model.js";
import type { ChatMessage } from "./chat.js";
import { QwenError } from "./errors.js";

export interface TerminalChatOptions {
  input?: NodeJS.ReadableStream;
  output?: NodeJS.WritableStream;
  /** System prompt, kept across /reset. */
  system?: string;
  /** Qwen3 thinking at the start (`/think on|off` switches). Default: true. */
  thinking?: boolean;
  /** ANSI styling (dim reasoning). Default: whether output is a TTY. */
  color?: boolean;
  /** Sampling options of every reply (maxTokens, temperature, …). */
  sampling?: Omit<ChatOptions, "thinking" | "signal">;
  /** Also stop/exit on the process's SIGINT (for piped stdin, where readline sees no Ctrl-C). Default: input is process.stdin. */
  handleSignals?: boolean;
}

const HELP = "commands: /reset (new conversation), /think on|off, /save file.md, /help, /exit; Ctrl-C stops a reply, Ctrl-D exits";

interface Turn { role: "system" | "user" | "assistant"; content: string; reasoning?: string }

/** The conversation as Markdown (for /save). */
export function conversationMarkdown(turns: Turn[], title: string): string {
  const parts = [`# ${title}`, ""];
  for (const t of turns) {
    parts.push(`## ${t.role[0].toUpperCase()}${t.role.slice(1)}`, "");
    if (t.reasoning) parts.push("<details><summary>Reasoning</summary>", "", t.reasoning.trim(), "", "</details>", "");
    parts.push(t.content.trim(), "");
  }
  return parts.join("\n");
}

export async function runTerminalChat(model: Model, options: TerminalChatOptions = {}): Promise<void> {
  const input = options.input ?? process.stdin;
  const output = options.output ?? process.stdout;
  const tty = Boolean((output as { isTTY?: boolean }).isTTY) && Boolean((input as { isTTY?: boolean }).isTTY);
  const color = options.color ?? Boolean((output as { isTTY?: boolean }).isTTY);
  const dim = (s: string) => (color ? `\x1b[2m${s}\x1b[22m` : s);
  const write = (s: string) => void output.write(s);
  let thinking = options.thinking ?? true;
  const system: Turn[] = options.system ? [{ role: "system", content: options.system }] : [];
  let turns: Turn[] = [...system];
  let current: AbortController | undefined;
  let exiting = false;

  const rl = createInterface({ input, output: tty ? output : undefined, terminal: tty, prompt: "> " });
  const interrupt = () => {
    if (current && !current.signal.aborted) current.abort(new Error("stopped by Ctrl-C"));
    else {
      exiting = true; // a second Ctrl-C, or one with no reply running
      rl.close();
    }
  };
  rl.on("SIGINT", interrupt);
  const handleSignals = options.handleSignals ?? input === process.stdin;
  if (handleSignals) process.on("SIGINT", interrupt);

  const name = model.info.name ?? model.path;
  write(dim(`chatting with ${name} (thinking ${thinking ? "on" : "off"}); ${HELP}\n`));

  async function reply(text: string) {
    turns.push({ role: "user", content: text });
    const controller = new AbortController();
    current = controller;
    let answer = "", reasoning = "", inReasoning = false;
    const t0 = performance.now();
    try {
      const messages: ChatMessage[] = turns.map((t) => ({ role: t.role, content: t.content }));
      const stream = model.chat(messages, { ...options.sampling, thinking, signal: controller.signal });
      for await (const piece of stream) {
        if (piece.type === "reasoning") {
          if (!inReasoning && !color) write("<think>\n");
          inReasoning = true;
          reasoning += piece.text;
          write(dim(piece.text));
        } else {
          if (inReasoning) write(color ? "\n" : "\n</think>\n");
          inReasoning = false;
          answer += piece.text;
          write(piece.text);
        }
      }
      if (inReasoning && !color) write("\n</think>");
      const r = await stream.result;
      const s = (performance.now() - t0) / 1000;
      write("\n" + dim(`(${r.timings.genTokens} tokens, ${(r.timings.genTokens / Math.max(s, 1e-3)).toFixed(1)} tok/s${r.finishReason === "length" ? ", stopped at the token limit" : ""})`) + "\n");
    } catch (err) {
      if ((err as QwenError)?.code !== "ABORT_ERR") {
        turns.pop(); // the model never answered: the message is not part of the conversation
        write(`\nerror: ${(err as Error).message}\n`);
        return;
      }
      write("\n" + dim("(stopped)") + "\n");
    } finally {
      current = undefined;
    }
    // a stopped reply stays in the conversation as far as it went: that is what the user saw
    turns.push({ role: "assistant", content: answer, ...(reasoning && { reasoning }) });
  }

  async function command(line: string): Promise<boolean> {
    const [cmd, ...rest] = line.slice(1).split(/\s+/);
    const arg = rest.join(" ").trim();
    switch (cmd) {
      case "reset":
        turns = [...system];
        write(dim("(new conversation)") + "\n");
        return true;
      case "think":
        if (arg !== "on" && arg !== "off") {
          write(`usage: /think on|off (thinking is ${thinking ? "on" : "off"})\n`);
          return true;
        }
        thinking = arg === "on";
        write(dim(`(thinking ${arg})`) + "\n");
        return true;
      case "save": {
        if (!arg) {
          write("usage: /save file.md\n");
          return true;
        }
        try {
          await writeFile(arg, conversationMarkdown(turns, `Chat with ${name}`));
          write(dim(`(saved ${turns.filter((t) => t.role !== "system").length} messages to ${arg})`) + "\n");
        } catch (err) {
          write(`error: cannot save to ${arg}: ${(err as Error).message}\n`);
        }
        return true;
      }
      case "help":
        write(HELP + "\n");
        return true;
      case "exit":
      case "quit":
        return false;
      default:
        write(`unknown command /${cmd}; ${HELP}\n`);
        return true;
    }
  }

  try {
    if (tty) rl.prompt();
    for await (const raw of rl) {
      const line = raw.trim();
      if (line) {
        if (line.startsWith("/")) {
          if (!(await command(line))) break;
        } else {
          await reply(line);
        }
      }
      if (exiting) break;
      if (tty) rl.prompt();
    }
  } finally {
    if (handleSignals) process.off("SIGINT", interrupt);
    current?.abort();
    rl.close();
  }
}
