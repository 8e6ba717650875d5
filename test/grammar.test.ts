import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it, before, after } from "node:test";
import { Ajv2020 } from "ajv/dist/2020.js";
import formatsModule from "ajv-formats";
import { jsonSchemaToGbnf, JSON_VALUE_GBNF } from "../src/grammar/json-schema.js";
import { matchGbnf, parseGbnf, sampleGbnf } from "../src/grammar/gbnf.js";
import type { Model, StreamOptions } from "../src/index.js";

const ajv = new Ajv2020({ strict: false, allErrors: true });
// "fast" checks formats by shape only (the grammar does not know how many days each month has)
// ajv-formats is CommonJS: under NodeNext its default import is the module object
const addFormats = ((formatsModule as unknown as { default?: typeof formatsModule }).default ?? formatsModule) as unknown as (a: Ajv2020, o: { mode: "fast" }) => void;
addFormats(ajv, { mode: "fast" });

interface Case {
  name: string;
  schema: Record<string, unknown>;
  valid?: unknown[];
  /** JSON texts the grammar must refuse. */
  invalid?: string[];
  /** Small enough for a random-weights model to finish within maxTokens. */
  generate?: boolean;
}

const CASES: Case[] = [
  { name: "string enum", schema: { enum: ["positive", "negative", "neutral"] }, valid: ["positive", "neutral"], invalid: ['"Positive"', '"pos"'], generate: true },
  { name: "enum of any JSON values", schema: { enum: [1, "a", null, { x: [1, 2] }, true, 2.5] }, valid: [1, { x: [1, 2] }, 2.5], invalid: ["2", "false", '{"x":[1]}'], generate: true },
  { name: "const", schema: { const: { ok: true } }, valid: [{ ok: true }], invalid: ['{"ok":false}'], generate: true },
  {
    name: "nested objects with required and optional properties",
    schema: {
      type: "object",
      properties: {
        name: { type: "string", minLength: 1, maxLength: 6 },
        age: { type: "integer", minimum: 0, maximum: 120 },
        address: {
          type: "object",
          properties: { city: { type: "string", maxLength: 5 }, zip: { type: "string", pattern: "^[0-9]{5}$" } },
          required: ["city"],
          additionalProperties: false,
        },
      },
      required: ["name"],
      additionalProperties: false,
    },
    valid: [{ name: "Ann" }, { name: "Bo", age: 120 }, { name: "C", address: { city: "Oslo", zip: "01234" } }],
    invalid: ['{"age":3}', '{"name":""}', '{"name":"a","age":121}', '{"name":"a","extra":1}', '{"age":3,"name":"a"}', '{"name":"a","address":{"zip":"12345"}}'],
    generate: true,
  },
  {
    name: "bounded array",
    schema: { type: "array", items: { type: "boolean" }, minItems: 1, maxItems: 3 },
    valid: [[true], [false, true, true]],
    invalid: ["[]", "[true,true,true,true]", "[1]"],
    generate: true,
  },
  { name: "array without bounds", schema: { type: "array", items: { enum: [1, 2] }, maxItems: 4 }, valid: [[], [1, 2, 2, 1]], invalid: ["[1,2,1,2,1]"], generate: true },
  {
    name: "prefixItems",
    schema: { type: "array", prefixItems: [{ type: "string", maxLength: 3 }, { type: "integer", minimum: 1, maximum: 9 }], items: false },
    valid: [["ab", 3]],
    invalid: ['["ab"]', '["ab",3,4]', '[3,"ab"]'],
    generate: true,
  },
  {
    name: "anyOf",
    schema: { anyOf: [{ type: "integer", minimum: -10, maximum: -1 }, { type: "string", enum: ["none"] }, { type: "null" }] },
    valid: [-10, -1, "none", null],
    invalid: ["0", "-11", '"other"'],
    generate: true,
  },
  { name: "oneOf", schema: { oneOf: [{ type: "boolean" }, { type: "integer", minimum: 5, maximum: 6 }] }, valid: [true, 5, 6], invalid: ["4", "7"], generate: true },
  {
    name: "allOf of objects",
    schema: { allOf: [{ type: "object", properties: { a: { type: "string", maxLength: 2 } }, required: ["a"] }, { properties: { b: { type: "boolean" } }, required: ["b"] }] },
    valid: [{ a: "x", b: true }],
    invalid: ['{"a":"x"}', '{"b":true}'],
    generate: true,
  },
  { name: "integer range across zero", schema: { type: "integer", minimum: -5, maximum: 305 }, valid: [-5, 0, 9, 10, 99, 100, 299, 305], invalid: ["-6", "306", "-0", "007", "1.5"], generate: true },
  { name: "negative integer range", schema: { type: "integer", minimum: -123, maximum: -7 }, valid: [-123, -100, -99, -10, -7], invalid: ["-6", "-124", "0", "7"], generate: true },
  { name: "integer with exclusive bounds", schema: { type: "integer", exclusiveMinimum: 10, exclusiveMaximum: 1000 }, valid: [11, 999], invalid: ["10", "1000"], generate: true },
  { name: "integer with a minimum only", schema: { type: "integer", minimum: 42 }, valid: [42, 99, 100, 123456789], invalid: ["41", "-42", "0"] },
  { name: "integer with a maximum only", schema: { type: "integer", maximum: -3 }, valid: [-3, -1000], invalid: ["-2", "0", "5"] },
  { name: "integer equal bounds", schema: { type: "integer", minimum: 7, maximum: 7 }, valid: [7], invalid: ["6", "8"] },
  { name: "number in [0, 1]", schema: { type: "number", minimum: 0, maximum: 1 }, valid: [0, 1, 0.5, 0.125], invalid: ["1.5", "-0.1", "2"], generate: true },
  { name: "number in (0, 1)", schema: { type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1 }, valid: [0.5, 0.001], invalid: ["0", "1", "1.1"], generate: true },
  { name: "number with fractional bounds", schema: { type: "number", minimum: -2.5, maximum: 3.7 }, valid: [-2, -1.5, 0, 3, 2.99], invalid: ["-3", "4", "3.8"] },
  { name: "unbounded number", schema: { type: "number" }, valid: [0, -1.5e10, 3.25, 12] },
  { name: "string length", schema: { type: "string", minLength: 2, maxLength: 4 }, valid: ["ab", "abcd", "a\"", "中文字"], invalid: ['"a"', '"abcde"'], generate: true },
  { name: "string pattern", schema: { type: "string", pattern: "^[A-Z]{2}-\\d{3}$" }, valid: ["AB-123"], invalid: ['"ab-123"', '"AB-12"', '"AB-1234"'], generate: true },
  { name: "alternation pattern", schema: { type: "string", pattern: "^(foo|ba[rz])+$" }, valid: ["foo", "barbazfoo"], invalid: ['""', '"fob"'] },
  { name: "unanchored pattern", schema: { type: "string", pattern: "ab+c" }, valid: ["abbc", "xxabcyy"], invalid: ['"ac"'] },
  { name: "pattern with characters JSON escapes", schema: { type: "string", pattern: "^a[\"\\\\]\\n?[^a-z]$" }, valid: ["a\"Q", "a\\\n1"], invalid: ['"a\\"q"'] },
  { name: "pattern and implied lengths", schema: { type: "string", pattern: "^[0-9]{3}$", minLength: 3, maxLength: 3 }, valid: ["123"] },
  { name: "date, date-time, time, uuid", schema: { type: "object", properties: { d: { type: "string", format: "date" }, t: { type: "string", format: "date-time" }, h: { type: "string", format: "time" }, u: { type: "string", format: "uuid" } }, required: ["d", "t", "h", "u"], additionalProperties: false }, valid: [{ d: "2024-05-17", t: "2024-05-17T10:20:30Z", h: "23:59:59+02:00", u: "123e4567-e89b-12d3-a456-426614174000" }] },
  {
    name: "$ref recursion",
    schema: {
      $defs: { node: { type: "object", properties: { v: { type: "integer", minimum: 0, maximum: 9 }, kids: { type: "array", items: { $ref: "#/$defs/node" }, maxItems: 2 } }, required: ["v"], additionalProperties: false } },
      $ref: "#/$defs/node",
    },
    valid: [{ v: 1 }, { v: 1, kids: [{ v: 2, kids: [] }, { v: 3, kids: [{ v: 4 }] }] }],
    invalid: ['{"v":1,"kids":[{"v":2},{"v":3},{"v":4}]}'],
    generate: true,
  },
  { name: "definitions (draft 7)", schema: { definitions: { color: { enum: ["r", "g"] } }, type: "array", items: { $ref: "#/definitions/color" }, maxItems: 2 }, valid: [["r", "g"]], invalid: ['["b"]'] },
  { name: "nullable type", schema: { type: ["string", "null"], maxLength: 5 }, valid: ["hello", null], invalid: ['"toolong"', "1"], generate: true },
  {
    name: "additionalProperties schema",
    schema: { type: "object", properties: { a: { type: "integer", minimum: 0, maximum: 5 } }, required: ["a"], additionalProperties: { type: "boolean" } },
    valid: [{ a: 1 }, { a: 1, b: true, c: false }],
    invalid: ['{"a":1,"b":1}', '{"a":1,"a":true}'],
  },
  { name: "additionalProperties true", schema: { type: "object", properties: { id: { type: "integer", minimum: 0, maximum: 9 } }, required: ["id"], additionalProperties: true }, valid: [{ id: 1 }, { id: 2, x: [1, { y: null }] }] },
  { name: "object without properties", schema: { type: "object" }, valid: [{}, { a: [1, "b"] }] },
  { name: "annotations are ignored", schema: { $schema: "https://json-schema.org/draft/2020-12/schema", $id: "x", title: "T", description: "D", type: "boolean", default: true, examples: [false] }, valid: [true, false], generate: true },
  { name: "long maxLength through chunks", schema: { type: "string", maxLength: 2500 }, valid: ["x".repeat(2500)], invalid: [JSON.stringify("x".repeat(2501))] },
];

