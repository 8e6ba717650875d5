/** The engine: concurrent generations on one context, cancellation per sequence, admission, the prefix cache. */
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { loadModel, type Model } from "../src/index.js";
import { settledMemory } from "./support/memory.js";
import { converted, TINY_QWEN3 } from "./support/models.js";

const gc = (globalThis as { gc?: () => void }).gc;
const greedy = { temperature: 0, ignoreEos: true } as const;
/** A system prompt of 300+ tokens. */
const SYSTEM = Array.from({ length: 32 }, (_, i) => `Rule ${i}: answer briefly and kindly.`).join(" ");

describe("engine: concurrent generations", () => {
  let model: Model;
  let path: string;
  before(async () => {
    path = (await converted("qwen3-tied-gqa", TINY_QWEN3, "f32")).out;
    // f32 weights and KV cache: batched and single-sequence decodes compute the same sums
    model = await loadModel(path, { contextSize: 256, threads: 2, kvCacheType: "f32", parallel: 4 });
  });
  after(() => model.dispose());

  it("four concurrent greedy streams each give the text of their prompt run alone", async () => {
    const prompts = ["One fish", "Two birds sing", "Three cats", "A tale of four cities"];
    // cachePrompt: false so each run decodes its whole prompt, alone or batched
    const opts = { ...greedy, maxTokens: 24, cachePrompt: false };
    const alone = [];
    for (const p of prompts) alone.push(await model.generate(p, opts));
    const decodes = model.stats().decodes;
    const together = await Promise.all(prompts.map((p) => model.generate(p, opts)));
    for (let i = 0; i < prompts.length; i++) {
      assert.deepEqual(together[i].tokens, alone[i].tokens, `prompt ${i}`);
      assert.equal(together[i].text, alone[i].text);
    }
    // batched: one decode step serves all four, so far fewer steps than 4 × 24
    assert.ok(model.stats().decodes - decodes < 40, `${model.stats().decodes - decodes} decodes for 4 × 24 tokens`);
  });

  it("cancelling one of four streams leaves the other three's output unchanged", async () => {
    const prompts = ["alpha", "beta gamma", "delta", "epsilon zeta eta"];
    const opts = { ...greedy, maxTokens: 40, cachePrompt: false };
    const alone = [];
    for (const p of prompts) alone.push(await model.generate(p, opts));
    const controller = new AbortController();
    const runs = prompts.map((p, i) => (i === 1 ? model.generate(p, { ...opts, signal: controller.signal }) : model.generate(p, opts)));
    await sleep(5);
    controller.abort();
    await assert.rejects(runs[1], (e: { code?: string }) => e.code === "ABORT_ERR");
    for (const i of [0, 2, 3]) assert.deepEqual((await runs[i]).tokens, alone[i].tokens, `prompt ${i}`);
    // break on one stream
    const streams = prompts.map((p) => model.stream(p, opts));
    const texts = await Promise.all(streams.map(async (s, i) => {
      let text = "";
      let n = 0;
      for await (const piece of s) {
        text += piece;
        if (i === 2 && ++n === 3) break;
      }
      return text;
    }));
    assert.equal((await streams[2].result).finishReason, "abort");
    for (const i of [0, 1, 3]) assert.equal(texts[i], alone[i].text);
  });

  it("calls beyond parallel wait in FIFO order; aborting a waiting call rejects it at once", async () => {
    const opts = { ...greedy, maxTokens: 30 };
    const order: number[] = [];
    const running = Array.from({ length: 4 }, (_, i) => model.generate(`busy ${i}`, opts).then(() => order.push(i)));
    const controller = new AbortController();
    const waiting = model.generate("queued", { ...opts, signal: controller.signal });
    const last = model.generate("queued last", { ...opts, maxTokens: 2 }).then(() => order.push(5));
    assert.equal(model.stats().queued, 2);
    const t0 = Date.now();
    controller.abort();
    await assert.rejects(waiting, (e: { code?: string }) => e.code === "ABORT_ERR");
    assert.ok(Date.now() - t0 < 50, "a waiting call settles at once");
    await Promise.all([...running, last]);
    assert.equal(order.at(-1), 5, "the queued call ran after the running ones");
    assert.equal(model.stats().active, 0);
  });

  it("maxQueue rejects at once with ERR_QUEUE_FULL", async () => {
    const small = await loadModel(path, { contextSize: 64, threads: 1, parallel: 1, maxQueue: 1 });
    try {
      const opts = { ...greedy, maxTokens: 20 };
      const a = small.generate("a", opts);
      const b = small.generate("b", opts);
      await assert.rejects(small.generate("c", opts), (e: { code?: string }) => e.code === "ERR_QUEUE_FULL");
      await Promise.all([a, b]);
      await small.generate("d", { ...opts, maxTokens: 1 }); // room again
    } finally {
      await small.dispose();
    }
  });

  it("stats report active sequences, queued calls, cached tokens and KV cells", async () => {
    const s = model.stats();
    assert.equal(s.parallel, 4);
    assert.equal(s.kvCells, 1024);
    assert.ok(s.cachedTokens > 0 && s.kvCellsUsed > 0 && s.kvCellsUsed <= s.kvCells, JSON.stringify(s));
    const stream = model.stream("count me", { ...greedy, maxTokens: 200 });
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    assert.equal(model.stats().active, 1);
    await it.return!();
    assert.equal(model.stats().active, 0);
  });
});

