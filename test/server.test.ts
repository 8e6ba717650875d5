import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import OpenAI, { APIError } from "openai";
import { ApiError } from "../src/server/errors.js";
import { serve, type Server } from "../src/server/index.js";
import { precheckLength } from "../src/server/openai.js";
import { converted, TINY_QWEN3 } from "./support/models.js";

const KEY = "test-key-123";
const cli = join(import.meta.dirname, "..", "src", "cli.ts");
// Greedy, through end-of-generation tokens, thinking off: random weights then give the same text on every run
const greedy = { temperature: 0, ignore_eos: true, thinking: false } as Record<string, unknown>;
const hi = [{ role: "user" as const, content: "Say hi" }];

/** Reads a Prometheus sample's value from /metrics text. */
function sample(text: string, name: string, labels = ""): number {
  const prefix = `${name}${labels ? `{${labels}}` : ""} `;
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line ? Number(line.slice(prefix.length)) : NaN;
}

async function expectApiError(promise: Promise<unknown>, status: number, code?: string) {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof APIError, `an APIError, got ${err}`);
    assert.equal(err.status, status, err.message);
    if (code) assert.equal(err.code, code);
    return true;
  });
}

describe("server", () => {
  let path: string;
  let server: Server;
  let client: OpenAI;
  let healthWhileLoading: Promise<number> | undefined;
  const post = (route: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(server.url + route, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${KEY}`, ...headers }, body: typeof body === "string" ? body : JSON.stringify(body) });
  const metrics = async () => (await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${KEY}` } })).text();

  before(async () => {
    path = (await converted("qwen3-tied-gqa", TINY_QWEN3, "f32")).out;
    server = await serve(path, {
      port: 0, contextSize: 512, threads: 1, kvCacheType: "f32", apiKey: KEY, bodyLimit: 64 * 1024, pingInterval: 50,
      onListening: (url) => (healthWhileLoading = fetch(url + "/health").then((r) => r.status)),
    });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
  });
  after(() => server?.close());

  it("/health answers 503 while the model loads and 200 once it is ready; /v1/models names the model", async () => {
    assert.equal(await healthWhileLoading, 503);
    const health = await fetch(server.url + "/health");
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { status: string }).status, "ok");
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ["qwen3-tied-gqa-f32"]);
  });

  it("chat completions, streaming and not: the same greedy text, one id, reasoning split, usage and timings", async () => {
    const whole = await client.chat.completions.create({ model: "qwen3-tied-gqa-f32", messages: hi, max_tokens: 6, ...greedy } as never) as OpenAI.ChatCompletion & { timings: Record<string, number> };
    assert.equal(whole.object, "chat.completion");
    assert.equal(whole.choices[0].finish_reason, "length");
    assert.equal(typeof whole.choices[0].message.content, "string");
    assert.equal(whole.usage!.completion_tokens, 6);
    assert.ok(whole.usage!.prompt_tokens > 5);
    assert.equal(whole.usage!.total_tokens, whole.usage!.prompt_tokens + 6);
    assert.equal(whole.timings.predicted_n, 6);
    assert.equal(whole.timings.prompt_n + whole.timings.cache_n, whole.usage!.prompt_tokens);

    // no model field at all, and the file name, are accepted too
    const stream = await client.chat.completions.create({ model: "qwen3-tied-gqa-f32.gguf", messages: hi, max_tokens: 6, stream: true, stream_options: { include_usage: true }, ...greedy } as never) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk & { timings?: Record<string, number> }>;
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
    assert.equal(new Set(chunks.map((c) => c.created)).size, 1);
    assert.equal(chunks[0].choices[0].delta.role, "assistant");
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    assert.equal(text, whole.choices[0].message.content);
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage!.completion_tokens, 6);
    const final = chunks.at(-2)!;
    assert.equal(final.choices[0].finish_reason, "length");
    assert.equal(final.timings!.predicted_n, 6);
    assert.ok(final.timings!.cache_n > 0, "the second identical prompt reuses the cached prefix");
  });

  it("completions, streaming and not, and the seeds' /generate and /stream", async () => {
    const opts = { model: "qwen3-tied-gqa-f32", prompt: "Once upon a time", max_tokens: 8, temperature: 0, ignore_eos: true } as never;
    const whole = await client.completions.create(opts) as OpenAI.Completion;
    assert.equal(whole.object, "text_completion");
    assert.equal(whole.choices[0].finish_reason, "length");
    assert.equal(whole.usage!.completion_tokens, 8);
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const c of await client.completions.create({ ...(opts as object), stream: true, stream_options: { include_usage: true } } as never) as unknown as AsyncIterable<OpenAI.Completion>) {
      text += c.choices[0]?.text ?? "";
      if (c.usage) usage = c.usage;
    }
    assert.equal(text, whole.choices[0].text);
    assert.equal(usage!.completion_tokens, 8);

    const gen = await post("/generate", { prompt: "Say hi", max_new_tokens: 5, do_sample: false, ignore_eos: true });
    const g = (await gen.json()) as { text: string; finish_reason: string; usage: { completion_tokens: number } };
    assert.equal(gen.status, 200);
    assert.equal(g.finish_reason, "length");
    assert.equal(g.usage.completion_tokens, 5);

    const s = await fetch(`${server.url}/stream?q=${encodeURIComponent("Say hi")}&max_new_tokens=5&temperature=0`, { headers: { authorization: `Bearer ${KEY}` } });
    assert.equal(s.status, 200);
    assert.match(s.headers.get("content-type")!, /^text\/event-stream/);
    const events = (await s.text()).split("\n\n").filter((e) => e.trim());
    const pieces = events.filter((e) => e.startsWith("data: ")).map((e) => JSON.parse(e.slice(6)) as string);
    assert.ok(pieces.length >= 1 && pieces.every((p) => typeof p === "string"));
    assert.match(events.at(-1)!, /^event: done\ndata: \{"finish_reason":"(length|stop)"/);
  });

  it("errors surface as APIError with OpenAI's body and the right status", async () => {
    await expectApiError(client.chat.completions.create({ messages: hi, temperature: "hot" } as never), 400, "invalid_type");
    await expectApiError(client.chat.completions.create({ messages: hi, n: 2 } as never), 400, "unsupported_value");
    await expectApiError(client.chat.completions.create({ model: "gpt-4o", messages: hi } as never), 404, "model_not_found");
    await expectApiError(client.chat.completions.create({ messages: [{ role: "user", content: "x".repeat(70_000) }] } as never), 413, "request_too_large");
    await expectApiError(client.completions.create({ prompt: "word ".repeat(600), max_tokens: 4 } as never), 400, "context_length_exceeded");
    await expectApiError(new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 }).models.list(), 401, "invalid_api_key");

    // a prompt whose bytes alone exceed the context is refused without tokenizing it (on the event loop)
    const { model } = server;
    const huge = "the same words again ".repeat(Math.ceil((model.contextSize * 256) / 21));
    assert.ok(model.minTokens(huge) > model.contextSize && model.minTokens(huge) <= model.tokenize(huge).length);
    const tokenize = model.tokenize;
    let tokenized = 0;
    model.tokenize = (...args) => (tokenized++, tokenize.apply(model, args));
    try {
      assert.throws(() => precheckLength(model, [huge], "prompt"), (e: ApiError) => e.status === 400 && /at least \d+ tokens/.test(e.message));
      assert.equal(tokenized, 0);
    } finally {
      model.tokenize = tokenize;
    }
    const overflow = await post("/v1/completions", { prompt: "word ".repeat(600) });
    assert.match(((await overflow.json()) as { error: { message: string } }).error.message, /at least \d{3} tokens.*context size of 512 tokens/);
    const malformed = await post("/v1/chat/completions", "{\"messages\": [");
    assert.equal(malformed.status, 400);
    const body = (await malformed.json()) as { error: { message: string; type: string; param: unknown; code: string } };
    assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
    assert.equal(body.error.type, "invalid_request_error");
    const missing = await post("/v1/chat/completions", { messages: [] });
    assert.equal(missing.status, 400);
    const noKey = await fetch(server.url + "/v1/models");
    assert.equal(noKey.status, 401);
    assert.equal(((await noKey.json()) as { error: { type: string } }).error.type, "authentication_error");
    assert.equal((await fetch(server.url + "/metrics")).status, 401);
    assert.equal((await fetch(server.url + "/health")).status, 200, "/health stays open with an API key");
    const page = await fetch(server.url + "/");
    assert.equal(page.status, 200, "the web page stays open with an API key");
    assert.match(page.headers.get("content-type")!, /^text\/html/);
    const unknown = await post("/v1/nothing", {});
    assert.equal(unknown.status, 404);
    assert.equal(((await unknown.json()) as { error: { code: string } }).error.code, "not_found");
  });

  it("break mid-stream ends the generation and the next request is served", async () => {
    const stream = await client.chat.completions.create({ messages: hi, max_tokens: 400, stream: true, ...greedy } as never) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>;
    let n = 0;
    for await (const _ of stream) if (++n === 3) break;
    const next = await client.chat.completions.create({ messages: hi, max_tokens: 3, ...greedy } as never) as OpenAI.ChatCompletion;
    assert.equal(next.usage!.completion_tokens, 3);
  });

  it("a client that disconnects cancels its generation: /metrics shows no active generation", async () => {
    const res = await post("/v1/chat/completions", { messages: hi, max_tokens: 450, stream: true, ...greedy });
    const reader = res.body!.getReader();
    await reader.read(); // the first chunk: the generation runs
    assert.equal(sample(await metrics(), "qwen_gguf_generations_active"), 1);
    await reader.cancel();
    const t0 = Date.now();
    let active = 1;
    while (Date.now() - t0 < 3000 && (active = sample(await metrics(), "qwen_gguf_generations_active")) !== 0) await sleep(10);
    assert.equal(active, 0);
    const text = await metrics();
    assert.ok(sample(text, "qwen_gguf_http_requests_total", 'route="/v1/chat/completions",method="POST",status="200"') >= 2);
    assert.ok(sample(text, "qwen_gguf_time_to_first_token_seconds_count", 'endpoint="chat"') >= 2);
    assert.ok(sample(text, "qwen_gguf_prefix_cache_hits_total") >= 1);
  });

  it("CORS only for the origins given; close() ends the running streams with a final chunk and [DONE]", async () => {
    const second = await serve(server.model, { port: 0, cors: ["http://example.test"] });
    const preflight = await fetch(`${second.url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin: "http://example.test", "access-control-request-method": "POST" } });
    assert.equal(preflight.headers.get("access-control-allow-origin"), "http://example.test");
    const foreign = await fetch(`${second.url}/v1/models`, { headers: { origin: "http://elsewhere.test" } });
    assert.equal(foreign.headers.get("access-control-allow-origin"), null);
    assert.equal((await fetch(`${server.url}/v1/models`, { headers: { origin: "http://example.test", authorization: `Bearer ${KEY}` } })).headers.get("access-control-allow-origin"), null, "no CORS unless asked");
    const c = new OpenAI({ baseURL: `${second.url}/v1`, apiKey: "none", maxRetries: 0 });
    const stream = await c.chat.completions.create({ messages: hi, max_tokens: 450, stream: true, ...greedy } as never) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>;
    let closing: Promise<void> | undefined;
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      closing ??= second.close();
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    await closing;
    assert.equal(finish, "stop");
    await assert.rejects(fetch(second.url + "/health"));
    assert.equal((await fetch(server.url + "/health")).status, 200, "the shared model stays usable");
  });

  it("SSE pings while a request waits in the queue; a full queue answers 503 with Retry-After", async () => {
    const queued = await serve(path, { port: 0, contextSize: 256, threads: 1, kvCacheType: "f32", parallel: 1, maxQueue: 1, pingInterval: 20 });
    try {
      const req = (max: number) => fetch(queued.url + "/v1/completions", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "Hello", max_tokens: max, stream: true, temperature: 0, ignore_eos: true }) });
      const first = await req(200);
      const reader = first.body!.getReader();
      await reader.read();
      const second = req(4);
      await sleep(20);
      const third = await req(4);
      assert.equal(third.status, 503);
      assert.equal(third.headers.get("retry-after"), "1");
      assert.equal(((await third.json()) as { error: { code: string } }).error.code, "queue_full");
      const text = await (await second).text();
      assert.match(text, /^: ping\n\n/, "pinged while queued behind the first");
      assert.match(text, /data: \[DONE\]\n\n$/);
      while (!(await reader.read()).done);
    } finally {
      await queued.close();
    }
  });

  it("the serve command prints its URL, takes the key from QWEN_GGUF_API_KEY and exits 0 on SIGTERM", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", cli, "serve", path, "--port", "0", "--context-size", "128", "--threads", "1"], { env: { ...process.env, QWEN_GGUF_API_KEY: "env-key" }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    const t0 = Date.now();
    while (!/at (http:\/\/\S+) /.test(out) && Date.now() - t0 < 30_000 && child.exitCode === null) await sleep(50);
    const url = /at (http:\/\/\S+) /.exec(out)?.[1];
    assert.ok(url, `printed a URL (stdout: ${out}, stderr: ${err})`);
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((await fetch(url + "/health")).status, 200);
    assert.equal((await fetch(url + "/v1/models")).status, 401);
    assert.equal((await fetch(url + "/v1/models", { headers: { authorization: "Bearer env-key" } })).status, 200);
    child.kill("SIGTERM");
    assert.equal(await exited, 0, err);
  });

  it("chat logprobs, response_format json_schema and the grammar extension", async () => {
    const lp = await client.chat.completions.create({ messages: hi, max_tokens: 3, logprobs: true, top_logprobs: 2, ...greedy } as never) as OpenAI.ChatCompletion;
    assert.equal(lp.choices[0].logprobs!.content!.length, 3);
    assert.equal(lp.choices[0].logprobs!.content![0].top_logprobs.length, 2);
    assert.deepEqual(Object.keys(lp.choices[0].logprobs!.content![0]).sort(), ["bytes", "logprob", "token", "top_logprobs"]);
    let streamed = 0;
    for await (const c of await client.chat.completions.create({ messages: hi, max_tokens: 3, logprobs: true, top_logprobs: 2, stream: true, ...greedy } as never) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>) {
      streamed += c.choices[0]?.logprobs?.content?.length ?? 0;
    }
    assert.equal(streamed, 3, "every generated token's logprob once, streaming too");
    const schema = { type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"], additionalProperties: false };
    const json = await client.chat.completions.create({ messages: hi, max_tokens: 40, temperature: 0, thinking: false, response_format: { type: "json_schema", json_schema: { name: "r", schema, strict: true } } } as never) as OpenAI.ChatCompletion;
    assert.equal(typeof (JSON.parse(json.choices[0].message.content!) as { ok: boolean }).ok, "boolean");
    const yn = await client.chat.completions.create({ messages: hi, max_tokens: 5, temperature: 0, thinking: false, grammar: 'root ::= "yes" | "no"' } as never) as OpenAI.ChatCompletion;
    assert.match(yn.choices[0].message.content!, /^(yes|no)$/);
    await expectApiError(client.chat.completions.create({ messages: hi, grammar: "root ::= ", response_format: { type: "json_object" } } as never), 400);
  });

  it("tools and tool_choice: finish_reason tool_calls with the call in OpenAI's shape", async () => {
    const tools = [{ type: "function" as const, function: { name: "get_time", description: "the time", parameters: { type: "object", properties: {} } } }];
    const call = await client.chat.completions.create({ messages: hi, max_tokens: 60, temperature: 0, thinking: false, tools, tool_choice: "required" } as never) as OpenAI.ChatCompletion;
    assert.equal(call.choices[0].finish_reason, "tool_calls");
    assert.equal((call.choices[0].message.tool_calls![0] as { function: { name: string } }).function.name, "get_time");
  });

  it("completions logprobs and /v1/classify", async () => {
    const c = await client.completions.create({ prompt: "Hello", max_tokens: 3, logprobs: 2, temperature: 0, ignore_eos: true } as never) as OpenAI.Completion;
    assert.equal(c.choices[0].logprobs!.tokens!.length, 3);
    const r = await post("/v1/classify", { input: ["great", "awful"], labels: ["positive", "negative"] });
    assert.equal(r.status, 200);
    const body = (await r.json()) as { results: { label: string; probabilities: Record<string, number> }[] };
    assert.equal(body.results.length, 2);
    for (const x of body.results) assert.ok(["positive", "negative"].includes(x.label));
  });
});
