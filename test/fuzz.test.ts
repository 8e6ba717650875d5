/**
 * A seeded subset of `npm run fuzz` (scripts/fuzz.ts): mutated GGUF files loaded, and mutated checkpoints converted,
 * each in a child process; plus the regression inputs of the crashes fuzzing found, made by code from the compact
 * base, and the agreement of the GGUF reader's type table with ggml's.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, it } from "node:test";
import { GGML_TYPE_LAYOUT, readGguf } from "../src/gguf.js";
import { loadModel } from "../src/index.js";
import { native } from "../src/native.js";
import { compactGguf } from "../scripts/fixtures/compact.js";
import { formatSummary, FUZZ_CACHE, runFuzz, withMetadata, type FuzzSummary } from "../scripts/fuzz.js";
import { converted, TINY_QWEN3 } from "./support/models.js";

const SEED = 20261204;

function check(s: FuzzSummary, t: { diagnostic(m: string): void }) {
  for (const line of formatSummary(s).split("\n")) t.diagnostic(line);
  const bad = s.findings.map((f) => `${f.outcome}${f.leftovers ? " leftovers" : ""}${f.badOutput ? " bad-output" : ""} ${f.kind}:${f.index} ${f.desc} ${f.code ?? ""} ${f.message ?? ""} ${f.signal ?? ""}`);
  assert.deepEqual(bad, [], "no crash, hang, error without a code, leftover file or refused output");
}

describe("fuzz", () => {
  it("GGUF: 200 mutated files (compact and full-vocabulary bases) load or fail with a coded error, never crash or hang", { timeout: 240_000 }, async (t) => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const s = await runFuzz({ gguf: 200, checkpoint: 0, seed: SEED, timeoutMs: 20_000, ggufBases: [out] });
    check(s, t);
    assert.ok(s.gguf.loaded > 10, "some mutants still load and generate (the harness exercises llama.cpp, not only the reader)");
    assert.ok((s.gguf.errors.ERR_GGUF_INVALID ?? 0) > 50);
  });

  it("checkpoints: 120 mutated checkpoints convert and load, or fail with a coded error and leave nothing behind", { timeout: 240_000 }, async (t) => {
    // with the checks of src/validate-checkpoint.ts run where the converter is to call them
    const s = await runFuzz({ gguf: 0, checkpoint: 120, seed: SEED, timeoutMs: 20_000, validateCheckpoints: true });
    check(s, t);
    assert.ok(s.checkpoint.converted > 5);
  });

  it("checkpoints through the converter alone (no prior checks): clean errors and no leftovers", { timeout: 240_000 }, async (t) => {
    const s = await runFuzz({ gguf: 0, checkpoint: 40, seed: SEED + 1, timeoutMs: 20_000 });
    check(s, t);
  });

  it("regressions: inputs that crashed llama.cpp or passed unchecked are refused with ERR_GGUF_INVALID naming the field", async () => {
    const base = await readFile(await compactGguf(FUZZ_CACHE));
    const dir = join(FUZZ_CACHE, "regressions");
    await mkdir(dir, { recursive: true });
    const U32 = 4, I32 = 5, F32 = 6, STR = 8;
    const cases: [string, number, string | number, RegExp][] = [
      // SIGABRT: llama-model.cpp GGML_ASSERT(n_expert_used_max > 0) (fuzz seed 2, gguf:178)
      ["qwen3.expert_count", U32, 8, /qwen3\.expert_count/],
      ["qwen3.expert_used_count", U32, 2, /qwen3\.expert_used_count/],
      // GGML_ASSERT(hparams.n_layer_nextn <= hparams.n_layer_all) / rope_scaling_type_train != UNSPECIFIED
      ["qwen3.nextn_predict_layers", U32, 5, /nextn_predict_layers/],
      ["qwen3.rope.scaling.type", STR, "xyz", /rope\.scaling\.type/],
      // divisions by zero and shapes llama.cpp derives from them
      ["qwen3.attention.head_count_kv", U32, 0, /head_count_kv/],
      ["qwen3.attention.head_count", U32, 0, /head_count/],
      ["qwen3.block_count", U32, 100000, /block_count/],
      // token ids outside the vocabulary, and sampling defaults that reach the sampler unchecked
      ["tokenizer.ggml.eos_token_id", U32, 1024, /eos_token_id/],
      ["tokenizer.ggml.eot_token_id", U32, 0xffffffff, /eot_token_id/],
      ["general.sampling.temp", F32, NaN, /general\.sampling\.temp/],
      ["general.sampling.top_k", I32, -5, /general\.sampling\.top_k/],
      ["general.alignment", U32, 0, /general\.alignment/],
    ];
    for (const [key, type, value, message] of cases) {
      const path = join(dir, `${key}-${String(value)}.gguf`);
      await writeFile(path, withMetadata(base, key, type, value));
      await assert.rejects(loadModel(path, { contextSize: 64, threads: 1 }), (e: { code?: string; message: string }) => {
        assert.equal(e.code, "ERR_GGUF_INVALID", `${key} = ${value}: ${e.message}`);
        assert.match(e.message, message);
        return true;
      });
    }
    // the untouched base loads: the regressions fail for their edit alone
    await readGguf(await compactGguf(FUZZ_CACHE));
  });

  it("regression: a chat template that renders 200,000 special tokens is a prompt too long, at once (it hung in llama.cpp's quadratic partition)", async () => {
    const base = await readFile(await compactGguf(FUZZ_CACHE));
    const path = join(FUZZ_CACHE, "regressions", "chat_template-200000-specials.gguf");
    await mkdir(join(FUZZ_CACHE, "regressions"), { recursive: true });
    await writeFile(path, withMetadata(base, "tokenizer.chat_template", 8, "{% for i in range(200000) %}<|im_start|>{% endfor %}"));
    const model = await loadModel(path, { contextSize: 64, threads: 1 });
    try {
      await assert.rejects(async () => {
        for await (const _ of model.chat([{ role: "user", content: "hi" }], { maxTokens: 2 })) { /* drain */ }
      }, (e: { code?: string }) => e.code === "ERR_CONTEXT_OVERFLOW");
    } finally {
      await model.dispose();
    }
  });

  it("the reader's ggml type table agrees with the addon's ggml", () => {
    const addon = native();
    for (const [type, layout] of Object.entries(GGML_TYPE_LAYOUT)) {
      const info = addon.typeInfo(Number(type));
      assert.equal(info.blockSize, layout.blockSize, `${layout.name} block size`);
      assert.equal(info.typeSize, layout.typeSize, `${layout.name} type size`);
    }
  });
});