describe("engine: prefix cache", () => {
  let path: string;
  before(async () => {
    path = (await converted("qwen3-tied-gqa", TINY_QWEN3, "f32")).out;
  });

  it("a shared 300-token system prompt is decoded once, also after another prompt ran in between", async () => {
    const model = await loadModel(path, { contextSize: 512, threads: 2, kvCacheType: "f32" });
    try {
      const system = model.tokenize(SYSTEM).length;
      assert.ok(system >= 300, `${system} tokens`);
      const opts = { ...greedy, maxTokens: 8 };
      const cold = await model.generate(`${SYSTEM}\nQ: first?`, opts);
      assert.equal(cold.timings.cachedTokens, 0);
      const warm = await model.generate(`${SYSTEM}\nQ: second?`, opts);
      assert.ok(warm.timings.cachedTokens >= 300, `cached ${warm.timings.cachedTokens}`);
      await model.generate("Something else entirely, with its own words and length.", opts);
      const again = await model.generate(`${SYSTEM}\nQ: first?`, opts);
      assert.ok(again.timings.cachedTokens >= 300, `cached ${again.timings.cachedTokens}`);
      assert.deepEqual(again.tokens, cold.tokens, "a cached prefix gives the same output as a cold one");
      // a request sharing the prefix with a *running* generation copies its cells
      const long = model.generate(`${SYSTEM}\nQ: long one`, { ...greedy, maxTokens: 60 });
      await sleep(20);
      const side = await model.generate(`${SYSTEM}\nQ: side`, opts);
      assert.ok(side.timings.cachedTokens >= 300, `cached ${side.timings.cachedTokens}`);
      await long;
    } finally {
      await model.dispose();
    }
  });

  it("the host-memory prompt cache restores an evicted system prompt, and a disk cache survives a restart", async () => {
    const dir = await mkdtemp(join(tmpdir(), "qwen-gguf-prompt-cache-"));
    try {
      // a pool of 512 cells: a long second prompt evicts the idle system-prompt sequence
      const options = { contextSize: 512, cacheSize: 512, parallel: 1, threads: 2, kvCacheType: "f32" as const, promptCache: { maxBytes: 64 << 20, dir } };
      const opts = { ...greedy, maxTokens: 8 };
      const model = await loadModel(path, options);
      const cold = await model.generate(`${SYSTEM}\nQ: first?`, opts);
      await model.generate("other ".repeat(400), { ...opts, maxTokens: 2 });
      assert.ok(model.stats().promptCache.stored >= 1, JSON.stringify(model.stats().promptCache));
      const restored = await model.generate(`${SYSTEM}\nQ: first?`, opts);
      assert.ok(restored.timings.cachedTokens >= 300, `cached ${restored.timings.cachedTokens}`);
      assert.equal(model.stats().promptCache.hits, 1);
      assert.deepEqual(restored.tokens, cold.tokens);
      await model.dispose(); // saves the idle sequences to the directory
      const files = (await readdir(dir)).filter((f) => f.endsWith(".qgpc"));
      assert.ok(files.length >= 1, `files: ${files}`);
      assert.ok(!(await readdir(dir)).some((f) => f.endsWith(".tmp")), "no temporary file left");

      const restarted = await loadModel(path, options);
      try {
        const first = await restarted.generate(`${SYSTEM}\nQ: first?`, opts);
        assert.ok(first.timings.cachedTokens >= 300, `cached ${first.timings.cachedTokens} after a restart`);
        assert.deepEqual(first.tokens, cold.tokens);
      } finally {
        await restarted.dispose();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("engine: chat sessions", () => {
  it("a session of 7 turns with maxTurns 5 sends the system message and the last 5 turns, reusing the cache", async () => {
    const path = (await converted("qwen3-tied-gqa", TINY_QWEN3, "f32")).out;
    const model = await loadModel(path, { contextSize: 2048, threads: 2 });
    try {
      const chat = model.createChat({ system: "You are terse.", maxTurns: 5, thinking: false });
      const cached: number[] = [];
      for (let turn = 1; turn <= 7; turn++) {
        const stream = chat.send(`message ${turn}`, { ...greedy, maxTokens: 6 });
        for await (const _ of stream) {
          // drain
        }
        cached.push((await stream.result).timings.cachedTokens);
      }
      const history = chat.history;
      assert.equal(history[0].role, "system");
      assert.equal(history.length, 1 + 2 * 5);
      assert.equal(history[1].content, "message 3");
      const next = chat.messagesFor("message 8");
      assert.deepEqual(next.map((m) => m.content).filter((_, i) => i % 2 === 1 && i > 0).slice(0, 5), ["message 3", "message 4", "message 5", "message 6", "message 7"].slice(0, 5));
      assert.equal(next.length, 1 + 2 * 5 + 1);
      // turns 2–5 start from the previous turn's cache (turns 6 and 7 drop the oldest turn: the prefix changes)
      for (const c of cached.slice(1, 5)) assert.ok(c > 10, `cached ${cached}`);
      chat.reset();
      assert.equal(chat.history.length, 1);
    } finally {
      await model.dispose();
    }
  });
});

describe("engine: lifecycle", () => {
  let path: string;
  before(async () => {
    path = (await converted("qwen3-tied-gqa", TINY_QWEN3, "f32")).out;
  });

  for (const stage of ["prompt decode", "one generation", "four generations with calls queued", "scoring"] as const) {
    it(`dispose during ${stage}: every call ends with ERR_DISPOSED or its result, nothing hangs`, async () => {
      const model = await loadModel(path, { contextSize: 1024, threads: 2, parallel: stage.startsWith("four") ? 2 : 4 });
      const calls: Promise<unknown>[] = [];
      if (stage === "prompt decode") calls.push(model.generate("word ".repeat(900), { ...greedy, maxTokens: 5 }));
      if (stage === "one generation") calls.push(model.generate("hi", { ...greedy, maxTokens: 100000 }));
      if (stage.startsWith("four")) for (let i = 0; i < 4; i++) calls.push(model.generate(`hi ${i}`, { ...greedy, maxTokens: 100000 }));
      if (stage === "scoring") {
        calls.push(model.classify("word ".repeat(600), { labels: ["positive", "negative", "neutral"], chat: false }));
        calls.push(model.logits(model.tokenize("word ".repeat(500))));
      }
      await sleep(stage === "prompt decode" || stage === "scoring" ? 5 : 30);
      await model.dispose();
      const outcomes = await Promise.allSettled(calls);
      for (const o of outcomes) {
        if (o.status === "rejected") assert.equal((o.reason as { code?: string }).code, "ERR_DISPOSED", String(o.reason));
      }
      await assert.rejects(model.generate("after"), (e: { code?: string }) => e.code === "ERR_DISPOSED");
    });
  }

  it("dispose during load and during context creation", async () => {
    const controller = new AbortController();
    const loading = loadModel(path, { contextSize: 256, threads: 1, signal: controller.signal });
    controller.abort();
    await assert.rejects(loading, (e: { code?: string }) => e.code === "ABORT_ERR");
    const late = new AbortController();
    const creating = loadModel(path, { contextSize: 256, threads: 1, signal: late.signal, onProgress: (f) => f === 1 && late.abort() });
    await creating.then((m) => m.dispose(), (e: { code?: string }) => assert.equal(e.code, "ABORT_ERR"));
  });

  it("a model dropped without dispose is collected without a crash", async () => {
    for (let i = 0; i < 3; i++) {
      const m = await loadModel(path, { contextSize: 64, threads: 1 });
      await m.generate("x", { ...greedy, maxTokens: 2 });
    }
    for (let i = 0; i < 5; i++) {
      gc?.();
      await sleep(20);
    }
  });

  it("300 concurrent streams with random break, abort and dispose: no hang, the event loop ticks, RSS stays flat", async (t) => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const rss: number[] = [];
    const heap: (number | undefined)[] = [];
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    try {
      for (let round = 0; round < 10; round++) {
        const model = await loadModel(path, { contextSize: 128, threads: 2, parallel: 4 });
        const runs = Array.from({ length: 30 }, async (_, i) => {
          const controller = new AbortController();
          const stream = model.stream(`stream ${round} ${i}`, { ...greedy, maxTokens: 8 + Math.floor(random() * 24), signal: controller.signal });
          const action = random();
          let n = 0;
          try {
            for await (const _ of stream) {
              n++;
              if (action < 0.3 && n === 2) break;
              if (action >= 0.3 && action < 0.5 && n === 2) controller.abort();
            }
          } catch (err) {
            if (!["ABORT_ERR", "ERR_DISPOSED"].includes((err as { code?: string }).code!)) throw err;
          }
        });
        if (round % 2) {
          await sleep(30);
          await model.dispose(); // every other round is cut short by dispose
        }
        await Promise.all(runs);
        await model.dispose();
        const settled = await settledMemory();
        rss.push(settled.rss);
        heap.push(settled.heapInUse);
      }
    } finally {
      clearInterval(timer);
    }
    assert.ok(ticks > 10, `${ticks} timer ticks`);
    t.diagnostic(`RSS after each round: ${rss.map((r) => (r / 2 ** 20).toFixed(0)).join(", ")} MB`);
    // The leak check: native heap bytes in use after round 1 (warm) and after the last. RSS floors only catch gross
    // leaks: each round frees a model, which leaves glibc's arenas fragmented by a varying 20–70 MB.
    if (heap[1] !== undefined) {
      const grew = (heap[9]! - heap[1]) / 2 ** 20;
      assert.ok(grew < 4, `native heap in use grew ${grew.toFixed(1)} MB`);
    }
    const growth = (Math.min(...rss.slice(6)) - Math.min(...rss.slice(1, 5))) / 2 ** 20;
    assert.ok(growth < 128, `RSS floor grew ${growth.toFixed(1)} MB (${rss.map((r) => (r / 2 ** 20).toFixed(0)).join(", ")} MB)`);
  });
});
