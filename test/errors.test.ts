import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { loadModel, estimateMemory, versions } from "../src/index.js";
import { converted, fixtureRoot, TINY_QWEN3 } from "./support/models.js";

const hasCode = (code: string) => (e: { code?: string }) => e.code === code;

describe("loadModel: bad files", () => {
  const dir = join(fixtureRoot, "bad-gguf");
  it("a missing file", async () => {
    await assert.rejects(loadModel(join(dir, "nope.gguf")), hasCode("ERR_MODEL_NOT_FOUND"));
  });
  it("a file that is not GGUF", async () => {
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "text.gguf"), "this is not a model at all");
    await assert.rejects(loadModel(join(dir, "text.gguf")), hasCode("ERR_NOT_GGUF"));
  });
  it("a truncated GGUF (header and data)", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const bytes = await readFile(out);
    await writeFile(join(dir, "short-data.gguf"), bytes.subarray(0, bytes.length - 1000));
    await assert.rejects(loadModel(join(dir, "short-data.gguf")), (e: { code?: string; message: string }) => e.code === "ERR_GGUF_TRUNCATED" && /output_norm|blk|token_embd/.test(e.message));
    await writeFile(join(dir, "short-header.gguf"), bytes.subarray(0, 5000));
    await assert.rejects(loadModel(join(dir, "short-header.gguf")), hasCode("ERR_GGUF_TRUNCATED"));
  });
  it("an unsupported architecture", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const bytes = Buffer.from(await readFile(out));
    const at = bytes.indexOf("qwen3");
    bytes.write("llama", at); // general.architecture is the first string value
    await writeFile(join(dir, "llama.gguf"), bytes);
    await assert.rejects(loadModel(join(dir, "llama.gguf")), (e: { code?: string; message: string }) => e.code === "ERR_UNSUPPORTED_ARCHITECTURE" && /qwen3, qwen2/.test(e.message));
  });
  it("a corrupt tensor table is refused by llama.cpp without crashing", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const bytes = Buffer.from(await readFile(out));
    const at = bytes.indexOf("blk.0.attn_q.weight");
    bytes.write("blk.0.attn_X.weight", at); // an unknown tensor name: llama.cpp reports a missing tensor
    await writeFile(join(dir, "renamed.gguf"), bytes);
    await assert.rejects(loadModel(join(dir, "renamed.gguf")), (e: { code?: string; message: string }) => e.code === "ERR_MODEL_LOAD" && /attn_q/.test(e.message));
  });
});

describe("loadModel: bad options", () => {
  const cases: [string, object, string][] = [
    ["threads as a string", { threads: "2" }, "ERR_INVALID_ARG_TYPE"],
    ["zero threads", { threads: 0 }, "ERR_OUT_OF_RANGE"],
    ["fractional contextSize", { contextSize: 100.5 }, "ERR_OUT_OF_RANGE"],
    ["tiny contextSize", { contextSize: 4 }, "ERR_OUT_OF_RANGE"],
    ["unknown kvCacheType", { kvCacheType: "q2" }, "ERR_OUT_OF_RANGE"],
    ["mmap not boolean", { mmap: 1 }, "ERR_INVALID_ARG_TYPE"],
    ["poll above 100", { poll: 101 }, "ERR_OUT_OF_RANGE"],
    ["signal not an AbortSignal", { signal: {} }, "ERR_INVALID_ARG_TYPE"],
  ];
  for (const [name, options, code] of cases) {
    it(name, async () => {
      const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
      await assert.rejects(loadModel(out, options), hasCode(code));
    });
  }
  it("onProgress reports a rising fraction that ends at 1", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const seen: number[] = [];
    const model = await loadModel(out, { contextSize: 64, threads: 1, onProgress: (p) => seen.push(p) });
    await model.dispose();
    assert.ok(seen.length >= 2, `${seen.length} progress calls`);
    assert.deepEqual([...seen].sort((a, b) => a - b), seen);
    assert.equal(seen.at(-1), 1);
  });
  it("an aborted signal aborts loading", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    await assert.rejects(loadModel(out, { signal: AbortSignal.abort() }), hasCode("ABORT_ERR"));
  });
  it("bad sampling options and token ids", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const model = await loadModel(out, { contextSize: 64, threads: 1 });
    try {
      assert.throws(() => model.stream("x", { temperature: -1 }), hasCode("ERR_OUT_OF_RANGE"));
      assert.throws(() => model.stream("x", { topP: 2 }), hasCode("ERR_OUT_OF_RANGE"));
      assert.throws(() => model.stream("x", { maxTokens: "5" as never }), hasCode("ERR_INVALID_ARG_TYPE"));
      assert.throws(() => model.stream("x", { stop: [1] as never }), hasCode("ERR_INVALID_ARG_TYPE"));
      assert.throws(() => model.stream(42 as never), hasCode("ERR_INVALID_ARG_TYPE"));
      await assert.rejects(model.logits([1, 999999]), hasCode("ERR_OUT_OF_RANGE"));
      assert.throws(() => model.detokenize([-1]), hasCode("ERR_OUT_OF_RANGE"));
    } finally {
      await model.dispose();
    }
  });
});

describe("info and versions", () => {
  it("model.info, the memory estimate and the llama.cpp commit", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const estimate = await estimateMemory(out, { contextSize: 1024, parallel: 1 });
    // 2 layers × 1024 positions × 2 KV heads × (32 + 32) × 2 bytes
    assert.equal(estimate.kvCache, 2 * 1024 * 2 * 64 * 2);
    // by default the shared cache holds parallel (4) full contexts
    assert.equal((await estimateMemory(out, { contextSize: 1024 })).kvCache, 4 * 2 * 1024 * 2 * 64 * 2);
    const model = await loadModel(out, { contextSize: 64, threads: 1 });
    try {
      assert.equal(model.info.architecture, "qwen3");
      assert.equal(model.info.quantization, "F32");
      assert.equal(model.info.kvHeads, 2);
      assert.equal(model.info.contextLengthTrained, 4096);
      assert.ok(model.info.parameters > 9e6);
      assert.equal(model.runtime.threads, 1);
      assert.equal(model.runtime.contextSize, 64);
      assert.equal(model.runtime.parallel, 4);
      assert.equal(model.runtime.cacheSize, 256);
    } finally {
      await model.dispose();
    }
    const pin = JSON.parse(await readFile(join(import.meta.dirname, "..", "vendor", "llama.cpp.json"), "utf8"));
    assert.equal(versions().llamaCpp, pin.commit);
  });
});
