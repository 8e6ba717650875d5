/**
 * What each checkpoint tensor becomes: its GGUF name, its expected shape from config.json, and its output type,
 * chosen as llama-quantize chooses (src/llama-quant.cpp: llama_tensor_get_type at the vendored commit).
 */
import { QwenError } from "../errors.js";
import { GgmlType } from "../gguf.js";
import type { SourceTensor } from "./safetensors.js";

export const SUPPORTED_HF_ARCHITECTURES = { Qwen3ForCausalLM: "qwen3", Qwen2ForCausalLM: "qwen2" } as const;

export const OUTPUT_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k", "mixed"] as const;
export type OutputType = (typeof OUTPUT_TYPES)[number];

/** llama_ftype written as general.file_type, and the default tensor type of each output type. */
const FTYPES: Record<OutputType, { ftype: number; base: GgmlType }> = {
  f32: { ftype: 0, base: GgmlType.F32 },
  f16: { ftype: 1, base: GgmlType.F16 },
  bf16: { ftype: 32, base: GgmlType.BF16 },
  q8_0: { ftype: 7, base: GgmlType.Q8_0 },
  q4_0: { ftype: 2, base: GgmlType.Q4_0 },
  q4_k_m: { ftype: 15, base: GgmlType.Q4_K },
  q5_k_m: { ftype: 17, base: GgmlType.Q5_K },
  q6_k: { ftype: 18, base: GgmlType.Q6_K },
  // the seed's mixed-precision design, as llama-quantize overrides on a Q4_K_M base
  mixed: { ftype: 15, base: GgmlType.Q4_K },
};

export const TYPE_BY_NAME: Record<string, GgmlType> = {
  f32: GgmlType.F32, f16: GgmlType.F16, bf16: GgmlType.BF16, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0, q4_1: GgmlType.Q4_1,
  q5_0: GgmlType.Q5_0, q5_1: GgmlType.Q5_1, q2_k: GgmlType.Q2_K, q3_k: GgmlType.Q3_K, q4_k: GgmlType.Q4_K,
  q5_k: GgmlType.Q5_K, q6_k: GgmlType.Q6_K, iq4_nl: GgmlType.IQ4_NL,
};

/** A `--tensor-type pattern=type` override: the first pattern found in a tensor's name (regex search) wins. */
export interface TensorTypeOverride { pattern: RegExp; type: GgmlType }

export function parseTensorTypeOverride(spec: string): TensorTypeOverride {
  const at = spec.lastIndexOf("=");
  const typeName = spec.slice(at + 1).toLowerCase();
  if (at <= 0 || !(typeName in TYPE_BY_NAME)) {
    throw new QwenError("ERR_INVALID_ARG_VALUE", `--tensor-type ${JSON.stringify(spec)} must be pattern=type with type one of ${Object.keys(TYPE_BY_NAME).join(", ")}`);
  }
  return { pattern: new RegExp(spec.slice(0, at)), type: TYPE_BY_NAME[typeName] };
}

const MIXED_OVERRIDES: TensorTypeOverride[] = [
  { pattern: /attn_(q|k|v|output)\.weight/, type: GgmlType.Q8_0 },
  { pattern: /ffn_(gate|up|down)\.weight/, type: GgmlType.Q4_K },
];

export interface ModelConfig {
  arch: "qwen3" | "qwen2";
  hfArchitecture: string;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  vocab: number;
  tied: boolean;
  contextLength: number;
  ropeTheta: number;
  rmsEps: number;
  ropeScaling?: { type: string; factor: number; originalContextLength?: number };
  raw: Record<string, unknown>;
}

export function parseConfig(raw: Record<string, unknown>): ModelConfig {
  const archs = raw.architectures as string[] | undefined;
  const hfArchitecture = archs?.find((a) => a in SUPPORTED_HF_ARCHITECTURES);
  if (!hfArchitecture) {
    throw new QwenError("ERR_UNSUPPORTED_ARCHITECTURE", `config.json architectures ${JSON.stringify(archs ?? null)} are not supported; supported: ${Object.keys(SUPPORTED_HF_ARCHITECTURES).join(", ")} (Qwen3, Qwen2, Qwen2.5, Qwen1.5)`);
  }
  const num = (key: string, fallback?: number): number => {
    const v = raw[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) throw new QwenError("ERR_CHECKPOINT_INVALID", `config.json: ${key} is missing or not a number`);
    return v;
  };
  const hidden = num("hidden_size");
  const heads = num("num_attention_heads");
  const scaling = raw.rope_scaling as Record<string, unknown> | null | undefined;
  const scalingType = (scaling?.rope_type ?? scaling?.type) as string | undefined;
  return {
    arch: SUPPORTED_HF_ARCHITECTURES[hfArchitecture as keyof typeof SUPPORTED_HF_ARCHITECTURES],
    hfArchitecture,
    hidden,
    layers: num("num_hidden_layers"),
    heads,
    kvHeads: num("num_key_value_heads", heads),
    headDim: num("head_dim", hidden / heads),
    ffn: num("intermediate_size"),
    vocab: num("vocab_size"),
    tied: raw.tie_word_embeddings === true,
    contextLength: num("max_position_embeddings"),
    ropeTheta: num("rope_theta", 10000),
    rmsEps: num("rms_norm_eps", 1e-6),
    ropeScaling: scaling && scalingType && scalingType !== "default" ? {
      type: scalingType, factor: Number(scaling.factor ?? 1), originalContextLength: scaling.original_max_position_embeddings as number | undefined,
    } : undefined,
    raw,
  };
}

