/**
 * `npm run bench:classify`: one model doing several tasks.
 *
 *   npm run bench:classify [-- --models qwen3-0.6b,qwen1.5-0.5b] [--type q4_k_m] [--threads 2] [--n 20]
 *
 * - Classifications per second with 2 and with 10 labels: ours (the prompt decoded once, labels scored on
 *   sequences sharing its cells), the naive way (one full prompt + label per label, through logits()), and seed
 *   002's way (generate up to 2 tokens greedily and parse; no prompt cache, as in its transformers code). Each
 *   classification has a text of its own; the instruction is shared, which our prefix cache reuses.
 * - The cost of a grammar: generation tok/s under a JSON Schema against the same sampling without one.
 * - The response cache: the latency of a hit, in-process.
 */
import { loadModel, type Model } from "../../src/index.js";
import { jsonSchemaToGbnf } from "../../src/grammar/json-schema.js";
import { versions } from "../../src/versions.js";
import { benchModel, median, parseFlags, spread } from "./common.js";

const LABELS_2 = ["positive", "negative"];
const LABELS_10 = ["joy", "sadness", "anger", "fear", "surprise", "disgust", "trust", "anticipation", "neutral", "confusion"];

function review(i: number): string {
  return `Review #${i}: the plot of this film was ${["thin", "rich", "slow", "daring", "dull"][i % 5]} and the acting ${["superb", "wooden", "fine", "uneven"][i % 4]}; I would ${i % 3 ? "" : "not "}see it again.`;
}

async function perSecond(n: number, call: (i: number) => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await call(i);
  return n / ((performance.now() - t0) / 1000);
}

async function classifyRates(model: Model, labels: string[], n: number, offset: number) {
  const instruction = `Classify the user's message. Answer with exactly one of: ${labels.join(", ")}.`;
  const prompt = (text: string) => model.renderChat([{ role: "system", content: instruction }, { role: "user", content: text }], { thinking: false });
  const ours = await perSecond(n, (i) => model.classify(review(offset + i), { labels, instruction }));
  const naive = await perSecond(Math.max(2, n / 4), async (i) => {
    const p = model.tokenize(prompt(review(offset + 1000 + i)), { special: true });
    for (const label of labels) await model.logits([...p, ...model.tokenize(label)]);
  });
  const seed002 = await perSecond(n, (i) => model.generate(prompt(review(offset + 2000 + i)), { maxTokens: 2, temperature: 0, cachePrompt: false }));
  return { ours, naive, seed002 };
}

