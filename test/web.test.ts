/**
 * The web chat page in a real browser: playwright-core driving Chromium against the real server on a tiny generated
 * model (random weights: replies are gibberish, so the checks are about structure, not wording). Replies that must look
 * a certain way (reasoning, code, injection payloads) come from page.route stubs of /v1/chat/completions.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import type { Browser, BrowserContext, Page, Route } from "playwright-core";
import { converted, TINY_QWEN3 } from "./support/models.js";

const root = join(import.meta.dirname, "..");
const SCREENSHOT = join(root, "docs", "web-chat.png");
const PAYLOAD = `<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>`;

/** CHROMIUM_PATH, else the first of Debian's and other common names on PATH. */
function findBrowser(): string | null {
  if (process.env.CHROMIUM_PATH) return existsSync(process.env.CHROMIUM_PATH) ? process.env.CHROMIUM_PATH : null;
  for (const name of ["chromium", "chromium-browser", "google-chrome-stable", "google-chrome"]) {
    for (const dir of (process.env.PATH ?? "").split(delimiter)) {
      if (dir && existsSync(join(dir, name))) return join(dir, name);
    }
  }
  return null;
}

const browserPath = findBrowser();
// Outside CI a machine without a browser skips, saying why; in CI the missing browser is a failure (below).
const skip = !browserPath && !process.env.CI ? "no Chromium found on PATH (Debian: apt-get install chromium; or set CHROMIUM_PATH)" : false;

async function startServer() {
  const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
  const { serve } = await import("../src/server/index.js");
  return serve(out, { port: 0, contextSize: 512, threads: 2 });
}

/** An SSE body in the server's shape: chunks, a comment line (as the server's pings), then [DONE]. */
function sse(chunks: object[]): string {
  const base = { id: "chatcmpl-stub", object: "chat.completion.chunk", created: 1_700_000_000, model: "stub" };
  const events = [": ping", ...chunks.map((c) => `data: ${JSON.stringify({ ...base, ...c })}`), "data: [DONE]"];
  return events.map((e) => `${e}\n\n`).join("");
}

const delta = (d: object, finish: string | null = null) => ({ choices: [{ index: 0, delta: d, finish_reason: finish }] });

/** A stubbed reply: reasoning pieces, then content pieces, then a last chunk with timings. */
function stubReply(reasoning: string[], content: string[]) {
  return sse([
    delta({ role: "assistant", content: "" }),
    ...reasoning.map((r) => delta({ reasoning_content: r })),
    ...content.map((c) => delta({ content: c })),
    { ...delta({}, "stop"), timings: { prompt_n: 31, prompt_ms: 84.2, predicted_n: 48, predicted_ms: 3920, cache_n: 0 } },
  ]);
}

/** Answers /v1/chat/completions with `body` and records each request's JSON. */
async function stubChat(page: Page, body: string | (() => string)) {
  const requests: Array<Record<string, any>> = [];
  await page.route("**/v1/chat/completions", async (route: Route) => {
    requests.push(route.request().postDataJSON());
    await route.fulfill({ status: 200, headers: { "content-type": "text/event-stream", "cache-control": "no-cache" }, body: typeof body === "string" ? body : body() });
  });
  return requests;
}

/**
 * Delivers each SSE event of the chat stream `ms` apart in the page, so that a reply from the fast tiny model is still
 * streaming when the test presses Stop (and a stubbed reply streams as a real one). Aborting the request errors the
 * body, as fetch itself does.
 */
const throttle = (ms: number) => `(() => {
  const realFetch = window.fetch;
  window.fetch = async (input, init) => {
    const response = await realFetch(input, init);
    const url = typeof input === "string" ? input : input.url;
    if (!url.includes("chat/completions") || !response.body) return response;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    let buffer = "";
    const events = [];
    let fail;
    const body = new ReadableStream({
      start(controller) {
        fail = (reason) => { try { controller.error(reason); } catch {} reader.cancel().catch(() => {}); };
        init?.signal?.addEventListener("abort", () => fail(new DOMException("The user aborted a request.", "AbortError")));
      },
      async pull(controller) {
        for (;;) {
          if (events.length) {
            await new Promise((r) => setTimeout(r, ${ms}));
            if (init?.signal?.aborted) return;
            controller.enqueue(encoder.encode(events.shift()));
            return;
          }
          const { value, done } = await reader.read();
          if (done) { if (buffer) controller.enqueue(encoder.encode(buffer)); controller.close(); return; }
          buffer += decoder.decode(value, { stream: true });
          const parts = buffer.split("\\n\\n");
          buffer = parts.pop();
          events.push(...parts.map((p) => p + "\\n\\n"));
        }
      },
      cancel(reason) { return reader.cancel(reason); },
    });
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
})();`;

