/**
 * Checks of a Hugging Face checkpoint's JSON files before the converter uses them: the type and range of every field
 * the converter reads, so a hostile or broken file is refused with ERR_CHECKPOINT_INVALID naming the file and the
 * field, instead of a TypeError, an allocation of billions of entries, or a GGUF that the loader refuses.
 *
 * The converter calls them on the parsed JSON (see the call sites listed with each function).
 */
import { Template } from "@huggingface/jinja";
import { QwenError } from "./errors.js";

/** Bounds no real Qwen checkpoint comes near (Qwen3-235B: hidden 4096, 94 layers, 64 heads; vocabularies ≤ 152k). */
export const CHECKPOINT_LIMITS = {
  hidden: 1 << 16,
  /** llama.cpp's LLAMA_MAX_LAYERS. */
  layers: 512,
  heads: 1 << 12,
  headDim: 1 << 12,
  ffn: 1 << 20,
  vocab: 1 << 22,
  context: 1 << 24,
} as const;

type Json = Record<string, unknown>;

const bad = (file: string, message: string) => new QwenError("ERR_CHECKPOINT_INVALID", `${file}: ${message}`);

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  if (typeof v === "object") return "an object";
  return `${typeof v} ${String(v)}`;
}

export function isPlainObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function object(file: string, v: unknown): Json {
  if (!isPlainObject(v)) throw bad(file, `must be a JSON object, got ${describe(v)}`);
  return v;
}

function int(file: string, j: Json, key: string, min: number, max: number, required: boolean): number | undefined {
  const v = j[key];
  if (v === undefined || (v === null && !required)) {
    if (required) throw bad(file, `${key} is missing`);
    return undefined;
  }
  if (typeof v !== "number" || !Number.isInteger(v)) throw bad(file, `${key} must be an integer, got ${describe(v)}`);
  if (v < min || v > max) throw bad(file, `${key} must be between ${min} and ${max}, got ${v}`);
  return v;
}

function finite(file: string, j: Json, key: string, min: number, max: number, exclusiveMin = false): number | undefined {
  const v = j[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) throw bad(file, `${key} must be a finite number, got ${describe(v)}`);
  if (v < min || (exclusiveMin && v === min) || v > max) throw bad(file, `${key} must be ${exclusiveMin ? "above" : "at least"} ${min} and at most ${max}, got ${v}`);
  return v;
}

function bool(file: string, j: Json, key: string) {
  const v = j[key];
  if (v !== undefined && v !== null && typeof v !== "boolean") throw bad(file, `${key} must be true or false, got ${describe(v)}`);
}

/** A token id, or (eos_token_id in config.json and generation_config.json) a list of them, inside the vocabulary. */
function tokenIds(file: string, j: Json, key: string, vocab: number) {
  const v = j[key];
  if (v === undefined || v === null) return;
  const list = Array.isArray(v) ? v : [v];
  list.forEach((id, i) => {
    const where = `${key}${Array.isArray(v) ? `[${i}]` : ""}`;
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) throw bad(file, `${where} must be a token id ≥ 0, got ${describe(id)}`);
    if (id >= vocab) throw new QwenError("ERR_VOCAB_SIZE", `${file}: ${where} is ${id}, beyond the vocab_size ${vocab}`);
  });
}

/** rope_scaling types the converter can write and llama.cpp accepts ("default" means none). */
const ROPE_SCALING_TYPES = ["default", "linear", "yarn", "longrope"];

/**
 * config.json: every field parseConfig reads. Call at the top of parseConfig (src/convert/plan.ts), on the parsed
 * JSON, before anything is derived from it.
 */