describe("jsonSchemaToGbnf: grammar text", () => {
  for (const c of CASES) {
    it(c.name, () => {
      const gbnf = jsonSchemaToGbnf(c.schema);
      const g = parseGbnf(gbnf); // the llama.cpp syntax, every rule defined, no left recursion
      assert.ok(g.rules.has("root"));
      assert.match(gbnf, /^space ::= \| " " \| "\\n"\{1,2\} \[ \\t\]\{0,20\}$/m, "whitespace is bounded");
      assert.doesNotMatch(gbnf, /\[ \\t\\n\]\*/, "no unbounded whitespace");
      const validate = ajv.compile(c.schema);
      for (const v of c.valid ?? []) {
        assert.ok(validate(v), `test data: ${JSON.stringify(v)} should be valid`);
        assert.ok(matchGbnf(g, JSON.stringify(v)), `accepts ${JSON.stringify(v)}`);
      }
      for (const text of c.invalid ?? []) assert.ok(!matchGbnf(g, text), `refuses ${text}`);
    });
  }

  it("pretty-printed JSON within the whitespace bound is accepted; runaway whitespace is not", () => {
    const g = jsonSchemaToGbnf(CASES[3].schema);
    assert.ok(matchGbnf(g, JSON.stringify({ name: "Ann", address: { city: "Oslo" } }, null, 2)));
    assert.ok(!matchGbnf(g, `{${" ".repeat(40)}"name": "Ann"}`));
  });

  it("JSON_VALUE_GBNF: any JSON object", () => {
    const g = parseGbnf(JSON_VALUE_GBNF);
    for (const ok of ["{}", '{"a": [1, -2.5e3, "x\\u00e9", null, true, {"b": {}}]}', '{ "k" : "v" }']) assert.ok(matchGbnf(g, ok), ok);
    for (const bad of ["[]", '"x"', "{", '{"a":}', '{"a":"\u0001"}', "{'a':1}"]) assert.ok(!matchGbnf(g, bad), bad);
  });

  it("the integer grammar is exact over a range", () => {
    for (const [lo, hi] of [[-35, 120], [0, 1000], [-1000, -999], [95, 1005]]) {
      const g = parseGbnf(jsonSchemaToGbnf({ type: "integer", minimum: lo, maximum: hi }));
      for (let x = lo - 15; x <= hi + 15; x++) assert.equal(matchGbnf(g, String(x)), x >= lo && x <= hi, `${x} in [${lo}, ${hi}]`);
    }
  });
});

