import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { after, before, describe, it } from "node:test";
import { loadModel, type ChatMessage, type ChatOptions, type Model } from "../src/index.js";
import { runTerminalChat } from "../src/terminal-chat.js";
import { converted, TINY_QWEN3 } from "./support/models.js";

const cli = join(import.meta.dirname, "..", "src", "cli.ts");

/** The model with its chat() calls recorded, and a hook on each piece. */
function recording(model: Model, onPiece?: () => void) {
  const calls: { messages: ChatMessage[]; options: ChatOptions }[] = [];
  const proxy = new Proxy(model, {
    get(target, key) {
      if (key !== "chat") return Reflect.get(target, key, target);
      return (messages: ChatMessage[], options: ChatOptions) => {
        calls.push({ messages: structuredClone(messages), options: { ...options, signal: undefined } });
        const stream = target.chat(messages, options);
        return {
          result: stream.result,
          async *[Symbol.asyncIterator]() {
            for await (const piece of stream) {
              yield piece;
              onPiece?.();
            }
          },
        };
      };
    },
  });
  return { model: proxy, calls };
}

describe("terminal chat", () => {
  let model: Model;
  let path: string;
  let dir: string;
  before(async () => {
    path = (await converted("qwen3-tied-gqa", TINY_QWEN3, "f32")).out;
    model = await loadModel(path, { contextSize: 512, threads: 1, kvCacheType: "f32" });
    dir = await mkdtemp(join(tmpdir(), "qwen-chat-"));
  });
  after(async () => {
    await model.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps the conversation, /think, /save, /reset, driven through stdin", async () => {
    const { model: m, calls } = recording(model);
    const input = new PassThrough();
    const output = new PassThrough();
    let text = "";
    output.on("data", (d) => (text += d));
    const file = join(dir, "chat.md");
    input.end(`Hello there\n/think off\nSecond question\n/save ${file}\n/reset\nThird\n/think maybe\n/nope\n`);
    await runTerminalChat(m, { input, output, system: "Be brief.", sampling: { maxTokens: 4, temperature: 0, ignoreEos: true } });
    assert.equal(calls.length, 3);
    assert.deepEqual(calls[0].messages, [{ role: "system", content: "Be brief." }, { role: "user", content: "Hello there" }]);
    assert.equal(calls[0].options.thinking, true);
    assert.equal(calls[1].messages.length, 4, "the second turn carries the first exchange");
    assert.equal(calls[1].messages[2].role, "assistant");
    assert.equal(calls[1].options.thinking, false);
    assert.deepEqual(calls[2].messages, [{ role: "system", content: "Be brief." }, { role: "user", content: "Third" }], "/reset keeps the system prompt only");
    assert.match(text, /\(thinking off\)/);
    assert.match(text, /\(4 tokens, [\d.]+ tok\/s, stopped at the token limit\)/);
    assert.match(text, /\(saved 4 messages to .*chat\.md\)/);
    assert.match(text, /\(new conversation\)/);
    assert.match(text, /usage: \/think on\|off/);
    assert.match(text, /unknown command \/nope/);
    assert.doesNotMatch(text, /\x1b\[/, "no ANSI codes when the output is not a terminal");
    const md = await readFile(file, "utf8");
    assert.match(md, /^# Chat with /);
    assert.match(md, /## System\n\nBe brief\.\n\n## User\n\nHello there\n\n## Assistant\n\n/);
    assert.match(md, /## User\n\nSecond question\n/);
  });

  it("Ctrl-C stops the current reply; Ctrl-C with no reply running exits", async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    let text = "";
    output.on("data", (d) => (text += d));
    const until = async (re: RegExp) => {
      while (!re.test(text)) await new Promise((r) => setTimeout(r, 5));
    };
    let pieces = 0;
    const { model: m } = recording(model, () => {
      if (++pieces === 2) process.emit("SIGINT", "SIGINT"); // as if Ctrl-C came during the reply
    });
    const file = join(dir, "stopped.md");
    input.write("Tell me a long story\n");
    const done = runTerminalChat(m, { input, output, handleSignals: true, thinking: false, sampling: { maxTokens: 400, temperature: 0, ignoreEos: true } });
    await until(/\(stopped\)/);
    input.write(`/save ${file}\n`);
    await until(/\(saved/);
    process.emit("SIGINT", "SIGINT"); // nothing running: exits although the input is still open
    await done;
    assert.ok(pieces < 10, `the reply stopped at once (${pieces} pieces)`);
    assert.match(await readFile(file, "utf8"), /## Assistant\n\n\S/, "the stopped reply stays in the conversation as far as it went");
    assert.equal(process.listenerCount("SIGINT"), 0, "the SIGINT handler is removed");
  });

  it("the chat command reads stdin and exits 0 at its end", () => {
    const r = spawnSync(process.execPath, ["--import", "tsx", cli, "chat", path, "--no-think", "--max-tokens", "3", "--context-size", "256", "--threads", "1", "--system", "Be brief."], { input: "Hi\n", encoding: "utf8", timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /chatting with .* \(thinking off\)/);
    assert.match(r.stdout, /\(\d tokens, [\d.]+ tok\/s/);
  });
});
