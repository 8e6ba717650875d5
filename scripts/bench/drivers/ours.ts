/**
 * Benchmark driver for qwen-gguf, run in its own process so its peak RSS is its own.
 * argv: model threads promptTokens genTokens contextSize kvCacheType → one JSON line on stdout.
 */
import { loadModel } from "../../../src/index.js";
import { measureOurs } from "../stream.js";

const [file, threads, promptTokens, genTokens, contextSize, kvCacheType] = process.argv.slice(2);
const t0 = performance.now();
const model = await loadModel(file, { threads: Number(threads), contextSize: Number(contextSize), batchSize: 512, kvCacheType: kvCacheType as never });
const loadMs = performance.now() - t0;
const figures = await measureOurs(model, Number(promptTokens), Number(genTokens));
await model.dispose();
console.log(JSON.stringify({ loadMs, ...figures }));