describe("jsonSchemaToGbnf: random walks through the grammar give valid instances", () => {
  for (const c of CASES) {
    it(c.name, () => {
      const g = parseGbnf(jsonSchemaToGbnf(c.schema));
      const validate = ajv.compile(c.schema);
      for (let seed = 1; seed <= 150; seed++) {
        const text = sampleGbnf(g, seed * 7919);
        let value: unknown;
        assert.doesNotThrow(() => (value = JSON.parse(text)), `seed ${seed}: ${JSON.stringify(text)} is not JSON`);
        assert.ok(validate(value), `seed ${seed}: ${text} fails the schema: ${ajv.errorsText(validate.errors)}`);
        assert.ok(matchGbnf(g, text), `seed ${seed}: the matcher agrees with the sampler`);
      }
    });
  }
});

describe("jsonSchemaToGbnf: nesting", () => {
  it("a schema nested deeper than 64 levels is ERR_SCHEMA_UNSUPPORTED, not a stack overflow", () => {
    const nest = (levels: number) => Array.from({ length: levels }).reduce((s: object) => ({ type: "array", items: s }), { type: "null" });
    assert.ok(jsonSchemaToGbnf(nest(60)).length > 0);
    assert.throws(() => jsonSchemaToGbnf(nest(5000)), (e: { code?: string; message: string }) => e.code === "ERR_SCHEMA_UNSUPPORTED" && /nested deeper than 64 levels/.test(e.message));
  });
});

