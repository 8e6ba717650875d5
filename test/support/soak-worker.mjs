// Worker body for the soak test: a model in a worker running several streams at once; the parent terminates the
// worker in the middle of them (or, with workerData.finish, lets it finish and dispose).
import { parentPort, workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
const { loadModel } = await import("../../src/index.ts");
const model = await loadModel(workerData.path, { contextSize: 128, threads: 1, parallel: 2 });
let pieces = 0;
const streams = Array.from({ length: 3 }, async (_, i) => {
  for await (const _ of model.stream(`Stream ${i}:`, { maxTokens: workerData.finish ? 8 : 100000, ignoreEos: true, seed: i })) {
    if (++pieces === 4) parentPort.postMessage("streaming");
  }
});
if (workerData.finish) {
  await Promise.all(streams);
  await model.dispose();
  parentPort.postMessage("done");
}
