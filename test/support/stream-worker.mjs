// Worker body for the lifecycle test: loads a model, runs `streams` generations at once until the parent
// terminates the worker.
import { parentPort, workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
const { loadModel } = await import("../../src/index.ts");
const model = await loadModel(workerData.path, { contextSize: 256, threads: 1, parallel: 4 });
let n = 0;
await Promise.all(Array.from({ length: workerData.streams ?? 1 }, async (_, i) => {
  for await (const _ of model.stream(`Hello ${i}`, { maxTokens: 100000, ignoreEos: true })) {
    if (++n === 3) parentPort.postMessage("streaming");
  }
}));
