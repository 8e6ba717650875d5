// Benchmark driver for node-llama-cpp (installed on demand in .cache/node-llama-cpp), its own prebuilt CPU binary,
// greedy LlamaContextSequence.evaluate(), as ../../shared/ANCHORS.md measured it.
// argv: nodeLlamaCppDir model threads promptTokens genTokens contextSize → one JSON line on stdout.
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [dir, file, threads, promptTokens, genTokens, contextSize] = process.argv.slice(2);
const require = createRequire(join(dir, "package.json"));
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(require.resolve("node-llama-cpp")).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false });
const t0 = performance.now();
const model = await llama.loadModel({ modelPath: file });
const context = await model.createContext({ contextSize: Number(contextSize), batchSize: 512, threads: Number(threads) });
const loadMs = performance.now() - t0;
const sequence = context.getSequence();
const prompt = model.tokenize(" hello".repeat(Number(promptTokens)));
if (prompt.length !== Number(promptTokens)) throw new Error(`prompt has ${prompt.length} tokens`);
// prompt speed: time to the first generated token
let start = performance.now();
for await (const _ of sequence.evaluate(prompt, { temperature: 0 })) break;
const ttftMs = performance.now() - start;
const pp = Number(promptTokens) / (ttftMs / 1000);
await sequence.clearHistory();
// generation speed: 1-token prompt, then genTokens more tokens after the first
let n = 0, tFirst = 0;
start = performance.now();
for await (const _ of sequence.evaluate(model.tokenize(" hello"), { temperature: 0 })) {
  if (n === 0) tFirst = performance.now();
  if (++n > Number(genTokens)) break;
}
const tg = Number(genTokens) / ((performance.now() - tFirst) / 1000);
await context.dispose();
await model.dispose();
console.log(JSON.stringify({ loadMs, pp, tg, ttftMs }));
