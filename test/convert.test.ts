import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it, after } from "node:test";
import { Template } from "@huggingface/jinja";
import { convert, loadModel, readGguf, type Model, type OutputType } from "../src/index.js";
import { metaString } from "../src/gguf.js";
import { referenceLogits } from "./support/reference.js";
import { checkpoint, converted, fixtureRoot, SMALL_QWEN3, TINY_QWEN2, TINY_QWEN3, TINY_QWEN3_UNTIED } from "./support/models.js";
import type { CheckpointShape } from "../scripts/fixtures/checkpoint.js";

const PROMPT = "Hello world, 你好！ The quick brown fox.";
// Longer than the 32 logits rows the addon decodes per step, so F32 parity also checks logits() chunking. (F16 and
// BF16 keep the short prompt: ggml rounds activations to the weights' type, an error that grows with positions.)
const LONG_PROMPT = "Hello world, 你好！ The quick brown fox jumps over the lazy dog; 敏捷的棕色狐狸跳过了懒狗。 Numbers 12345, symbols <>{}[] and the end.";

async function compare(model: Model, shape: CheckpointShape, weights: Map<string, Float32Array>, prompt = PROMPT) {
  const tokens = model.tokenize(prompt);
  const got = await model.logits(tokens);
  const ref = referenceLogits(shape, weights, tokens);
  let maxAbs = 0, agree = 0;
  for (let i = 0; i < tokens.length; i++) {
    let best = 0, bestRef = 0;
    for (let j = 0; j < shape.vocab; j++) {
      const g = got[i * shape.vocab + j];
      maxAbs = Math.max(maxAbs, Math.abs(g - ref[i][j]));
      if (g > got[i * shape.vocab + best]) best = j;
      if (ref[i][j] > ref[i][bestRef]) bestRef = j;
    }
    if (best === bestRef) agree++;
  }
  return { maxAbs, top1: agree / tokens.length, positions: tokens.length };
}

async function parity(key: string, shape: CheckpointShape, type: OutputType, options = {}, prompt = PROMPT) {
  const { out, weights } = await converted(key, shape, type, options);
  const model = await loadModel(out, { contextSize: 128, threads: 2, kvCacheType: "f32" });
  try {
    return await compare(model, shape, weights, prompt);
  } finally {
    await model.dispose();
  }
}

describe("convert: logits match the float64 reference", () => {
  const cases: [string, CheckpointShape, object][] = [
    ["qwen3-tied-gqa", TINY_QWEN3, {}],
    ["qwen3-untied", TINY_QWEN3_UNTIED, { seed: 2 }],
    ["qwen3-sharded", TINY_QWEN3, { seed: 3, shards: 3 }],
    ["qwen2-bias", TINY_QWEN2, { seed: 4 }],
  ];
  for (const [key, shape, options] of cases) {
    it(`${key}: F32 within 1e-3`, async () => {
      const { maxAbs, positions } = await parity(key, shape, "f32", options, LONG_PROMPT);
      assert.ok(positions > 32, `the prompt spans more than one logits chunk (${positions} tokens)`);
      assert.ok(maxAbs <= 1e-3, `max abs difference ${maxAbs}`);
    });
  }
  it("qwen3 from a BF16 checkpoint: F16 and BF16 within 2e-2", async () => {
    for (const type of ["f16", "bf16"] as const) {
      const { maxAbs } = await parity("qwen3-bf16-src", TINY_QWEN3, type, { seed: 5, dtype: "BF16" });
      assert.ok(maxAbs <= 2e-2, `${type}: max abs difference ${maxAbs}`);
    }
  });
  it("qwen2 from an F16 checkpoint: F16 within 2e-2", async () => {
    const { maxAbs } = await parity("qwen2-f16-src", TINY_QWEN2, "f16", { seed: 6, dtype: "F16" });
    assert.ok(maxAbs <= 2e-2, `max abs difference ${maxAbs}`);
  });
});

