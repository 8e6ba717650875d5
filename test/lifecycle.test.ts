/** Environment teardown: the cleanup hook stops the engine and frees contexts when a worker or the process exits. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Worker } from "node:worker_threads";
import { converted, TINY_QWEN3 } from "./support/models.js";

const src = join(import.meta.dirname, "..", "src", "index.ts");
const streamForever = (path: string, onPiece: string, streams: number) => `
  const { loadModel } = await import(${JSON.stringify(src)});
  const model = await loadModel(${JSON.stringify(path)}, { contextSize: 256, threads: 1, parallel: 4 });
  let n = 0;
  await Promise.all(Array.from({ length: ${streams} }, async (_, i) => {
    for await (const _ of model.stream("Hello " + i, { maxTokens: 100000, ignoreEos: true })) { if (++n === 3) { ${onPiece} } }
  }));
`;

describe("lifecycle", () => {
  it("terminating a worker in the middle of one and of several generations frees them without crashing the process", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    for (const streams of [1, 4, 6]) {
      const worker = new Worker(join(import.meta.dirname, "support", "stream-worker.mjs"), { workerData: { path: out, streams } });
      await new Promise<void>((resolve, reject) => {
        worker.once("message", () => resolve());
        worker.once("error", reject);
      });
      assert.equal(await worker.terminate(), 1);
    }
  });

  for (const streams of [1, 6]) {
    it(`process.exit during ${streams === 1 ? "a generation" : "several generations with calls queued"} exits cleanly`, async () => {
      const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
      const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", streamForever(out, "process.exit(7);", streams)], { encoding: "utf8", timeout: 60_000 });
      assert.equal(r.signal, null, r.stderr);
      assert.equal(r.status, 7, r.stderr);
    });
  }
});
