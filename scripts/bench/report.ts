/** Benchmark statistics, KL divergence and report writing (Markdown, JSON, SVG chart): the parts tests cover. */
import { median } from "./common.js";

export type Contender = "qwen-gguf" | "llama-bench" | "node-llama-cpp";

export interface SpeedSample { pp: number; tg: number; ttftMs?: number; loadMs?: number; peakRss?: number }

export interface SpeedResult {
  model: string;
  type: string;
  fileBytes: number;
  contenders: Partial<Record<Contender, SpeedSample[]>>;
}

export interface MemoryResult { model: string; type: string; kvCacheType: string; contextSize: number; peakRss: number; tg: number }
export interface QualityResult { model: string; type: string; meanKl: number; top1: number; positions: number }

export interface BenchReport {
  date: string;
  machine: { cpu: string; cores: number; memoryBytes: number; cpuFeatures: string[]; bandwidthGBs: number };
  versions: Record<string, string>;
  settings: { threads: number; promptTokens: number; genTokens: number; reps: number; price: number; currency: string };
  speed: SpeedResult[];
  memory: MemoryResult[];
  quality: QualityResult[];
}

/** Summary of one figure over repetitions: median and range. */
export function summarize(xs: (number | undefined)[]): { median: number; min: number; max: number } | undefined {
  const v = xs.filter((x): x is number => typeof x === "number" && Number.isFinite(x));
  if (!v.length) return undefined;
  return { median: median(v), min: Math.min(...v), max: Math.max(...v) };
}

/** Parses `llama-bench -o json` output into pp / tg tokens per second. */
export function parseLlamaBench(json: string): { pp: number; tg: number } {
  const rows = JSON.parse(json) as { n_prompt: number; n_gen: number; avg_ts: number }[];
  const pp = rows.find((r) => r.n_prompt > 0 && r.n_gen === 0);
  const tg = rows.find((r) => r.n_gen > 0 && r.n_prompt === 0);
  if (!pp || !tg) throw new Error("llama-bench output lacks a pp or tg row");
  return { pp: pp.avg_ts, tg: tg.avg_ts };
}

/**
 * Accumulates KL(P_ref ‖ P_q) and top-1 agreement of next-token distributions, llama-perplexity --kl-divergence
 * style: rows are raw logits (vocab floats each).
 */
export class KlAccumulator {
  private sum = 0;
  private agree = 0;
  count = 0;
  add(ref: Float32Array, q: Float32Array) {
    const n = ref.length;
    let maxR = -Infinity, maxQ = -Infinity, argR = 0, argQ = 0;
    for (let i = 0; i < n; i++) {
      if (ref[i] > maxR) { maxR = ref[i]; argR = i; }
      if (q[i] > maxQ) { maxQ = q[i]; argQ = i; }
    }
    let zR = 0, zQ = 0;
    for (let i = 0; i < n; i++) {
      zR += Math.exp(ref[i] - maxR);
      zQ += Math.exp(q[i] - maxQ);
    }
    const logZR = Math.log(zR) + maxR, logZQ = Math.log(zQ) + maxQ;
    let kl = 0;
    for (let i = 0; i < n; i++) {
      const lp = ref[i] - logZR;
      kl += Math.exp(lp) * (lp - (q[i] - logZQ));
    }
    this.sum += Math.max(kl, 0);
    if (argR === argQ) this.agree++;
    this.count++;
  }
  result() {
    return { meanKl: this.sum / this.count, top1: this.agree / this.count, positions: this.count };
  }
}

const fmt = (x: number | undefined, digits = 1) => (x === undefined ? "–" : x.toFixed(digits));
const gb = (b: number | undefined) => (b === undefined ? "–" : (b / 1e9).toFixed(2));

function cell(samples: SpeedSample[] | undefined, key: keyof SpeedSample, digits = 1) {
  const s = summarize((samples ?? []).map((x) => x[key]));
  return s ? `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})` : "–";
}

function ratio(a: SpeedSample[] | undefined, b: SpeedSample[] | undefined, key: "pp" | "tg") {
  const x = summarize((a ?? []).map((s) => s[key])), y = summarize((b ?? []).map((s) => s[key]));
  return x && y ? (x.median / y.median).toFixed(3) : "–";
}