describe("jsonSchemaToGbnf: unsupported keywords are errors that name them", () => {
  const cases: Array<[unknown, RegExp]> = [
    [{ type: "string", contentEncoding: "base64" }, /"contentEncoding" at #\/contentEncoding/],
    [{ type: "object", properties: { a: { type: "integer", multipleOf: 3 } } }, /"multipleOf" at #\/properties\/a\/multipleOf/],
    [{ type: "object", patternProperties: { "^x": {} } }, /"patternProperties"/],
    [{ type: "array", items: { type: "string" }, uniqueItems: true }, /"uniqueItems" at #\/uniqueItems/],
    [{ type: "object", minProperties: 1 }, /"minProperties"/],
    [{ not: { type: "string" } }, /"not" at #\/not/],
    [{ if: { type: "string" }, then: {} }, /"if"/],
    [{ $defs: { a: { type: "string", format: "email" } }, $ref: "#/$defs/a" }, /"format" at #\/\$defs\/a\/format.*email/],
    [{ type: "string", pattern: "^(a)\\1$" }, /"pattern".*backreference/],
    [{ type: "string", pattern: "^(?=a)a$" }, /"pattern".*lookaround/],
    [{ type: "string", pattern: "^a\\bb$" }, /"pattern".*word boundary/],
    [{ type: "string", pattern: "^\\p{L}+$" }, /"pattern".*property/],
    [{ type: "string", pattern: "a^b" }, /"pattern".*\^ and \$/],
    [{ $ref: "https://example.com/schema.json" }, /"\$ref".*local/],
    [{ type: "object", properties: { a: { $ref: "#/$defs/x", maxLength: 3 } }, $defs: { x: { type: "string" } } }, /"maxLength" at #\/properties\/a\/maxLength/],
    [{ type: "integer", anyOf: [{ minimum: 1 }] }, /"type" at #\/type.*beside anyOf/],
    [{ type: "string", pattern: "^[a-z]+$", maxLength: 5 }, /"pattern".*minLength\/maxLength/],
    [{ allOf: [{ type: "string" }, { maxLength: 3 }] }, /"allOf"/],
    [false, /"false"/],
  ];
  for (const [schema, message] of cases) {
    it(JSON.stringify(schema), () => {
      assert.throws(() => jsonSchemaToGbnf(schema), (e: { code?: string; message: string }) => {
        assert.equal(e.code, "ERR_SCHEMA_UNSUPPORTED", e.message);
        assert.match(e.message, message);
        return true;
      });
    });
  }

  it("malformed schemas are ERR_INVALID_ARG_VALUE", () => {
    for (const schema of [{ type: "strin" }, { required: "a" }, { enum: [] }, { $ref: "#/$defs/missing" }, { type: "string", pattern: "(" }, { minItems: -1 }, 42]) {
      assert.throws(() => jsonSchemaToGbnf(schema), (e: { code?: string }) => e.code === "ERR_INVALID_ARG_VALUE", JSON.stringify(schema));
    }
  });
});

describe("parseGbnf", () => {
  it("reports llama.cpp's grammar errors with a position", () => {
    const bad: Array<[string, RegExp]> = [
      ["root ::= foo", /rule foo is used at line 1.*never defined/],
      ["start ::= \"a\"", /no root rule/],
      ["root ::= root \"a\" | \"b\"", /left recursion: root → root/],
      ["root ::= a\na ::= \"x\"? root", /left recursion/],
      ["root ::= \"a\"{3000}", /limit of 2000/],
      ["root ::= (\"a\"{0,100}){0,30}", /exceeds llama.cpp's limit/],
      ["root ::= [a-", /unexpected end/],
      ["root ::= \"\\q\"", /unknown escape at line 1/],
      ["root := \"a\"", /expecting ::=/],
    ];
    for (const [text, message] of bad) assert.throws(() => parseGbnf(text), (e: { code?: string; message: string }) => e.code === "ERR_INVALID_ARG_VALUE" && message.test(e.message), text);
  });
  it("accepts comments, multi-line groups and token references", () => {
    const g = parseGbnf("# a comment\nroot ::= (\n  \"a\" |\n  \"b\" # inline\n) tail\ntail ::= [^\\n]* <think>\n");
    assert.equal(g.rules.size, 2);
  });
});

describe("generation under a JSON Schema (random weights)", () => {
  let model: Model;
  before(async () => {
    // imported here so that the grammar tests above do not depend on the native addon loading
    const { loadModel } = await import("../src/index.js");
    const { converted, TINY_QWEN3 } = await import("./support/models.js");
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    model = await loadModel(out, { contextSize: 1024, threads: 2 });
  });
  after(() => model?.dispose());

  const schemas = CASES.filter((c) => c.generate);
  for (const c of schemas) {
    it(c.name, async (t) => {
      const validate = ajv.compile(c.schema);
      let stopped = 0;
      const cut: number[] = [];
      for (let seed = 0; seed < 20; seed++) {
        const options = { jsonSchema: c.schema, seed, temperature: 1, maxTokens: 400 } as StreamOptions & { jsonSchema: unknown };
        const r = await model.generate("Reply in JSON.\n", options);
        if (r.finishReason !== "stop") {
          cut.push(seed);
          continue;
        }
        stopped++;
        let value: unknown;
        assert.doesNotThrow(() => (value = JSON.parse(r.text)), `seed ${seed}: ${JSON.stringify(r.text)} is not JSON`);
        assert.ok(validate(value), `seed ${seed}: ${r.text} fails the schema: ${ajv.errorsText(validate.errors)}`);
      }
      t.diagnostic(`${stopped}/20 finished and validated; cut by maxTokens: ${cut.length ? `seeds ${cut.join(", ")}` : "none"}`);
      assert.ok(stopped > 0, `every generation was cut by maxTokens (seeds ${cut.join(", ")})`);
    });
  }

  for (const thinking of [false, true]) {
    it(`chat with thinking ${thinking ? "on" : "off"}: the answer after </think> follows the schema`, async (t) => {
      const schema = CASES[0].schema;
      const validate = ajv.compile(schema);
      let valid = 0;
      const cut: number[] = [];
      for (let seed = 0; seed < 20; seed++) {
        // random weights never close </think> on their own: the reasoning budget forces it, then the schema applies
        const options = { jsonSchema: schema, thinking, reasoningBudget: 24, seed, temperature: 1, maxTokens: 400 };
        const stream = model.chat([{ role: "user", content: "Sentiment of: great film!" }], options);
        let answer = "";
        for await (const piece of stream) if (piece.type === "answer") answer += piece.text;
        const r = await stream.result;
        if (r.finishReason !== "stop") {
          cut.push(seed);
          continue;
        }
        const text = answer.trim();
        assert.ok(text.length > 0, `seed ${seed}: the answer is empty (reply ${JSON.stringify(r.text)})`);
        assert.ok(validate(JSON.parse(text)), `seed ${seed}: ${text} fails the schema`);
        valid++;
      }
      t.diagnostic(`${valid}/20 valid; cut by maxTokens: ${cut.length ? `seeds ${cut.join(", ")}` : "none"}`);
      assert.ok(valid > 0, `every generation was cut by maxTokens (seeds ${cut.join(", ")})`);
    });
  }
});

describe("grammar masks (native/sampler.cc) equal llama.cpp's grammar on the whole vocabulary", () => {
  // The sampler prefilters the vocabulary by each token's first character and caches masks by grammar state; with
  // QWEN_GGUF_VERIFY_GRAMMAR_MASKS every mask is also computed the slow way and compared, at every step.
  const run = (mode: string, seeds: number) => {
    const r = spawnSync(process.execPath, ["--import", "tsx", join(import.meta.dirname, "support", "grammar-masks.ts"), String(seeds)], {
      env: { ...process.env, QWEN_GGUF_VERIFY_GRAMMAR_MASKS: mode }, encoding: "utf8", timeout: 240_000,
    });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { finished: number; failures: string[] };
  };

  it("JSON whitespace and strings, character sets beyond ASCII, '.', a token element: the same masks", { timeout: 240_000 }, (t) => {
    const r = run("1", 3);
    t.diagnostic(`${r.finished} generations of up to 40 tokens, every step's mask compared`);
    assert.deepEqual(r.failures, []);
    assert.equal(r.finished, 12);
  });

  it("a mask that differs is caught (one bit flipped)", { timeout: 240_000 }, () => {
    const r = run("corrupt", 1);
    assert.equal(r.finished, 0);
    for (const f of r.failures) assert.match(f, /ERR_GRAMMAR .*grammar mask differs/);
  });
});
