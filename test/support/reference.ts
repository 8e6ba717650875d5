/**
 * An independent float64 forward pass of Qwen2/Qwen3 written from the architecture's definition (Hugging Face
 * modeling_qwen3.py): RMSNorm, per-head q/k RMSNorm (Qwen3), q/k/v biases (Qwen2), NEOX rotary, grouped-query
 * attention, SwiGLU, tied or untied output head. Weights are in Hugging Face layout ([out, in], row-major).
 */
import type { CheckpointShape } from "../../scripts/fixtures/checkpoint.js";

type Weights = Map<string, Float32Array>;

function rmsNorm(x: Float64Array, w: Float32Array, eps: number, offset = 0, n = x.length): void {
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[offset + i] * x[offset + i];
  const scale = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) x[offset + i] = x[offset + i] * scale * w[i];
}

function matVec(w: Float32Array, x: Float64Array, rows: number, cols: number, bias?: Float32Array): Float64Array {
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let acc = bias ? bias[r] : 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) acc += w[base + c] * x[c];
    out[r] = acc;
  }
  return out;
}

function rope(v: Float64Array, heads: number, d: number, pos: number, theta: number) {
  const half = d / 2;
  for (let h = 0; h < heads; h++) {
    const o = h * d;
    for (let i = 0; i < half; i++) {
      const angle = pos * Math.pow(theta, (-2 * i) / d);
      const cos = Math.cos(angle), sin = Math.sin(angle);
      const a = v[o + i], b = v[o + i + half];
      v[o + i] = a * cos - b * sin;
      v[o + i + half] = b * cos + a * sin;
    }
  }
}

/** Logits of every position, row-major `tokens.length × vocab`, in float64. */
export function referenceLogits(shape: CheckpointShape, w: Weights, tokens: number[]): Float64Array[] {
  const { hidden, layers, heads, kvHeads, headDim: d, ffn, vocab } = shape;
  const eps = shape.rmsEps ?? 1e-6, theta = shape.ropeTheta ?? 1000000;
  const get = (name: string) => {
    const t = w.get(name);
    if (!t) throw new Error(`reference: missing ${name}`);
    return t;
  };
  const embed = get("model.embed_tokens.weight");
  const keys: Float64Array[][] = Array.from({ length: layers }, () => []);
  const values: Float64Array[][] = Array.from({ length: layers }, () => []);
  const out: Float64Array[] = [];
  const group = heads / kvHeads;
  tokens.forEach((token, pos) => {
    const x = new Float64Array(hidden);
    for (let i = 0; i < hidden; i++) x[i] = embed[token * hidden + i];
    for (let l = 0; l < layers; l++) {
      const p = `model.layers.${l}.`;
      const h = Float64Array.from(x);
      rmsNorm(h, get(`${p}input_layernorm.weight`), eps);
      const q = matVec(get(`${p}self_attn.q_proj.weight`), h, heads * d, hidden, w.get(`${p}self_attn.q_proj.bias`));
      const k = matVec(get(`${p}self_attn.k_proj.weight`), h, kvHeads * d, hidden, w.get(`${p}self_attn.k_proj.bias`));
      const v = matVec(get(`${p}self_attn.v_proj.weight`), h, kvHeads * d, hidden, w.get(`${p}self_attn.v_proj.bias`));
      if (shape.arch === "qwen3") {
        for (let hh = 0; hh < heads; hh++) rmsNorm(q, get(`${p}self_attn.q_norm.weight`), eps, hh * d, d);
        for (let hh = 0; hh < kvHeads; hh++) rmsNorm(k, get(`${p}self_attn.k_norm.weight`), eps, hh * d, d);
      }
      rope(q, heads, d, pos, theta);
      rope(k, kvHeads, d, pos, theta);
      keys[l].push(k);
      values[l].push(v);
      const attn = new Float64Array(heads * d);
      for (let hh = 0; hh < heads; hh++) {
        const kvh = Math.floor(hh / group);
        const scores = keys[l].map((kk) => {
          let s = 0;
          for (let i = 0; i < d; i++) s += q[hh * d + i] * kk[kvh * d + i];
          return s / Math.sqrt(d);
        });
        const max = Math.max(...scores);
        const exps = scores.map((s) => Math.exp(s - max));
        const sum = exps.reduce((a, b) => a + b, 0);
        values[l].forEach((vv, t) => {
          for (let i = 0; i < d; i++) attn[hh * d + i] += (exps[t] / sum) * vv[kvh * d + i];
        });
      }
      const o = matVec(get(`${p}self_attn.o_proj.weight`), attn, hidden, heads * d);
      for (let i = 0; i < hidden; i++) x[i] += o[i];
      const h2 = Float64Array.from(x);
      rmsNorm(h2, get(`${p}post_attention_layernorm.weight`), eps);
      const gate = matVec(get(`${p}mlp.gate_proj.weight`), h2, ffn, hidden);
      const up = matVec(get(`${p}mlp.up_proj.weight`), h2, ffn, hidden);
      for (let i = 0; i < ffn; i++) gate[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
      const down = matVec(get(`${p}mlp.down_proj.weight`), gate, hidden, ffn);
      for (let i = 0; i < hidden; i++) x[i] += down[i];
    }
    rmsNorm(x, get("model.norm.weight"), eps);
    out.push(matVec(shape.tied ? embed : get("lm_head.weight"), x, vocab, hidden));
  });
  return out;
}