export function renderMarkdown(r: BenchReport, chartFile: string): string {
  const lines: string[] = [];
  const { settings: s } = r;
  lines.push(`# qwen-gguf benchmark, ${r.date}`, "");
  lines.push(`Machine: ${r.machine.cpu}, ${r.machine.cores} CPUs, ${(r.machine.memoryBytes / 2 ** 30).toFixed(0)} GiB; CPU features: ${r.machine.cpuFeatures.join(" ")}.`);
  lines.push(`Memory read bandwidth (${s.threads} threads): ${r.machine.bandwidthGBs.toFixed(1)} GB/s. Versions: ${Object.entries(r.versions).map(([k, v]) => `${k} ${v}`).join(", ")}.`);
  lines.push(`Settings: ${s.threads} threads, prompt ${s.promptTokens} tokens, generation ${s.genTokens} tokens, ${s.reps} runs per contender in alternation (A B C A B C …); figures are median (min–max).`);
  lines.push("", "Models are random-weight checkpoints with the exact Qwen3 shapes, converted by qwen-gguf: speed and memory do not depend on the weight values.", "");
  lines.push("## Speed", "");
  lines.push("| model | type | contender | prompt tok/s | generation tok/s | time to first token ms | load ms | peak RSS GB |", "|---|---|---|---|---|---|---|---|");
  for (const row of r.speed) {
    for (const [name, samples] of Object.entries(row.contenders) as [Contender, SpeedSample[]][]) {
      const rss = summarize(samples.map((x) => x.peakRss));
      lines.push(`| ${row.model} | ${row.type} | ${name} | ${cell(samples, "pp")} | ${cell(samples, "tg")} | ${cell(samples, "ttftMs", 0)} | ${cell(samples, "loadMs", 0)} | ${gb(rss?.median)} |`);
    }
  }
  lines.push("", "Ratios of qwen-gguf's `stream()` to each contender (goal: ≥ 0.98 × llama-bench; ≥ 2 × node-llama-cpp generation on Qwen3-0.6B Q4_K_M):", "");
  lines.push("| model | type | vs llama-bench prompt | vs llama-bench generation | vs node-llama-cpp prompt | vs node-llama-cpp generation | generation vs bandwidth ceiling |", "|---|---|---|---|---|---|---|");
  for (const row of r.speed) {
    const ours = row.contenders["qwen-gguf"];
    const ceiling = (r.machine.bandwidthGBs * 1e9) / row.fileBytes;
    const tg = summarize((ours ?? []).map((x) => x.tg))?.median;
    lines.push(`| ${row.model} | ${row.type} | ${ratio(ours, row.contenders["llama-bench"], "pp")} | ${ratio(ours, row.contenders["llama-bench"], "tg")} | ${ratio(ours, row.contenders["node-llama-cpp"], "pp")} | ${ratio(ours, row.contenders["node-llama-cpp"], "tg")} | ${tg ? `${((100 * tg) / ceiling).toFixed(0)}% of ${ceiling.toFixed(1)} tok/s` : "–"} |`);
  }
  lines.push("", `![generation tokens/s and peak memory](${chartFile})`, "");
  if (r.memory.length) {
    lines.push("## Memory", "", `Peak RSS of a process that loads the model, takes a ${s.promptTokens}-token prompt and generates ${s.genTokens} tokens (the seed's int8 setup used 4.3–4.6 GB; node-llama-cpp used 4.6 GB for 4B Q4_K_M).`, "");
    lines.push("| model | type | KV cache | context | peak RSS GB | generation tok/s |", "|---|---|---|---|---|---|");
    for (const m of r.memory) lines.push(`| ${m.model} | ${m.type} | ${m.kvCacheType} | ${m.contextSize} | ${gb(m.peakRss)} | ${fmt(m.tg)} |`);
    lines.push("");
  }
  if (r.quality.length) {
    lines.push("## Quality", "", "Mean KL divergence and top-1 agreement of next-token distributions against the F16 conversion of the same checkpoint (llama-perplexity --kl-divergence semantics: 512-token chunks, the second half of each scored). Random weights make the absolute values unrepresentative of trained models; the ranking between types is what this shows.", "");
    lines.push("| model | type | mean KL | top-1 agreement | positions |", "|---|---|---|---|---|");
    for (const q of r.quality) lines.push(`| ${q.model} | ${q.type} | ${q.meanKl.toFixed(5)} | ${(100 * q.top1).toFixed(1)}% | ${q.positions} |`);
    lines.push("");
  }
  lines.push("## Cost", "", `At ${s.currency}${s.price}/hour for this machine (the seed's example price), one stream at a time:`, "");
  lines.push("| model | type | qwen-gguf tokens/hour | cost per 1M tokens | llama-bench tokens/hour | node-llama-cpp tokens/hour |", "|---|---|---|---|---|---|");
  for (const row of r.speed) {
    const perHour = (c: Contender) => summarize((row.contenders[c] ?? []).map((x) => x.tg))?.median;
    const ours = perHour("qwen-gguf");
    const cost = ours ? (s.price / ((ours * 3600) / 1e6)).toFixed(2) : "–";
    const k = (x: number | undefined) => (x === undefined ? "–" : `${((x * 3600) / 1000).toFixed(0)}k`);
    lines.push(`| ${row.model} | ${row.type} | ${k(ours)} | ${s.currency}${cost} | ${k(perHour("llama-bench"))} | ${k(perHour("node-llama-cpp"))} |`);
  }
  lines.push("");
  return lines.join("\n");
}

