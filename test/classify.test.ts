/** The label classifier (exact label probabilities) and the response cache. */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { loadModel, type Model } from "../src/index.js";
import { converted, TINY_QWEN3 } from "./support/models.js";

/** log-softmax of one logits row at `token`, in float64. */
function logprob(row: Float32Array, token: number): number {
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  return row[token] - max - Math.log(sum);
}

describe("classify", () => {
  let model: Model;
  before(async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    model = await loadModel(out, { contextSize: 1024, threads: 2, kvCacheType: "f32", responseCache: { maxEntries: 100, maxBytes: 1 << 20 } });
  });
  after(() => model.dispose());

  const cases: [string, string[]][] = [
    ["single-token labels", [" positive", " negative"]],
    ["multi-token labels", [" absolutely wonderful", " quite terrible indeed", " meh"]],
    ["Chinese labels", ["正面", "负面", "中性的评价"]],
  ];
  for (const [name, labels] of cases) {
    it(`chat: false — probabilities are the softmax of label scores computed from logits() (${name})`, async () => {
      const text = "Review: the film was a delight from start to finish. Sentiment:";
      const result = await model.classify(text, { labels, chat: false });
      const prompt = model.tokenize(text, { special: true });
      const scores: number[] = [];
      for (const label of labels) {
        const tokens = model.tokenize(label);
        const logits = await model.logits([...prompt, ...tokens]);
        const v = model.info.vocabSize;
        let score = 0;
        for (let k = 0; k < tokens.length; k++) score += logprob(logits.subarray((prompt.length - 1 + k) * v, (prompt.length + k) * v), tokens[k]);
        scores.push(score);
      }
      const max = Math.max(...scores);
      const total = scores.reduce((a, s) => a + Math.exp(s - max), 0);
      labels.forEach((label, i) => {
        assert.ok(Math.abs(result.logprobs[label] - scores[i]) < 1e-3, `${label}: ${result.logprobs[label]} vs ${scores[i]}`);
        assert.ok(Math.abs(result.probabilities[label] - Math.exp(scores[i] - max) / total) < 1e-4, `${label}`);
      });
      const sum = Object.values(result.probabilities).reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(sum - 1) < 1e-9, `sum ${sum}`);
      assert.equal(result.label, labels[scores.indexOf(max)]);
    });
  }

  it("multi-token labels are scored in the prompt's own decode: one decode per classification", async () => {
    const before = model.stats().decodes;
    await model.classify(`A fresh text ${Date.now()}:`, { labels: [" absolutely wonderful", " quite terrible indeed", " meh"], chat: false });
    assert.equal(model.stats().decodes - before, 1);
  });

  it("more multi-token labels than free sequences, beside a streaming reply: the same scores as logits()", async () => {
    // 40 labels of several tokens: those that find a sequence ride with the prompt's last chunk, the rest decode in
    // later steps; the stream keeps the prompt in small chunks.
    const labels = Array.from({ length: 40 }, (_, i) => ` option number ${i} of many`);
    const text = `Pick one for case ${Date.now()}:`;
    const reply = model.stream("Tell a long story.", { maxTokens: 200, temperature: 0, ignoreEos: true });
    const consumed = (async () => { for await (const _ of reply); })();
    const result = await model.classify(text, { labels, chat: false });
    await consumed;
    const prompt = model.tokenize(text, { special: true }), v = model.info.vocabSize;
    for (const label of labels.filter((_, i) => i % 7 === 0)) {
      const tokens = model.tokenize(label);
      const logits = await model.logits([...prompt, ...tokens]);
      let score = 0;
      for (let k = 0; k < tokens.length; k++) score += logprob(logits.subarray((prompt.length - 1 + k) * v, (prompt.length + k) * v), tokens[k]);
      assert.ok(Math.abs(result.logprobs[label] - score) < 1e-3, `${label}: ${result.logprobs[label]} vs ${score}`);
    }
    const stats = model.stats();
    assert.equal(stats.active, 0);
    assert.ok(stats.kvCellsUsed <= stats.cachedTokens, `cells in use ${stats.kvCellsUsed}, tokens held ${stats.cachedTokens}: a shared cell leaked`);
  });

  it("chat: true renders the instruction and examples with the template; positive/negative get a sentiment instruction", async () => {
    const r = await model.classify("I loved it!", { labels: ["positive", "negative"] });
    assert.ok(["positive", "negative"].includes(r.label));
    assert.ok(Math.abs(r.probabilities.positive + r.probabilities.negative - 1) < 1e-9);
    const withExamples = await model.classify("I loved it!", { labels: ["positive", "negative"], examples: [{ text: "Awful.", label: "negative" }], instruction: "Sentiment?" });
    assert.notDeepEqual(withExamples.logprobs, r.logprobs, "examples and instruction change the prompt");
  });

  it("bad labels are errors that name the problem", async () => {
    await assert.rejects(model.classify("x", { labels: ["only"] }), /at least 2/);
    await assert.rejects(model.classify("x", { labels: ["a", "a"] }), /distinct/);
    await assert.rejects(model.classify("x", { labels: ["a", ""] }), /non-empty/);
  });

  it("a classification started while a 500-token reply streams finishes before that reply", async () => {
    let replyDone = false;
    const reply = model.generate("Tell me a long story.", { temperature: 0, ignoreEos: true, maxTokens: 500 }).then((r) => ((replyDone = true), r));
    await new Promise((r) => setTimeout(r, 20));
    const r = await model.classify("Fresh text " + Date.now(), { labels: ["positive", "negative"], chat: false });
    assert.ok(r.label);
    assert.equal(replyDone, false, "the classification waited for the reply");
    assert.equal((await reply).tokens.length, 500);
  });
});