export type Category = "token_embd" | "output" | "attn_q" | "attn_k" | "attn_v" | "attn_output" | "ffn_gate" | "ffn_up" | "ffn_down" | "other";

export interface PlannedTensor {
  source: SourceTensor;
  name: string;
  /** GGUF dims (innermost first). */
  dims: number[];
  category: Category;
  layer: number;
  type: GgmlType;
}

/** HF name → [GGUF name, expected HF shape, category, layer] for every tensor the config implies. */
function expectedTensors(c: ModelConfig): Map<string, { name: string; shape: number[]; category: Category; layer: number }> {
  const m = new Map<string, { name: string; shape: number[]; category: Category; layer: number }>();
  const add = (hf: string, name: string, shape: number[], category: Category = "other", layer = -1) => m.set(hf, { name, shape, category, layer });
  add("model.embed_tokens.weight", "token_embd.weight", [c.vocab, c.hidden], "token_embd");
  add("model.norm.weight", "output_norm.weight", [c.hidden]);
  if (!c.tied) add("lm_head.weight", "output.weight", [c.vocab, c.hidden], "output");
  const q = c.heads * c.headDim, kv = c.kvHeads * c.headDim;
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}.`, b = `blk.${i}.`;
    add(`${p}input_layernorm.weight`, `${b}attn_norm.weight`, [c.hidden], "other", i);
    add(`${p}self_attn.q_proj.weight`, `${b}attn_q.weight`, [q, c.hidden], "attn_q", i);
    add(`${p}self_attn.k_proj.weight`, `${b}attn_k.weight`, [kv, c.hidden], "attn_k", i);
    add(`${p}self_attn.v_proj.weight`, `${b}attn_v.weight`, [kv, c.hidden], "attn_v", i);
    add(`${p}self_attn.o_proj.weight`, `${b}attn_output.weight`, [c.hidden, q], "attn_output", i);
    if (c.arch === "qwen3") {
      add(`${p}self_attn.q_norm.weight`, `${b}attn_q_norm.weight`, [c.headDim], "other", i);
      add(`${p}self_attn.k_norm.weight`, `${b}attn_k_norm.weight`, [c.headDim], "other", i);
    } else {
      add(`${p}self_attn.q_proj.bias`, `${b}attn_q.bias`, [q], "other", i);
      add(`${p}self_attn.k_proj.bias`, `${b}attn_k.bias`, [kv], "other", i);
      add(`${p}self_attn.v_proj.bias`, `${b}attn_v.bias`, [kv], "other", i);
    }
    add(`${p}post_attention_layernorm.weight`, `${b}ffn_norm.weight`, [c.hidden], "other", i);
    add(`${p}mlp.gate_proj.weight`, `${b}ffn_gate.weight`, [c.ffn, c.hidden], "ffn_gate", i);
    add(`${p}mlp.up_proj.weight`, `${b}ffn_up.weight`, [c.ffn, c.hidden], "ffn_up", i);
    add(`${p}mlp.down_proj.weight`, `${b}ffn_down.weight`, [c.hidden, c.ffn], "ffn_down", i);
  }
  return m;
}

// Checkpoint entries that carry no weights of their own and are skipped.
const IGNORED = [/rotary_emb\.inv_freq$/];

const BLOCK_SIZE: Partial<Record<GgmlType, number>> = {
  [GgmlType.Q4_0]: 32, [GgmlType.Q4_1]: 32, [GgmlType.Q5_0]: 32, [GgmlType.Q5_1]: 32, [GgmlType.Q8_0]: 32, [GgmlType.IQ4_NL]: 32,
  [GgmlType.Q2_K]: 256, [GgmlType.Q3_K]: 256, [GgmlType.Q4_K]: 256, [GgmlType.Q5_K]: 256, [GgmlType.Q6_K]: 256,
};
const isQuantized = (t: GgmlType) => BLOCK_SIZE[t] !== undefined;

/** llama-quantize's fallback when a row length is not a multiple of the type's block size. */
function fallback(type: GgmlType, rowLength: number): GgmlType {
  const block = BLOCK_SIZE[type];
  if (block === undefined || rowLength % block === 0) return type;
  const next: Partial<Record<GgmlType, GgmlType>> = {
    [GgmlType.Q2_K]: GgmlType.Q4_0, [GgmlType.Q3_K]: GgmlType.Q4_0, [GgmlType.Q4_K]: GgmlType.Q5_0, [GgmlType.Q5_K]: GgmlType.Q5_1, [GgmlType.Q6_K]: GgmlType.Q8_0,
  };
  const t = next[type] ?? type;
  return rowLength % (BLOCK_SIZE[t] ?? 1) === 0 ? t : GgmlType.F16;
}

// llama-quant.cpp's use_more_bits, in its C integer arithmetic
const useMoreBits = (i: number, n: number) => i < Math.trunc(n / 8) || i >= Math.trunc((7 * n) / 8) || (i - Math.trunc(n / 8)) % 3 === 2;

export interface PlanOptions {
  type: OutputType;
  overrides?: TensorTypeOverride[];
}

export function planTensors(config: ModelConfig, sources: Map<string, SourceTensor>, options: PlanOptions): PlannedTensor[] {
  const expected = expectedTensors(config);
  for (const name of sources.keys()) {
    if (expected.has(name) || IGNORED.some((re) => re.test(name))) continue;
    if (name === "lm_head.weight" && config.tied) continue; // tied: the output is the embedding
    throw new QwenError("ERR_TENSOR_UNEXPECTED", `the checkpoint has tensor ${name}, which ${config.hfArchitecture} with this config.json does not define`);
  }
  const { ftype, base } = FTYPES[options.type];
  const overrides = options.type === "mixed" ? [...(options.overrides ?? []), ...MIXED_OVERRIDES] : options.overrides ?? [];
  const forcedOutputType = options.type === "mixed" ? GgmlType.Q6_K : undefined;
  const nAttnV = config.layers, nFfnDown = config.layers;
  let iAttnV = 0, iFfnDown = 0;
  const plan: PlannedTensor[] = [];
  for (const [hf, e] of expected) {
    const source = sources.get(hf);
    if (!source) throw new QwenError("ERR_TENSOR_MISSING", `the checkpoint has no tensor ${hf} (${e.name}), which config.json implies`);
    if (source.shape.length !== e.shape.length || source.shape.some((d, i) => d !== e.shape[i])) {
      throw new QwenError("ERR_TENSOR_SHAPE", `tensor ${hf} has shape [${source.shape}] but config.json implies [${e.shape}]`);
    }
    const dims = [...source.shape].reverse();
    let type: GgmlType;
    const quantizable = dims.length >= 2 && e.name.endsWith("weight") && !e.name.includes("_norm.weight");
    if (!quantizable) {
      type = GgmlType.F32; // 1-D tensors (norms, biases) stay F32
    } else if (!isQuantized(base)) {
      type = base;
    } else {
      type = chooseQuantType(e.category, e.name, dims[0]);
    }
    if (e.category === "attn_v" && quantizable) iAttnV++;
    if (e.category === "ffn_down" && quantizable) iFfnDown++;
    plan.push({ source, name: e.name, dims, category: e.category, layer: e.layer, type });
  }
  return plan;

  // the llama_tensor_get_type path for the types we offer (no imatrix, non-Falcon, no experts)
  function chooseQuantType(category: Category, name: string, rowLength: number): GgmlType {
    const isOutputLike = category === "output" || (config.tied && category === "token_embd");
    if (isOutputLike && forcedOutputType !== undefined) return fallback(forcedOutputType, rowLength);
    if (category === "token_embd" && forcedOutputType !== undefined) return fallback(forcedOutputType, rowLength);
    const manual = overrides.find((o) => o.pattern.test(name));
    let type = manual ? manual.type : base;
    if (!manual) {
      if (isOutputLike) {
        type = rowLength % (BLOCK_SIZE[base] ?? 1) !== 0 ? GgmlType.Q8_0 : base !== GgmlType.Q8_0 ? GgmlType.Q6_K : base;
      } else if (category === "attn_v") {
        if ((options.type === "q4_k_m" || options.type === "q5_k_m") && useMoreBits(iAttnV, nAttnV)) type = GgmlType.Q6_K;
      } else if (category === "ffn_down") {
        if ((options.type === "q4_k_m" || options.type === "q5_k_m") && useMoreBits(iFfnDown, nFfnDown)) type = GgmlType.Q6_K;
      }
    }
    return fallback(type, rowLength);
  }
}

export function fileTypeOf(type: OutputType): number {
  return FTYPES[type].ftype;
}
