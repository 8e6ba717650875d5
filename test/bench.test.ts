/** The benchmark harness's logic (parsing, statistics, KL, report writing) on a tiny model; not the timings. */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { median, parseFlags, spread } from "../scripts/bench/common.js";
import { KlAccumulator, parseLlamaBench, renderSvg, summarize, type BenchReport } from "../scripts/bench/report.js";
import { quality, writeReport } from "../scripts/bench/run.js";
import { promptOf } from "../scripts/bench/stream.js";
import { loadModel } from "../src/index.js";
import { converted, TINY_QWEN3 } from "./support/models.js";

describe("bench harness", () => {
  it("parses llama-bench JSON", () => {
    const json = JSON.stringify([
      { n_prompt: 512, n_gen: 0, avg_ts: 301.5, stddev_ts: 2 },
      { n_prompt: 0, n_gen: 128, avg_ts: 63.25, stddev_ts: 0.4 },
    ]);
    assert.deepEqual(parseLlamaBench(json), { pp: 301.5, tg: 63.25 });
    assert.throws(() => parseLlamaBench("[]"), /lacks/);
  });
  it("statistics and flags", () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 2, 3]), 2.5);
    assert.equal(spread([2, 5.25, 3]), "2.0–5.3");
    assert.deepEqual(summarize([1, undefined, 3, NaN]), { median: 2, min: 1, max: 3 });
    assert.equal(summarize([undefined]), undefined);
    assert.deepEqual(parseFlags(["a.gguf", "--reps", "5", "--no-readme"]), { flags: { reps: "5", "no-readme": "true" }, positionals: ["a.gguf"] });
  });
  it("KL divergence: zero for the same distribution, the closed form for two", () => {
    const acc = new KlAccumulator();
    acc.add(Float32Array.of(1, 2, 3), Float32Array.of(1, 2, 3));
    assert.ok(Math.abs(acc.result().meanKl) < 1e-12);
    const two = new KlAccumulator();
    // p = softmax(0, 0) = (.5, .5); q = softmax(0, ln 3) = (.25, .75): KL = .5 ln 2 + .5 ln(2/3)
    two.add(Float32Array.of(0, 0), Float32Array.of(0, Math.log(3)));
    assert.ok(Math.abs(two.result().meanKl - (0.5 * Math.log(2) + 0.5 * Math.log(2 / 3))) < 1e-6);
    assert.equal(two.result().top1, 0); // p's argmax is token 0 (first of a tie), q's is token 1
  });
  it("prompts of an exact token count; quality of a model against itself", async () => {
    const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
    const model = await loadModel(out, { contextSize: 600, threads: 1 });
    assert.equal(model.tokenize(promptOf(model, 512)).length, 512);
    await model.dispose();
    const q = await quality(out, out, 32, 2);
    assert.ok(q.meanKl < 1e-6 && q.top1 === 1 && q.positions === 2 * 15, JSON.stringify(q));
  });
  it("writes JSON, Markdown, SVG and the README section", async () => {
    const root = await mkdtemp(join(tmpdir(), "qwen-gguf-report-"));
    try {
      await writeFile(join(root, "README.md"), "# x\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n\ntail\n");
      const report: BenchReport = {
        date: "2026-01-02",
        machine: { cpu: "Test CPU", cores: 2, memoryBytes: 2 ** 34, cpuFeatures: ["avx2"], bandwidthGBs: 40 },
        versions: { node: "v20" },
        settings: { threads: 2, promptTokens: 512, genTokens: 128, reps: 2, price: 3.6, currency: "¥" },
        speed: [{ model: "qwen3-0.6b", type: "q4_k_m", fileBytes: 4e8, contenders: {
          "qwen-gguf": [{ pp: 300, tg: 60, peakRss: 6e8 }, { pp: 310, tg: 62, peakRss: 6e8 }],
          "llama-bench": [{ pp: 305, tg: 61 }, { pp: 305, tg: 61 }],
          "node-llama-cpp": [{ pp: 300, tg: 30, peakRss: 1.1e9 }],
        } }],
        memory: [{ model: "qwen3-4b", type: "q4_k_m", kvCacheType: "f16", contextSize: 2048, peakRss: 2.8e9, tg: 15 }],
        quality: [{ model: "qwen3-0.6b", type: "q4_k_m", meanKl: 0.01, top1: 0.9, positions: 1020 }],
      };
      await writeReport(report, true, root);
      const md = await readFile(join(root, "bench", "results", "2026-01-02.md"), "utf8");
      assert.match(md, /\| qwen3-0\.6b \| q4_k_m \| qwen-gguf \| 305\.0 \(300\.0–310\.0\) \| 61\.0 \(60\.0–62\.0\)/);
      assert.match(md, /\| qwen3-0\.6b \| q4_k_m \| 1\.000 \| 1\.000 \| 1\.017 \| 2\.033 \| 61% of 100\.0 tok\/s \|/);
      assert.match(md, /¥16\.39/); // 3.6 / (61 × 3600 / 1e6)
      const readme = await readFile(join(root, "README.md"), "utf8");
      assert.ok(readme.includes("bench/results/2026-01-02.svg") && !readme.includes("old") && readme.endsWith("tail\n"));
      const svg = renderSvg(report);
      assert.match(svg, /^<svg/);
      assert.equal((svg.match(/<rect x="\d/g) ?? []).length >= 6, true);
      assert.deepEqual(JSON.parse(await readFile(join(root, "bench", "results", "2026-01-02.json"), "utf8")), report);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
