/**
 * native/tokenizer.cc against llama_tokenize: the same tokens for texts that mix special tokens (control and
 * user-defined), their fragments, whitespace and multi-byte text, with and without special parsing; and a text with
 * 200,000 special tokens, which llama.cpp's own partition takes minutes over (quadratic), tokenized at once.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { loadModel, type Model } from "../src/index.js";
import { Rng } from "../scripts/fixtures/checkpoint.js";
import { converted, TINY_QWEN3 } from "./support/models.js";

const PARTS = [
  "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<|vision_start|>",
  "<|im_", "im_end|>", "<", "|>", " ", "  ", "\n", "\n\n", "\t", "user", "assistant", "Hello", " world", "héllo", "你好", "🙂",
  "<|fim_prefix|>", "<|box_start|>", "0123", "'s", "  <|im_end|>  ",
];

describe("tokenizer", () => {
  let model: Model;
  let nativeModel: { tokenize(text: string, special: boolean, viaLlama?: boolean): Int32Array };
  before(async () => {
    model = await loadModel((await converted("qwen3-tied-gqa", TINY_QWEN3, "f32")).out, { contextSize: 64, threads: 1 });
    nativeModel = (model as unknown as { nativeModel: typeof nativeModel }).nativeModel;
  });
  after(() => model.dispose());

  it("gives llama_tokenize's tokens for 600 random mixtures of special tokens and text", () => {
    const rng = new Rng(11);
    for (let i = 0; i < 600; i++) {
      const n = 1 + Math.floor(rng.uniform() * 24);
      let text = "";
      for (let j = 0; j < n; j++) text += PARTS[Math.floor(rng.uniform() * PARTS.length)];
      for (const special of [true, false]) {
        const ours = Array.from(nativeModel.tokenize(text, special));
        const reference = Array.from(nativeModel.tokenize(text, special, true));
        assert.deepEqual(ours, reference, `${JSON.stringify(text)} special=${special}`);
      }
    }
  });

  it("the empty text and a text without special tokens", () => {
    for (const text of ["", "plain text only", " ".repeat(1000), "x".repeat(100_000)]) {
      assert.deepEqual(Array.from(nativeModel.tokenize(text, true)), Array.from(nativeModel.tokenize(text, true, true)));
    }
  });

  it("200,000 special tokens in one text are tokenized (llama.cpp's partition is quadratic in them)", () => {
    const text = (n: number) => `<|im_start|>user\n${"a<|im_end|> b".repeat(n)}`;
    const imEnd = model.tokenize("<|im_end|>", { special: true });
    assert.equal(imEnd.length, 1);
    const ids = model.tokenize(text(200_000), { special: true });
    assert.equal(ids.filter((t) => t === imEnd[0]).length, 200_000);
    // the same text at a size the reference finishes quickly
    assert.deepEqual(Array.from(nativeModel.tokenize(text(2000), true)), Array.from(nativeModel.tokenize(text(2000), true, true)));
  });
});