export function validateConfig(raw: unknown, file = "config.json"): void {
  const j = object(file, raw);
  const archs = j.architectures;
  if (!Array.isArray(archs) || archs.length === 0 || archs.some((a) => typeof a !== "string")) {
    throw bad(file, `architectures must be a non-empty array of strings, got ${describe(archs)}`);
  }
  if (j.model_type !== undefined && typeof j.model_type !== "string") throw bad(file, `model_type must be a string, got ${describe(j.model_type)}`);
  const L = CHECKPOINT_LIMITS;
  const hidden = int(file, j, "hidden_size", 1, L.hidden, true)!;
  int(file, j, "num_hidden_layers", 1, L.layers, true);
  const heads = int(file, j, "num_attention_heads", 1, L.heads, true)!;
  const kvHeads = int(file, j, "num_key_value_heads", 1, heads, false) ?? heads;
  if (heads % kvHeads !== 0) throw bad(file, `num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  if (int(file, j, "head_dim", 1, L.headDim, false) === undefined && hidden % heads !== 0) {
    throw bad(file, `head_dim is missing and hidden_size ${hidden} is not a multiple of num_attention_heads ${heads}`);
  }
  int(file, j, "intermediate_size", 1, L.ffn, true);
  const vocab = int(file, j, "vocab_size", 1, L.vocab, true)!;
  int(file, j, "max_position_embeddings", 1, L.context, true);
  // written as FLOAT32: finite there too
  finite(file, j, "rope_theta", 0, 1e12, true);
  finite(file, j, "rms_norm_eps", 0, 1, true);
  bool(file, j, "tie_word_embeddings");
  tokenIds(file, j, "bos_token_id", vocab);
  tokenIds(file, j, "eos_token_id", vocab);
  tokenIds(file, j, "pad_token_id", vocab);
  const scaling = j.rope_scaling;
  if (scaling !== undefined && scaling !== null) {
    const s = object(`${file} rope_scaling`, scaling);
    const type = s.rope_type ?? s.type;
    if (typeof type !== "string" || !ROPE_SCALING_TYPES.includes(type)) {
      throw bad(file, `rope_scaling.${s.rope_type !== undefined ? "rope_type" : "type"} must be one of ${ROPE_SCALING_TYPES.join(", ")}, got ${describe(type)}`);
    }
    if (type !== "default") {
      const factor = s.factor;
      if (typeof factor !== "number" || !Number.isFinite(factor) || factor <= 0 || factor > 1e6) throw bad(file, `rope_scaling.factor must be a finite number above 0, got ${describe(factor)}`);
      if (s.original_max_position_embeddings !== undefined && s.original_max_position_embeddings !== null) {
        const o = s.original_max_position_embeddings;
        if (typeof o !== "number" || !Number.isInteger(o) || o < 1 || o > L.context) throw bad(file, `rope_scaling.original_max_position_embeddings must be an integer between 1 and ${L.context}, got ${describe(o)}`);
      }
    }
  }
}

/**
 * tokenizer.json: a byte-level BPE model whose ids lie inside config.json's vocab_size. Call in planConversion
 * (src/convert/convert.ts) right after reading tokenizer.json, with the vocab_size of the validated config.
 */
export function validateTokenizer(raw: unknown, vocabSize: number, file = "tokenizer.json"): void {
  const j = object(file, raw);
  const model = j.model;
  if (!isPlainObject(model)) throw bad(file, `model must be an object, got ${describe(model)}`);
  if (model.type !== undefined && model.type !== "BPE") throw bad(file, `model.type must be "BPE" (Qwen's byte-level BPE), got ${describe(model.type)}`);
  const vocab = model.vocab;
  if (!isPlainObject(vocab)) throw bad(file, `model.vocab must be an object of token → id, got ${describe(vocab)}`);
  const seen = new Map<number, string>();
  for (const [text, id] of Object.entries(vocab)) {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) {
      throw bad(file, `model.vocab[${JSON.stringify(text.slice(0, 40))}] must be a token id ≥ 0, got ${describe(id)}`);
    }
    if (id >= vocabSize) {
      throw new QwenError("ERR_VOCAB_SIZE", `${file}: model.vocab[${JSON.stringify(text.slice(0, 40))}] has id ${id}, beyond config.json's vocab_size ${vocabSize}`);
    }
    const other = seen.get(id);
    if (other !== undefined) throw bad(file, `model.vocab gives id ${id} to both ${JSON.stringify(other.slice(0, 40))} and ${JSON.stringify(text.slice(0, 40))}`);
    seen.set(id, text);
  }
  if (seen.size === 0) throw bad(file, "model.vocab is empty");
  const merges = model.merges;
  if (!Array.isArray(merges)) throw bad(file, `model.merges must be an array, got ${describe(merges)}`);
  merges.forEach((m, i) => {
    const ok = typeof m === "string"
      ? /^[^ ]+ [^ ]+$/.test(m)
      : Array.isArray(m) && m.length === 2 && m.every((p) => typeof p === "string" && p !== "" && !p.includes(" "));
    if (!ok) throw bad(file, `model.merges[${i}] must be "left right" or ["left", "right"], got ${typeof m === "string" ? JSON.stringify(m.slice(0, 40)) : describe(m)}`);
  });
  const added = j.added_tokens;
  if (added === undefined || added === null) return;
  if (!Array.isArray(added)) throw bad(file, `added_tokens must be an array, got ${describe(added)}`);
  added.forEach((t, i) => {
    if (!isPlainObject(t)) throw bad(file, `added_tokens[${i}] must be an object, got ${describe(t)}`);
    if (typeof t.id !== "number" || !Number.isInteger(t.id) || t.id < 0) throw bad(file, `added_tokens[${i}].id must be a token id ≥ 0, got ${describe(t.id)}`);
    if (t.id >= vocabSize) throw new QwenError("ERR_VOCAB_SIZE", `${file}: added_tokens[${i}] has id ${t.id}, beyond config.json's vocab_size ${vocabSize}`);
    if (typeof t.content !== "string" || t.content === "") throw bad(file, `added_tokens[${i}].content must be a non-empty string, got ${describe(t.content)}`);
    if (t.special !== undefined && typeof t.special !== "boolean") throw bad(file, `added_tokens[${i}].special must be true or false, got ${describe(t.special)}`);
  });
}

/** Parses a chat template with the same Jinja engine that renders it; throws ERR_CHAT_TEMPLATE with the parser's message. */
export function parseChatTemplate(template: string, where: string): void {
  try {
    new Template(template);
  } catch (err) {
    throw new QwenError("ERR_CHAT_TEMPLATE", `${where}: the chat template does not parse: ${(err as Error).message}`, { cause: err });
  }
}

const SPECIAL_TOKEN_KEYS = ["bos_token", "eos_token", "pad_token", "unk_token"];

/**
 * tokenizer_config.json: the chat template parses (ERR_CHAT_TEMPLATE otherwise: a clear error at conversion instead
 * of a model whose chat() fails), the special tokens are strings or { content }, add_*_token are booleans. Call in
 * planConversion right after reading tokenizer_config.json.
 */
export function validateTokenizerConfig(raw: unknown, file = "tokenizer_config.json"): void {
  const j = object(file, raw);
  const template = j.chat_template;
  if (typeof template === "string") parseChatTemplate(template, `${file} chat_template`);
  else if (Array.isArray(template)) {
    // Hugging Face's named templates: [{ name, template }]; the converter writes the "default" one
    template.forEach((t, i) => {
      if (!isPlainObject(t) || typeof t.name !== "string" || typeof t.template !== "string") throw bad(file, `chat_template[${i}] must be { name: string, template: string }, got ${describe(t)}`);
      parseChatTemplate(t.template, `${file} chat_template[${i}] (${t.name})`);
    });
  } else if (template !== undefined && template !== null) {
    throw bad(file, `chat_template must be a string, got ${describe(template)}`);
  }
  for (const key of SPECIAL_TOKEN_KEYS) {
    const v = j[key];
    if (v === undefined || v === null || typeof v === "string") continue;
    if (isPlainObject(v) && typeof v.content === "string") continue;
    throw bad(file, `${key} must be a string, { content: string } or null, got ${describe(v)}`);
  }
  bool(file, j, "add_bos_token");
  bool(file, j, "add_eos_token");
}

/**
 * generation_config.json (optional file): sampling defaults inside the ranges loadModel accepts, since they become
 * the model's defaults. Call in planConversion after reading it, when present.
 */
export function validateGenerationConfig(raw: unknown, vocabSize: number, file = "generation_config.json"): void {
  const j = object(file, raw);
  bool(file, j, "do_sample");
  finite(file, j, "temperature", 0, 100);
  int(file, j, "top_k", 0, 1 << 24, false);
  finite(file, j, "top_p", 0, 1);
  finite(file, j, "min_p", 0, 1);
  finite(file, j, "repetition_penalty", 0.01, 100);
  tokenIds(file, j, "bos_token_id", vocabSize);
  tokenIds(file, j, "eos_token_id", vocabSize);
  tokenIds(file, j, "pad_token_id", vocabSize);
}

/**
 * model.safetensors.index.json: weight_map maps tensor names to shard file names in the checkpoint directory itself
 * (no path separators, no "..": an index must not make the converter read files elsewhere). Call in
 * readCheckpointTensors (src/convert/safetensors.ts) right after parsing the index, before joining any path.
 */
export function validateShardIndex(raw: unknown, file = "model.safetensors.index.json"): Record<string, string> {
  const j = object(file, raw);
  const map = j.weight_map;
  if (!isPlainObject(map)) throw bad(file, `weight_map must be an object of tensor name → shard file, got ${describe(map)}`);
  for (const [name, shard] of Object.entries(map)) {
    if (typeof shard !== "string" || !/^[^/\\]+\.safetensors$/.test(shard) || shard.startsWith(".")) {
      throw bad(file, `weight_map[${JSON.stringify(name)}] must be the name of a .safetensors file in the checkpoint directory, got ${describe(shard)}`);
    }
  }
  return map as Record<string, string>;
}

const SAFETENSORS_DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1 };

