/** Tiny test models: generated once per test process under .cache/test-fixtures, converted with our converter. */
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { convert, type OutputType } from "../../src/index.js";
import { makeCheckpoint, type CheckpointOptions, type CheckpointShape } from "../../scripts/fixtures/checkpoint.js";

export const fixtureRoot = join(import.meta.dirname, "..", "..", ".cache", "test-fixtures");

/** GQA (4 query heads over 2 KV heads) and head_dim 32 ≠ hidden / heads = 16. */
export const TINY_QWEN3: CheckpointShape = { arch: "qwen3", hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 32, ffn: 128, vocab: 151936, tied: true, contextLength: 4096 };
export const TINY_QWEN3_UNTIED: CheckpointShape = { ...TINY_QWEN3, tied: false };
export const TINY_QWEN2: CheckpointShape = { arch: "qwen2", hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, ffn: 128, vocab: 151936, tied: false, contextLength: 4096 };
/** Rows of 256 so that K-quants apply without fallback. */
export const SMALL_QWEN3: CheckpointShape = { arch: "qwen3", hidden: 256, layers: 2, heads: 4, kvHeads: 2, headDim: 64, ffn: 512, vocab: 151936, tied: true, contextLength: 4096 };

const checkpoints = new Map<string, Promise<{ dir: string; weights: Map<string, Float32Array> }>>();

export function checkpoint(key: string, shape: CheckpointShape, options: CheckpointOptions = {}) {
  let p = checkpoints.get(key);
  if (!p) {
    p = (async () => {
      await mkdir(fixtureRoot, { recursive: true });
      const dir = join(fixtureRoot, key);
      const weights = await makeCheckpoint(dir, shape, { ...options, keep: true });
      return { dir, weights };
    })();
    checkpoints.set(key, p);
  }
  return p;
}

export async function converted(key: string, shape: CheckpointShape, type: OutputType, options: CheckpointOptions = {}) {
  const { dir, weights } = await checkpoint(key, shape, options);
  const out = join(fixtureRoot, `${key}-${type}.gguf`);
  if (!existsSync(out)) await convert(dir, { out, type, force: true });
  return { dir, out, weights };
}