describe("convert: quantized types", () => {
  it("load and stay close to F32 (max abs and top-1 agreement reported)", async (t) => {
    const ref = await parity("small", SMALL_QWEN3, "f32", { seed: 7 });
    assert.ok(ref.maxAbs <= 1e-3);
    for (const type of ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "mixed"] as const) {
      const r = await parity("small", SMALL_QWEN3, type, { seed: 7 });
      t.diagnostic(`${type}: max abs ${r.maxAbs.toFixed(4)}, top-1 agreement ${(r.top1 * 100).toFixed(0)}%`);
      assert.ok(r.maxAbs < (type === "q8_0" ? 0.5 : 3), `${type}: max abs ${r.maxAbs}`);
    }
  });
  it("choose tensor types as llama-quantize does", async () => {
    const { dir } = await checkpoint("small", SMALL_QWEN3, { seed: 7 });
    const types = async (type: OutputType, tensorTypes?: string[]) =>
      Object.fromEntries((await convert(dir, { type, dryRun: true, tensorTypes })).tensors.map((t) => [t.name, t.type]));
    const q4km = await types("q4_k_m");
    assert.equal(q4km["token_embd.weight"], "Q6_K"); // tied: the embedding is the output
    assert.equal(q4km["blk.0.attn_q.weight"], "Q4_K");
    // use_more_bits(i, 2) in C integer arithmetic: false for layer 0, true for layer 1 (i >= 7*2/8 = 1)
    assert.equal(q4km["blk.0.attn_v.weight"], "Q4_K");
    assert.equal(q4km["blk.1.attn_v.weight"], "Q6_K");
    assert.equal(q4km["blk.0.ffn_down.weight"], "Q4_K");
    assert.equal(q4km["blk.1.ffn_down.weight"], "Q6_K");
    assert.equal(q4km["blk.0.attn_norm.weight"], "F32");
    const q40 = await types("q4_0");
    assert.equal(q40["token_embd.weight"], "Q6_K");
    assert.equal(q40["blk.1.ffn_up.weight"], "Q4_0");
    const mixed = await types("mixed");
    assert.equal(mixed["blk.0.attn_k.weight"], "Q8_0");
    assert.equal(mixed["blk.0.ffn_down.weight"], "Q4_K");
    assert.equal(mixed["token_embd.weight"], "Q6_K");
    const override = await types("q4_k_m", ["attn_v=q8_0"]);
    assert.equal(override["blk.1.attn_v.weight"], "Q8_0");
    // rows of 64 cannot hold 256-blocks: llama-quantize's fallbacks
    const { dir: tiny } = await checkpoint("qwen3-tied-gqa", TINY_QWEN3);
    const fallback = Object.fromEntries((await convert(tiny, { type: "q4_k_m", dryRun: true })).tensors.map((t) => [t.name, t.type]));
    assert.equal(fallback["blk.0.attn_q.weight"], "Q5_0");
    assert.equal(fallback["token_embd.weight"], "Q8_0");
  });
});

describe("convert: tokenizer and chat template", () => {
  let model: Model;
  after(() => model?.dispose());
  it("tokenization reproduces llama.cpp's Qwen2 vocab test vectors", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    model = await loadModel(out, { contextSize: 64, threads: 1 });
    const models = join(import.meta.dirname, "..", "vendor", "llama.cpp", "models");
    const inputs = (await readFile(join(models, "ggml-vocab-qwen2.gguf.inp"), "utf8")).split("\n__ggml_vocab_test__\n");
    if (inputs.at(-1) === "") inputs.pop();
    const outputs = (await readFile(join(models, "ggml-vocab-qwen2.gguf.out"), "utf8")).split("\n").slice(0, inputs.length);
    assert.equal(inputs.length, outputs.length);
    assert.ok(inputs.length > 40);
    inputs.forEach((text, i) => {
      const expected = outputs[i].trim() === "" ? [] : outputs[i].trim().split(/\s+/).map(Number);
      assert.deepEqual(model.tokenize(text), expected, `test vector ${i}: ${JSON.stringify(text)}`);
    });
  });
  it("the GGUF's chat template renders the same prompt as tokenizer_config.json", async () => {
    const { dir, out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const config = JSON.parse(await readFile(join(dir, "tokenizer_config.json"), "utf8"));
    const file = await readGguf(out);
    const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi 你好" }];
    const render = (tmpl: string) => new Template(tmpl).render({ messages, add_generation_prompt: true, enable_thinking: false });
    assert.equal(render(metaString(file, "tokenizer.chat_template")!), render(config.chat_template));
    assert.equal(metaString(file, "tokenizer.ggml.pre"), "qwen2");
    assert.equal(file.metadata.get("tokenizer.ggml.eos_token_id")?.value, 151645);
    assert.equal(file.metadata.get("tokenizer.ggml.add_bos_token")?.value, false);
    assert.equal((file.metadata.get("tokenizer.ggml.tokens")?.value as string[])[151935], "[PAD151935]");
  });
});

