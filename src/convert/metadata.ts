/** GGUF metadata for Qwen2/Qwen3: architecture hyper-parameters, general.*, tokenizer and sampling defaults. */
import { QwenError } from "../errors.js";
import { gguf, type GgufEntry } from "../gguf.js";
import type { ModelConfig } from "./plan.js";

// llama.cpp's token types (gguf-py TokenType)
const TOKEN_NORMAL = 1, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5;

interface AddedToken { id: number; content: string; special: boolean }

export interface TokenizerFiles {
  tokenizer: { model?: { vocab?: Record<string, number>; merges?: (string | [string, string])[] }; added_tokens?: AddedToken[] };
  tokenizerConfig: Record<string, unknown>;
  generationConfig?: Record<string, unknown>;
}

/** gguf-py's does_token_look_special: added tokens shaped like control tokens are marked control. */
function looksSpecial(text: string): boolean {
  return ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].includes(text) || (text.startsWith("<|") && text.endsWith("|>")) ||
    (text.startsWith("<｜") && text.endsWith("｜>")) || (text.startsWith("<unused") && text.endsWith(">"));
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return undefined;
}

function sizeLabel(parameters: number): string {
  if (parameters >= 1e9) return `${+(parameters / 1e9).toFixed(1)}B`;
  if (parameters >= 1e6) return `${Math.round(parameters / 1e6)}M`;
  return `${Math.round(parameters / 1e3)}K`;
}

export function buildMetadata(config: ModelConfig, files: TokenizerFiles, opts: { name: string; fileType: number; quantized: boolean; parameters: number }): Map<string, GgufEntry> {
  const a = config.arch;
  const m = new Map<string, GgufEntry>();
  m.set("general.architecture", gguf.str(a));
  m.set("general.type", gguf.str("model"));
  m.set("general.name", gguf.str(opts.name));
  m.set("general.basename", gguf.str(opts.name.replace(/-?\d+(\.\d+)?[BM]\b.*$/i, "") || opts.name));
  m.set("general.size_label", gguf.str(sizeLabel(opts.parameters)));
  m.set("general.file_type", gguf.u32(opts.fileType));
  if (opts.quantized) m.set("general.quantization_version", gguf.u32(2));
  m.set(`${a}.block_count`, gguf.u32(config.layers));
  m.set(`${a}.context_length`, gguf.u32(config.contextLength));
  m.set(`${a}.embedding_length`, gguf.u32(config.hidden));
  m.set(`${a}.feed_forward_length`, gguf.u32(config.ffn));
  m.set(`${a}.attention.head_count`, gguf.u32(config.heads));
  m.set(`${a}.attention.head_count_kv`, gguf.u32(config.kvHeads));
  m.set(`${a}.attention.key_length`, gguf.u32(config.headDim));
  m.set(`${a}.attention.value_length`, gguf.u32(config.headDim));
  m.set(`${a}.rope.freq_base`, gguf.f32(config.ropeTheta));
  m.set(`${a}.attention.layer_norm_rms_epsilon`, gguf.f32(config.rmsEps));
  if (config.ropeScaling) {
    m.set(`${a}.rope.scaling.type`, gguf.str(config.ropeScaling.type));
    m.set(`${a}.rope.scaling.factor`, gguf.f32(config.ropeScaling.factor));
    if (config.ropeScaling.originalContextLength) m.set(`${a}.rope.scaling.original_context_length`, gguf.u32(config.ropeScaling.originalContextLength));
  }

  // tokenizer: byte-level BPE ("gpt2") with Qwen2's pre-tokenizer regex
  const vocab = files.tokenizer.model?.vocab;
  const merges = files.tokenizer.model?.merges;
  if (!vocab || !merges) throw new QwenError("ERR_CHECKPOINT_INVALID", "tokenizer.json has no BPE model.vocab / model.merges");
  const byId = new Map<number, string>();
  for (const [text, id] of Object.entries(vocab)) byId.set(id, text);
  const added = new Map<number, AddedToken>();
  for (const t of files.tokenizer.added_tokens ?? []) {
    byId.set(t.id, t.content);
    added.set(t.id, t);
  }
  let maxId = -1;
  for (const id of byId.keys()) maxId = Math.max(maxId, id);
  if (maxId >= config.vocab) {
    throw new QwenError("ERR_VOCAB_SIZE", `config.json vocab_size ${config.vocab} is smaller than the tokenizer (${maxId + 1} tokens)`);
  }
  const tokens: string[] = new Array(config.vocab);
  const types: number[] = new Array(config.vocab);
  for (let id = 0; id < config.vocab; id++) {
    const text = byId.get(id);
    if (text === undefined) {
      tokens[id] = `[PAD${id}]`;
      types[id] = TOKEN_UNUSED;
    } else if (added.has(id)) {
      tokens[id] = text;
      types[id] = added.get(id)!.special || looksSpecial(text) ? TOKEN_CONTROL : TOKEN_USER_DEFINED;
    } else {
      tokens[id] = text;
      types[id] = TOKEN_NORMAL;
    }
  }
  m.set("tokenizer.ggml.model", gguf.str("gpt2"));
  m.set("tokenizer.ggml.pre", gguf.str("qwen2"));
  m.set("tokenizer.ggml.tokens", gguf.strings(tokens));
  m.set("tokenizer.ggml.token_type", gguf.i32s(types));
  m.set("tokenizer.ggml.merges", gguf.strings(merges.map((x) => (Array.isArray(x) ? x.join(" ") : x))));

  const idOf = (key: string): number | undefined => {
    const content = tokenContent(files.tokenizerConfig[key]);
    if (content !== undefined) {
      const id = [...added.values()].find((t) => t.content === content)?.id ?? vocab[content];
      if (id !== undefined) return id;
    }
    const fromConfig = config.raw[`${key}_id`];
    return typeof fromConfig === "number" ? fromConfig : undefined;
  };
  const eos = idOf("eos_token");
  const bos = idOf("bos_token");
  const pad = idOf("pad_token");
  if (bos !== undefined) m.set("tokenizer.ggml.bos_token_id", gguf.u32(bos));
  if (eos !== undefined) m.set("tokenizer.ggml.eos_token_id", gguf.u32(eos));
  if (pad !== undefined) m.set("tokenizer.ggml.padding_token_id", gguf.u32(pad));
  m.set("tokenizer.ggml.add_bos_token", gguf.bool(files.tokenizerConfig.add_bos_token === true));
  const template = files.tokenizerConfig.chat_template;
  if (typeof template === "string") m.set("tokenizer.chat_template", gguf.str(template));

  // sampling defaults the model's authors recommend (generation_config.json)
  const g = files.generationConfig ?? {};
  const num = (key: string) => (typeof g[key] === "number" ? (g[key] as number) : undefined);
  if (g.do_sample !== false) {
    if (num("temperature") !== undefined) m.set("general.sampling.temp", gguf.f32(num("temperature")!));
    if (num("top_k") !== undefined) m.set("general.sampling.top_k", gguf.i32(num("top_k")!));
    if (num("top_p") !== undefined) m.set("general.sampling.top_p", gguf.f32(num("top_p")!));
    if (num("min_p") !== undefined) m.set("general.sampling.min_p", gguf.f32(num("min_p")!));
  }
  if (num("repetition_penalty") !== undefined) m.set("general.sampling.penalty_repeat", gguf.f32(num("repetition_penalty")!));
  return m;
}