describe("response cache", () => {
  let model: Model;
  before(async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    model = await loadModel(out, { contextSize: 256, threads: 2, responseCache: { maxEntries: 3, maxBytes: 1 << 20 } });
  });
  after(() => model.dispose());

  it("a deterministic request is served again without decoding, byte-identical, also as a stream", async () => {
    const opts = { temperature: 0, maxTokens: 12, ignoreEos: true };
    const first = await model.generate("cache me", opts);
    assert.equal(first.timings.cached, false);
    const decodes = model.stats().decodes;
    const t0 = performance.now();
    const second = await model.generate("cache me", opts);
    const ms = performance.now() - t0;
    assert.equal(model.stats().decodes, decodes, "no decode for a hit");
    assert.equal(second.timings.cached, true);
    assert.equal(second.text, first.text);
    assert.deepEqual(second.tokens, first.tokens);
    const pieces: string[] = [];
    for await (const p of model.stream("cache me", opts)) pieces.push(p);
    assert.ok(pieces.length > 1, "a hit still streams in pieces");
    assert.equal(pieces.join(""), first.text);
    assert.ok(ms < 50, `hit took ${ms.toFixed(1)} ms`);
    // a fixed seed makes sampling reproducible: cached too
    const seeded = await model.generate("cache me", { ...opts, temperature: 0.9, seed: 5 });
    assert.equal((await model.generate("cache me", { ...opts, temperature: 0.9, seed: 5 })).text, seeded.text);
    assert.equal(model.stats().decodes > decodes, true);
    assert.ok(model.stats().responseCache!.hits >= 3);
  });

  it("a changed option misses; random sampling is never cached; the bound evicts least recently used", async () => {
    const opts = { temperature: 0, maxTokens: 6, ignoreEos: true };
    await model.generate("p1", opts);
    const decodes = model.stats().decodes;
    const changed = await model.generate("p1", { ...opts, maxTokens: 7 });
    assert.equal(changed.timings.cached, false);
    assert.ok(model.stats().decodes > decodes);
    const random = await model.generate("p1", { temperature: 0.9, maxTokens: 6 });
    assert.equal(random.timings.cached, false);
    assert.equal((await model.generate("p1", { temperature: 0.9, maxTokens: 6 })).timings.cached, false);
    // the 3-entry cache now ends with p1/6, p1/7; two more push p1/6 (least recently used) out
    await model.generate("p2", opts);
    await model.generate("p3", opts);
    assert.equal((await model.generate("p3", opts)).timings.cached, true);
    assert.equal((await model.generate("p2", opts)).timings.cached, true);
    assert.equal((await model.generate("p1", opts)).timings.cached, false, "evicted");
  });

  it("classifications are cached", async () => {
    const a = await model.classify("great", { labels: ["positive", "negative"] });
    const decodes = model.stats().decodes;
    const b = await model.classify("great", { labels: ["positive", "negative"] });
    assert.equal(b.cached, true);
    assert.deepEqual(b.probabilities, a.probabilities);
    assert.equal(model.stats().decodes, decodes);
  });
});

describe("sampling controls", () => {
  let model: Model;
  before(async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    model = await loadModel(out, { contextSize: 256, threads: 2, kvCacheType: "f32" });
  });
  after(() => model.dispose());

  it("logitBias bans and forces tokens", async () => {
    const free = await model.generate("Hello", { temperature: 0, maxTokens: 4, ignoreEos: true });
    const banned = await model.generate("Hello", { temperature: 0, maxTokens: 4, ignoreEos: true, logitBias: { [free.tokens[0]]: -100 } });
    assert.notEqual(banned.tokens[0], free.tokens[0]);
    const target = model.tokenize(" cat")[0];
    const forced = await model.generate("Hello", { temperature: 0.8, seed: 3, maxTokens: 5, ignoreEos: true, logitBias: { [target]: 100 } });
    assert.deepEqual(forced.tokens, [target, target, target, target, target]);
    await assert.rejects(async () => model.generate("x", { logitBias: { [-1]: 1 } }), (e: { code?: string }) => e.code === "ERR_OUT_OF_RANGE");
  });

  it("logprobs equal the log-softmax of logits() and list the top alternatives in order", async () => {
    const prompt = "Once upon";
    const stream = model.complete(prompt, { temperature: 0, maxTokens: 3, ignoreEos: true, logprobs: true, topLogprobs: 3 });
    let pieces = 0;
    for await (const p of stream) if (p.logprobs?.length) pieces++;
    const r = await stream.result;
    assert.ok(pieces > 0, "pieces carry their tokens' log-probabilities");
    assert.equal(r.logprobs!.length, 3);
    const ids = model.tokenize(prompt, { special: true });
    const v = model.info.vocabSize;
    for (let k = 0; k < 3; k++) {
      const logits = await model.logits([...ids, ...r.tokens.slice(0, k)]);
      const row = logits.subarray((ids.length + k - 1) * v, (ids.length + k) * v);
      const entry = r.logprobs![k];
      assert.equal(entry.id, r.tokens[k]);
      assert.ok(Math.abs(entry.logprob - logprob(row, entry.id)) < 1e-3, `${entry.logprob} vs ${logprob(row, entry.id)}`);
      assert.equal(entry.top.length, 3);
      assert.equal(entry.top[0].id, entry.id, "greedy picks the most likely token");
      assert.ok(entry.top[0].logprob >= entry.top[1].logprob && entry.top[1].logprob >= entry.top[2].logprob);
      assert.deepEqual(Buffer.from(entry.bytes).toString("utf8"), entry.token);
    }
  });
});