describe("convert: bad input", () => {
  const bad = join(fixtureRoot, "bad");
  async function variant(name: string, mutate: (dir: string) => Promise<void>) {
    const { dir } = await checkpoint("qwen3-tied-gqa", TINY_QWEN3);
    const target = join(bad, name);
    await rm(target, { recursive: true, force: true });
    await mkdir(target, { recursive: true });
    for (const f of await readdir(dir)) await writeFile(join(target, f), await readFile(join(dir, f)));
    await mutate(target);
    return target;
  }
  async function expectCode(dir: string, code: string, options: Parameters<typeof convert>[1] = {}) {
    const out = join(bad, `${code}.gguf`);
    await rm(out, { force: true });
    await assert.rejects(convert(dir, { out, type: "q8_0", ...options }), (e: { code?: string }) => e.code === code);
    assert.equal(existsSync(out), false, "no output file is left behind");
    const leftovers = (await readdir(bad)).filter((f) => f.endsWith(".tmp"));
    assert.deepEqual(leftovers, [], "no temporary file is left behind");
  }
  const editJson = (file: string, edit: (j: Record<string, unknown>) => void) => async (dir: string) => {
    const j = JSON.parse(await readFile(join(dir, file), "utf8"));
    edit(j);
    await writeFile(join(dir, file), JSON.stringify(j));
  };
  /** Rewrites the safetensors header with `edit` (data unchanged). */
  const editHeader = (edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void) => async (dir: string) => {
    const buf = await readFile(join(dir, "model.safetensors"));
    const len = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + len).toString());
    edit(header);
    let json = JSON.stringify(header);
    json += " ".repeat(Math.max(0, len - Buffer.byteLength(json)));
    if (Buffer.byteLength(json) !== len) throw new Error("test header edit must not grow the header");
    await writeFile(join(dir, "model.safetensors"), Buffer.concat([buf.subarray(0, 8), Buffer.from(json), buf.subarray(8 + len)]));
  };

  it("unsupported architecture lists the supported ones", async () => {
    const dir = await variant("arch", editJson("config.json", (j) => (j.architectures = ["LlamaForCausalLM"])));
    await assert.rejects(convert(dir, { out: join(bad, "x.gguf") }), /Qwen3ForCausalLM, Qwen2ForCausalLM/);
    await expectCode(dir, "ERR_UNSUPPORTED_ARCHITECTURE");
  });
  it("a shape that disagrees with config.json", async () => expectCode(await variant("shape", editJson("config.json", (j) => (j.intermediate_size = 96))), "ERR_TENSOR_SHAPE"));
  it("a missing tensor", async () => expectCode(await variant("missing", editJson("config.json", (j) => (j.num_hidden_layers = 3))), "ERR_TENSOR_MISSING"));
  it("an extra tensor", async () => expectCode(await variant("extra", editJson("config.json", (j) => (j.num_hidden_layers = 1))), "ERR_TENSOR_UNEXPECTED"));
  it("a vocab_size smaller than the tokenizer", async () => expectCode(await variant("vocab", async (dir) => {
    await editJson("config.json", (j) => (j.vocab_size = 1000))(dir);
    await editHeader((h) => {
      const e = h["model.embed_tokens.weight"];
      e.shape = [1000, 64];
      e.data_offsets = [e.data_offsets[0], e.data_offsets[0] + 1000 * 64 * 4];
    })(dir);
  }), "ERR_VOCAB_SIZE"));
  it("a safetensors header that is not JSON", async () => expectCode(await variant("json", async (dir) => {
    const buf = await readFile(join(dir, "model.safetensors"));
    buf.write("{{{{", 8);
    await writeFile(join(dir, "model.safetensors"), buf);
  }), "ERR_SAFETENSORS_INVALID"));
  it("offsets outside the file", async () => expectCode(await variant("offsets", editHeader((h) => {
    const e = h["model.norm.weight"];
    e.data_offsets = [e.data_offsets[0] + 1e9, e.data_offsets[1] + 1e9];
  })), "ERR_SAFETENSORS_INVALID"));
  it("overlapping tensors", async () => expectCode(await variant("overlap", editHeader((h) => {
    const a = h["model.norm.weight"], b = h["model.layers.0.input_layernorm.weight"];
    b.data_offsets = [...a.data_offsets];
  })), "ERR_SAFETENSORS_INVALID"));
  it("an unknown dtype", async () => expectCode(await variant("dtype", editHeader((h) => (h["model.norm.weight"].dtype = "I8")) ), "ERR_UNSUPPORTED_DTYPE"));
  it("an existing output is kept unless force", async () => {
    const { dir } = await checkpoint("qwen3-tied-gqa", TINY_QWEN3);
    const out = join(bad, "exists.gguf");
    await writeFile(out, "keep me");
    await assert.rejects(convert(dir, { out, type: "f16" }), (e: { code?: string }) => e.code === "ERR_OUTPUT_EXISTS");
    assert.equal(await readFile(out, "utf8"), "keep me");
    await convert(dir, { out, type: "f16", force: true });
    assert.equal((await readGguf(out)).tensors.length > 0, true);
  });
  it("an unwritable output directory", async () => {
    const { dir } = await checkpoint("qwen3-tied-gqa", TINY_QWEN3);
    await assert.rejects(convert(dir, { out: join(bad, "no-such-dir", "x.gguf") }), (e: { code?: string }) => e.code === "ERR_OUTPUT_WRITE");
  });
  it("an abort signal stops the conversion and removes the temporary file", async () => {
    const { dir } = await checkpoint("qwen3-tied-gqa", TINY_QWEN3);
    await expectCode(dir, "ABORT_ERR", { signal: AbortSignal.abort() });
  });
});