describe("web chat page", { skip }, () => {
  let browser: Browser;
  let server: Awaited<ReturnType<typeof startServer>>;
  let classifier: boolean;
  const contexts: BrowserContext[] = [];

  before(async () => {
    assert.ok(browserPath, "CI must run the browser test: no Chromium on PATH (apt-get install chromium, or set CHROMIUM_PATH)");
    const { chromium } = await import("playwright-core");
    [browser, server] = await Promise.all([chromium.launch({ executablePath: browserPath }), startServer()]);
    // The badge shows only where the server can classify; the test expects what this server can do.
    const probe = await fetch(`${server.url}/v1/classify`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ input: "x", labels: ["positive", "negative"] }) });
    classifier = probe.ok;
  });

  after(async () => {
    await browser?.close();
    await server?.close();
  });

  /** A fresh browser profile (empty localStorage) with the page open and the server ready. */
  async function open(options: { colorScheme?: "dark" | "light"; throttleMs?: number; height?: number } = {}) {
    const context = await browser.newContext({ colorScheme: options.colorScheme ?? "dark", viewport: { width: 1280, height: options.height ?? 800 }, acceptDownloads: true });
    contexts.push(context);
    const page = await context.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    if (options.throttleMs) await page.addInitScript({ content: throttle(options.throttleMs) });
    await page.goto(server.url);
    await page.getByRole("status").filter({ hasText: "Ready" }).waitFor();
    return { page, errors };
  }

  async function setSettings(page: Page, fields: Record<string, string>) {
    await page.getByRole("button", { name: "Settings" }).click();
    for (const [label, value] of Object.entries(fields)) await page.getByLabel(label, { exact: true }).fill(value);
    await page.getByRole("button", { name: "Save" }).click();
  }

  const pwned = (page: Page) => page.evaluate(() => (globalThis as { __pwned?: unknown }).__pwned);
  const replies = (page: Page) => page.locator(".message.assistant");

  test("sends a message, streams the reply with its speed line, keeps and exports the conversation", async () => {
    const { page, errors } = await open();
    await setSettings(page, { "Max tokens": "16", Temperature: "0" });

    const input = page.getByRole("textbox", { name: "Message" });
    await input.fill("Hello");
    await input.press("Shift+Enter"); // a new line, not a send
    await input.pressSequentially("there");
    const [request, response] = await Promise.all([page.waitForRequest("**/v1/chat/completions"), page.waitForResponse("**/v1/chat/completions"), input.press("Enter")]);
    assert.match(response.headers()["content-type"], /^text\/event-stream/);
    const sent = request.postDataJSON();
    assert.equal(sent.stream, true);
    assert.equal(sent.max_tokens, 16);
    assert.equal(sent.temperature, 0);
    assert.deepEqual(sent.chat_template_kwargs, { enable_thinking: false });
    assert.deepEqual(sent.messages, [{ role: "user", content: "Hello\nthere" }]);

    await assert.doesNotReject(page.locator(".message.user .content").filter({ hasText: "Hello\nthere" }).waitFor());
    const reply = replies(page).first();
    const stats = reply.locator(".stats");
    await stats.waitFor();
    assert.match(await stats.textContent() ?? "", /^\d+\.\d tok\/s · TTFT \d+\.\d\d s · \d+ tokens/);
    assert.ok((await reply.locator(".content").textContent())!.length > 0, "the reply has text");
    assert.equal(await page.getByRole("button", { name: "Send" }).isVisible(), true);

    const badge = page.locator(".message.user .sentiment");
    if (classifier) await assert.doesNotReject(badge.filter({ hasText: /^(positive|negative) \d+%$/ }).waitFor());
    else assert.equal(await badge.isVisible(), false, "no classifier on this server: no badge");

    // A second turn carries the first.
    const [second] = await Promise.all([page.waitForRequest("**/v1/chat/completions"), input.fill("And again"), input.press("Enter")]);
    assert.deepEqual(second.postDataJSON().messages.map((m: { role: string }) => m.role), ["user", "assistant", "user"]);
    await replies(page).nth(1).locator(".stats").waitFor();

    // Reload on a fresh page: the conversation is in the list, with its replies and their speed lines.
    await page.goto(server.url);
    await page.getByRole("heading", { name: "New chat" }).waitFor();
    const list = page.getByRole("navigation", { name: "Conversation list" });
    await list.getByRole("button", { name: "Hello there", exact: true }).click();
    await page.getByRole("heading", { name: "Hello there" }).waitFor();
    assert.equal(await replies(page).count(), 2);
    assert.match(await replies(page).first().locator(".stats").textContent() ?? "", /tok\/s/);

    // Export: Markdown and JSON downloads of what is on screen.
    const [md] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export as Markdown" }).click()]);
    assert.equal(md.suggestedFilename(), "hello-there.md");
    const markdown = await readFile((await md.path())!, "utf8");
    assert.match(markdown, /^# Hello there\n/);
    assert.match(markdown, /## User\n\n(\*Sentiment: (positive|negative) \(\d+%\)\*\n\n)?Hello\nthere\n/);
    assert.match(markdown, /## Assistant\n/);
    assert.match(markdown, /\d+\.\d tok\/s · time to first token/);
    const [json] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export as JSON" }).click()]);
    assert.equal(json.suggestedFilename(), "hello-there.json");
    const jsonPath = (await json.path())!;
    const exported = JSON.parse(await readFile(jsonPath, "utf8"));
    assert.equal(exported.format, "qwen-gguf-conversation");
    assert.equal(exported.conversation.title, "Hello there");
    assert.deepEqual(exported.conversation.messages.map((m: { role: string }) => m.role), ["user", "assistant", "user", "assistant"]);
    assert.equal(exported.conversation.messages[0].content, "Hello\nthere");
    assert.ok(exported.conversation.messages[1].stats.tokensPerSecond > 0);
    assert.ok(markdown.includes(exported.conversation.messages[1].content.trim()), "the reply's text is in the Markdown");

    // Rename, then delete.
    await list.getByRole("button", { name: "Rename Hello there" }).click();
    const title = page.getByRole("textbox", { name: "Conversation title" });
    await title.fill("Greetings");
    await title.press("Enter");
    await page.getByRole("heading", { name: "Greetings" }).waitFor();
    await page.reload();
    await list.getByRole("button", { name: "Greetings", exact: true }).waitFor();
    page.once("dialog", (dialog) => dialog.accept());
    await list.getByRole("button", { name: "Delete Greetings" }).click();
    await page.getByRole("heading", { name: "New chat" }).waitFor();
    assert.equal(await list.getByRole("listitem").count(), 0);

    // The JSON export imports back.
    const [chooser] = await Promise.all([page.waitForEvent("filechooser"), page.getByRole("button", { name: "Import a conversation (JSON)" }).click()]);
    await chooser.setFiles(jsonPath);
    await page.getByRole("heading", { name: "Hello there" }).waitFor();
    assert.equal(await replies(page).count(), 2);
    assert.equal(await page.locator(".message.user .content").first().textContent(), "Hello\nthere");
    assert.deepEqual(errors, []);
  });

  test("Stop and Escape end a streaming reply; the next message is answered", async () => {
    const { page, errors } = await open({ throttleMs: 40 });
    await setSettings(page, { "Max tokens": "300" });
    const input = page.getByRole("textbox", { name: "Message" });
    const stop = page.getByRole("button", { name: "Stop" });

    await input.fill("Tell me a long story");
    await input.press("Enter");
    const reply = replies(page).first();
    await reply.locator(".content").filter({ hasText: /\S/ }).waitFor();
    await stop.click();
    await reply.locator(".stats").filter({ hasText: "stopped" }).waitFor();
    assert.equal(await stop.isVisible(), false);
    const tokens = Number(/(\d+) tokens/.exec(await reply.locator(".stats").textContent() ?? "")?.[1]);
    assert.ok(tokens > 0 && tokens < 300, `stopped after ${tokens} of 300 tokens`);
    const text = await reply.locator(".content").textContent();
    await page.waitForTimeout(300);
    assert.equal(await reply.locator(".content").textContent(), text, "no text arrives after Stop");
    // The Stop reached the server: its generation ended (the connection closed), not just the page's reading.
    for (let i = 0; ; i++) {
      const health = (await (await fetch(`${server.url}/health`)).json()) as { slots?: { active: number } };
      if (!health.slots || health.slots.active === 0) break;
      assert.ok(i < 30, `the server still runs ${health.slots.active} generation(s) 3 s after Stop`);
      await new Promise((r) => setTimeout(r, 100));
    }

    await input.fill("Another long one");
    await input.press("Enter");
    await replies(page).nth(1).locator(".content").filter({ hasText: /\S/ }).waitFor();
    await page.keyboard.press("Escape");
    await replies(page).nth(1).locator(".stats").filter({ hasText: "stopped" }).waitFor();

    // The server serves the next request: a short one runs to its end.
    await setSettings(page, { "Max tokens": "4" });
    await input.fill("Short now");
    await input.press("Enter");
    const last = replies(page).nth(2).locator(".stats");
    await last.waitFor();
    assert.doesNotMatch(await last.textContent() ?? "", /stopped/);
    assert.deepEqual(errors, []);
  });

  test("HTML in a user message and in a model reply is shown as text and never runs", async () => {
    const { page, errors } = await open();
    await setSettings(page, { "Max tokens": "4" });
    const input = page.getByRole("textbox", { name: "Message" });

    // The user's message goes to the real server.
    await input.fill(PAYLOAD);
    await input.press("Enter");
    await replies(page).first().locator(".stats").waitFor();
    assert.equal(await page.locator(".message.user .content").first().textContent(), PAYLOAD);
    assert.match(await page.getByRole("navigation", { name: "Conversation list" }).textContent() ?? "", /<img src=x onerror=/);

    // The model's reply is stubbed: raw HTML, in the answer and in the reasoning, plus Markdown routes to script.
    const hostile = [
      `Look: ${PAYLOAD}\n\n`,
      `${PAYLOAD}\n\n`,
      "[a link](javascript:window.__pwned=1) and ![an image](x\" onerror=\"window.__pwned=1)\n\n",
      "```html\n</code></pre>" + PAYLOAD + "\n```\n",
    ];
    await stubChat(page, stubReply([`thinking ${PAYLOAD}`], hostile));
    await input.fill("and now the model");
    await input.press("Enter");
    const reply = replies(page).nth(1);
    await reply.locator(".stats").waitFor();
    await reply.locator("summary").click(); // open the reasoning too
    await page.waitForTimeout(300); // time for an onerror to fire, if anything had created the element

    assert.equal(await pwned(page), undefined);
    const messages = page.locator("#messages");
    assert.equal(await messages.locator("img, script, iframe, object, embed, svg").count(), 0);
    const dangerous = await messages.evaluate((root) =>
      [...(root as any).querySelectorAll("*")].flatMap((node: any) =>
        [...node.attributes].filter((a: any) => a.name.startsWith("on") || /^\s*javascript:/i.test(a.value)).map((a: any) => `${node.tagName} ${a.name}`),
      ),
    );
    assert.deepEqual(dangerous, []);
    const visible = await reply.locator(".content").textContent() ?? "";
    assert.ok(visible.includes(`<img src=x onerror="window.__pwned=1">`), "the payload is visible as text");
    assert.ok(visible.includes("<script>window.__pwned=1</script>"));
    assert.ok((await reply.locator(".reasoning-body").textContent() ?? "").includes("<script>"));
    await page.reload();
    await replies(page).nth(1).locator(".stats").waitFor();
    assert.equal(await pwned(page), undefined, "nothing runs when the stored conversation is shown again");
    assert.deepEqual(errors, []);
  });

  test("thinking, turn limit, templates, theme; screenshot for the README", async () => {
    const { page, errors } = await open({ colorScheme: "light", throttleMs: 120, height: 900 });
    // The system says light: the page follows; the toggle switches to dark and is remembered.
    const background = () => page.evaluate(() => (globalThis as any).getComputedStyle((globalThis as any).document.body).backgroundColor as string);
    assert.equal(await background(), "rgb(247, 247, 250)");
    await page.getByRole("button", { name: "Switch to dark theme" }).click();
    assert.equal(await background(), "rgb(15, 17, 23)");
    await page.reload();
    assert.equal(await background(), "rgb(15, 17, 23)");

    await page.route("**/v1/classify", (route) =>
      route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify({ results: [{ label: "positive", probabilities: { positive: 0.93, negative: 0.07 } }] }) }),
    );
    const reasoning = ["The user wants a small game. ", "A number-guessing game fits in a few lines ", "and only needs the `random` module."];
    const answer = [
      "Here is a small **number-guessing game**:\n\n",
      "```python\nimport random\n\nsecret = random.randint(1, 100)\nfor tries in range(1, 11):\n    guess = int(input(\"Your guess (1-100): \"))\n    if guess == secret:\n        print(f\"Got it in {tries} tries!\")\n        break\n    print(\"Higher!\" if guess < secret else \"Lower!\")\nelse:\n    print(f\"Out of tries: it was {secret}.\")\n```\n\n",
      "Run it with `python3 guess.py`. ",
      "Want a version with a score board?",
    ];
    const requests = await stubChat(page, stubReply(reasoning, answer));

    // A template fills the box; with text there already, it goes in front.
    const input = page.getByRole("textbox", { name: "Message" });
    await input.fill("SELECT 1");
    await page.getByRole("button", { name: "Write an SQL query" }).click();
    assert.match(await input.inputValue(), /^Write an SQL query[^]*\n\nSELECT 1$/);
    await input.fill("I love small games! Write one in Python that I can play in the terminal.");

    await page.getByRole("checkbox", { name: "Thinking" }).check();
    await input.press("Enter");
    const reply = replies(page).first();
    await reply.locator(".stats").waitFor();
    assert.deepEqual(requests[0].chat_template_kwargs, { enable_thinking: true });
    const details = reply.locator("details.reasoning");
    assert.equal(await details.getAttribute("open"), null, "the reasoning folds once the answer starts");
    await reply.getByText(/^Reasoning/).click();
    assert.equal(await details.getAttribute("open"), "");
    assert.match(await details.textContent() ?? "", /number-guessing game fits/);
    assert.equal(await reply.locator(".code-block .hljs-keyword").first().textContent(), "import");
    await reply.getByRole("button", { name: "Copy code" }).waitFor();
    assert.equal(await reply.locator(".stats").textContent(), "12.2 tok/s · TTFT 0.08 s · 48 tokens");
    await page.locator(".message.user .sentiment").filter({ hasText: "positive 93%" }).waitFor();
    await page.mouse.move(0, 0);
    await page.locator("#messages").evaluate((m) => ((m as { scrollTop: number }).scrollTop = 1e9)); // the click scrolled it
    await mkdir(join(root, "docs"), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });

    // Edited templates are stored.
    await page.getByRole("button", { name: "Edit templates" }).click();
    await page.getByRole("textbox", { name: "Template name" }).first().fill("Python game");
    await page.getByRole("button", { name: "Save" }).click();
    await page.reload();
    await page.getByRole("button", { name: "Python game", exact: true }).click();
    assert.match(await input.inputValue(), /^Write a small, complete Python game/);

    // Turn limit 2: the third message goes with the one turn before it only, and the transcript says so.
    await setSettings(page, { "Turns sent": "2" });
    assert.match(await page.getByRole("button", { name: "Turn limit" }).textContent() ?? "", /last 2 turns/);
    for (const text of ["second", "third"]) {
      await input.fill(text);
      await input.press("Enter");
      await replies(page).last().locator(".stats").waitFor();
    }
    assert.deepEqual(requests.map((r) => r.messages.length), [1, 3, 3]);
    assert.equal(requests[2].messages[0].content, "second");
    await page.getByRole("note").filter({ hasText: "not sent to the model (turn limit 2)" }).waitFor();
    assert.deepEqual(errors, []);
  });
});