/**
 * A safetensors header (the parsed JSON) against its file: known dtype, shape of non-negative integers whose
 * product × the dtype's size is exactly the data_offsets range, every range inside the data section, no two
 * overlapping. Throws ERR_SAFETENSORS_INVALID naming the tensor. (src/convert/safetensors.ts readHeader makes these
 * checks for the dtypes it converts; this covers every dtype and the integer bounds.)
 */
export function validateSafetensorsHeader(header: unknown, dataBytes: number, file: string): { name: string; dtype: string; shape: number[]; begin: number; end: number }[] {
  const fail = (m: string) => new QwenError("ERR_SAFETENSORS_INVALID", `${file}: ${m}`);
  if (!isPlainObject(header)) throw fail(`the header must be a JSON object, got ${describe(header)}`);
  const out: { name: string; dtype: string; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (info !== null && !isPlainObject(info)) throw fail(`__metadata__ must be an object, got ${describe(info)}`);
      continue;
    }
    if (!isPlainObject(info)) throw fail(`tensor ${name} must be { dtype, shape, data_offsets }, got ${describe(info)}`);
    const { dtype, shape, data_offsets: offsets } = info;
    if (typeof dtype !== "string" || !(dtype in SAFETENSORS_DTYPE_BYTES)) throw fail(`tensor ${name} has unknown dtype ${describe(dtype)}`);
    if (!Array.isArray(shape) || shape.length > 8 || shape.some((d) => typeof d !== "number" || !Number.isSafeInteger(d) || d < 0)) {
      throw fail(`tensor ${name} has shape ${JSON.stringify(shape)}; expected up to 8 non-negative integers`);
    }
    let elements = 1;
    for (const d of shape as number[]) {
      elements *= d;
      if (!Number.isSafeInteger(elements)) throw fail(`tensor ${name} has shape ${JSON.stringify(shape)}: more than 2^53 elements`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || offsets.some((o) => typeof o !== "number" || !Number.isSafeInteger(o) || o < 0)) {
      throw fail(`tensor ${name} has data_offsets ${JSON.stringify(offsets)}; expected [begin, end] of non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    const bytes = elements * SAFETENSORS_DTYPE_BYTES[dtype];
    if (end - begin !== bytes) throw fail(`tensor ${name}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes; shape ${JSON.stringify(shape)} × ${dtype} needs ${bytes}`);
    if (end > dataBytes) throw fail(`tensor ${name}: data_offsets end ${end} is beyond the data section (${dataBytes} bytes)`);
    out.push({ name, dtype, shape: shape as number[], begin, end });
  }
  const sorted = [...out].sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) throw fail(`tensors ${sorted[i - 1].name} and ${sorted[i].name} overlap`);
  }
  return out;
}