const COLORS: Record<Contender, string> = { "qwen-gguf": "#2b7bb9", "llama-bench": "#8a8a8a", "node-llama-cpp": "#d9822b" };

/** Grouped bar chart: generation tok/s per model/type for each contender, and peak RSS beside it. */
export function renderSvg(r: BenchReport): string {
  const groups = r.speed;
  const contenders: Contender[] = ["qwen-gguf", "llama-bench", "node-llama-cpp"];
  const bar = 16, gap = 28, left = 60, top = 40, height = 220;
  const width = left + groups.length * (contenders.length * bar + gap) + 40;
  const panel = (title: string, value: (g: SpeedResult, c: Contender) => number | undefined, yOffset: number, unit: string) => {
    const values = groups.flatMap((g) => contenders.map((c) => value(g, c) ?? 0));
    const max = Math.max(...values, 1) * 1.1;
    const out: string[] = [`<text x="${left}" y="${yOffset - 12}" font-size="13" font-weight="bold">${title}</text>`];
    out.push(`<line x1="${left}" y1="${yOffset + height}" x2="${width - 20}" y2="${yOffset + height}" stroke="#333"/>`);
    groups.forEach((g, gi) => {
      const x0 = left + gi * (contenders.length * bar + gap);
      contenders.forEach((c, ci) => {
        const v = value(g, c);
        if (v === undefined) return;
        const h = (v / max) * height;
        out.push(`<rect x="${x0 + ci * bar}" y="${(yOffset + height - h).toFixed(1)}" width="${bar - 2}" height="${h.toFixed(1)}" fill="${COLORS[c]}"><title>${c} ${g.model} ${g.type}: ${v.toFixed(1)} ${unit}</title></rect>`);
        out.push(`<text x="${x0 + ci * bar + bar / 2 - 1}" y="${(yOffset + height - h - 3).toFixed(1)}" font-size="8" text-anchor="middle">${v.toFixed(v < 10 ? 1 : 0)}</text>`);
      });
      out.push(`<text x="${x0 + (contenders.length * bar) / 2}" y="${yOffset + height + 14}" font-size="9" text-anchor="middle">${g.model.replace("qwen3-", "")} ${g.type}</text>`);
    });
    return out.join("\n");
  };
  const tg = (g: SpeedResult, c: Contender) => summarize((g.contenders[c] ?? []).map((x) => x.tg))?.median;
  const rss = (g: SpeedResult, c: Contender) => {
    const m = summarize((g.contenders[c] ?? []).map((x) => x.peakRss))?.median;
    return m === undefined ? undefined : m / 1e9;
  };
  const legend = contenders.map((c, i) => `<rect x="${left + i * 130}" y="8" width="10" height="10" fill="${COLORS[c]}"/><text x="${left + i * 130 + 14}" y="17" font-size="11">${c}</text>`).join("");
  const total = top + 2 * (height + 60);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${total}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${legend}\n` +
    panel("generation tokens/s", tg, top + 10, "tok/s") + "\n" + panel("peak RSS, GB", rss, top + height + 80, "GB") + "\n</svg>\n";
}

