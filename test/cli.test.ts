import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";
import { checkpoint, converted, TINY_QWEN3 } from "./support/models.js";

const cli = join(import.meta.dirname, "..", "src", "cli.ts");
const run = (...args: string[]) => execFileSync(process.execPath, ["--import", "tsx", cli, ...args], { encoding: "utf8" });

describe("cli", () => {
  it("inspect prints metadata and a tensor table with type counts", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const text = run("inspect", out);
    assert.match(text, /general\.architecture\s+"qwen3"/);
    assert.match(text, /tokenizer\.ggml\.tokens\s+\["!", "\\"", .*\(151936 items\)\]/);
    assert.match(text, /blk\.1\.ffn_down\.weight\s+F32\s+\[128, 64\]/);
    assert.match(text, /F32\s+24\s+/); // 2 layers × 11 + token_embd + output_norm
  });
  it("convert --dry-run prints the plan without writing", async () => {
    const { dir } = await checkpoint("qwen3-tied-gqa", TINY_QWEN3);
    const text = run("convert", dir, "--type", "q8_0", "--dry-run");
    assert.match(text, /token_embd\.weight\s+Q8_0\s+\[64, 151936\]/);
    assert.match(text, /blk\.0\.attn_norm\.weight\s+F32/);
    assert.match(text, /total .* \(q8_0, qwen3\)/);
  });
  it("errors name the problem and exit with 1", () => {
    const r = spawnSync(process.execPath, ["--import", "tsx", cli, "inspect", "/no/such.gguf"], { encoding: "utf8" });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /model file not found: \/no\/such\.gguf \(ERR_MODEL_NOT_FOUND\)/);
  });
  it("doctor names the variant and the llama.cpp commit", () => {
    assert.match(run("doctor"), /cpu variant: +avx(2|512)[\s\S]*llama\.cpp: +de3ff815/);
  });
});