async function main() {
  const { flags } = parseFlags(process.argv.slice(2));
  const threads = Number(flags.threads ?? 2), n = Number(flags.n ?? 20);
  const lines = [`## bench:classify — ${new Date().toISOString().slice(0, 10)}, ${threads} threads, CPU variant ${versions().cpuVariant}`, ""];
  const rates: string[] = [], grammar: string[] = [], cache: string[] = [];
  for (const name of (flags.models ?? "qwen3-0.6b,qwen1.5-0.5b").split(",")) {
    const file = await benchModel(name, (flags.type ?? "q4_k_m") as never);
    const model = await loadModel(file, { threads, contextSize: 1024, responseCache: true });
    try {
      await model.classify("warm-up", { labels: LABELS_2 });
      const runs2 = [], runs10 = [];
      for (let rep = 0; rep < 2; rep++) {
        runs2.push(await classifyRates(model, LABELS_2, n, rep * 10_000));
        runs10.push(await classifyRates(model, LABELS_10, n, rep * 10_000 + 5000));
      }
      const m = (xs: { ours: number; naive: number; seed002: number }[], k: "ours" | "naive" | "seed002") => median(xs.map((x) => x[k]));
      for (const [labels, runs] of [[2, runs2], [10, runs10]] as const) {
        rates.push(`| ${name} | ${labels} | ${m(runs, "ours").toFixed(2)} (${spread(runs.map((r) => r.ours))}) | ${m(runs, "naive").toFixed(2)} | ${m(runs, "seed002").toFixed(2)} | ${(m(runs, "ours") / m(runs, "naive")).toFixed(1)}× |`);
      }
      rates.push(`| ${name} | cost of 10 labels vs 2 (goal ≤ 1.5) | ${(m(runs2, "ours") / m(runs10, "ours")).toFixed(2)} | | | |`);

      // grammar: the same seeded sampling with and without a JSON Schema (a free string field keeps it going). Masks
      // are cached per grammar text across requests (native/sampler.cc), so a schema's first use is measured apart
      // from its repeats: "first use" appends a comment that changes the grammar's text (not its language, so the
      // output is the same), "repeated" follows one warm-up request.
      const gbnf = jsonSchemaToGbnf({ type: "object", properties: { summary: { type: "string" }, score: { type: "integer", minimum: 1, maximum: 5 } }, required: ["summary", "score"], additionalProperties: false });
      const speeds = { free: [] as number[], first: [] as number[], repeated: [] as number[] };
      const generateAt = async (seed: number, grammar?: string) => {
        const r = await model.generate("Summarize the review as JSON:", { temperature: 1, seed, maxTokens: 128, ignoreEos: true, grammar, cachePrompt: false });
        return r.tokens.length / (r.timings.genMs / 1000);
      };
      await generateAt(10, gbnf);
      for (let rep = 0; rep < 3; rep++) {
        speeds.free.push(await generateAt(11 + rep));
        speeds.first.push(await generateAt(11 + rep, `${gbnf}\n# first use ${Math.random()}\n`));
        speeds.repeated.push(await generateAt(11 + rep, gbnf));
      }
      const cost = (xs: number[]) => `${((1 - median(xs) / median(speeds.free)) * 100).toFixed(1)}%`;
      grammar.push(`| ${name} | ${median(speeds.free).toFixed(1)} (${spread(speeds.free)}) | ${median(speeds.first).toFixed(1)} (${spread(speeds.first)}) | ${median(speeds.repeated).toFixed(1)} (${spread(speeds.repeated)}) | ${cost(speeds.first)} | ${cost(speeds.repeated)} |`);

      // response cache: a hit, in-process
      await model.classify("cached text", { labels: LABELS_2 });
      const hits: number[] = [];
      for (let i = 0; i < 200; i++) {
        const t0 = performance.now();
        await model.classify("cached text", { labels: LABELS_2 });
        hits.push(performance.now() - t0);
      }
      const gen = { temperature: 0, maxTokens: 64, ignoreEos: true };
      await model.generate("cached prompt", gen);
      const genHits: number[] = [];
      for (let i = 0; i < 200; i++) {
        const t0 = performance.now();
        await model.generate("cached prompt", gen);
        genHits.push(performance.now() - t0);
      }
      cache.push(`| ${name} | ${median(hits).toFixed(3)} ms | ${median(genHits).toFixed(3)} ms (64 tokens replayed in pieces) |`);
    } finally {
      await model.dispose();
    }
  }
  lines.push("### Classifications per second (median of 2 runs; each text distinct)", "",
    "| model | labels | ours | naive (a full prompt per label) | seed 002 (generate 2 tokens, parse) | ours vs naive |", "|---|---|---|---|---|---|", ...rates, "",
    "### A grammar's cost (generation tok/s, median of 3, seeded sampling, 128 tokens)", "",
    "| model | no grammar | JSON Schema, first use | JSON Schema, repeated | cost, first use | cost, repeated (goal ≤ 10%) |", "|---|---|---|---|---|---|", ...grammar, "",
    "### Response cache hit latency (median of 200, in-process; goal ≤ 1 ms)", "",
    "| model | classify hit | generate hit |", "|---|---|---|", ...cache, "");
  console.log(lines.join("\n"));
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
