/**
 * GGUF reading and writing in TypeScript: the reader validates files before the native loader sees them and feeds
 * `inspect` and `model.info`; the writer is the converter's output stage.
 * Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
 */
import { isUtf8 } from "node:buffer";
import { open, stat } from "node:fs/promises";
import { QwenError } from "./errors.js";

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

export enum GgufValueType {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  UINT64 = 10, INT64 = 11, FLOAT64 = 12,
}

/** ggml tensor types used by the converter (values from ggml.h). */
export enum GgmlType {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13,
  Q6_K = 14, Q8_K = 15, IQ4_NL = 20, BF16 = 30,
}

/**
 * Block size (elements) and bytes per block of every ggml type a GGUF file may hold at the vendored llama.cpp commit
 * (ggml.c type_traits; sizes of the block structs in ggml-common.h). `weight`: the CPU backend can multiply with it,
 * so llama.cpp may be handed a weight of this type (Q8_1/Q8_K are activation-only, I8…F64 are not weight types).
 */
export const GGML_TYPE_LAYOUT: Record<number, { blockSize: number; typeSize: number; name: string; weight?: true }> = {
  [GgmlType.F32]: { blockSize: 1, typeSize: 4, name: "F32", weight: true },
  [GgmlType.F16]: { blockSize: 1, typeSize: 2, name: "F16", weight: true },
  [GgmlType.BF16]: { blockSize: 1, typeSize: 2, name: "BF16", weight: true },
  [GgmlType.Q4_0]: { blockSize: 32, typeSize: 18, name: "Q4_0", weight: true },
  [GgmlType.Q4_1]: { blockSize: 32, typeSize: 20, name: "Q4_1", weight: true },
  [GgmlType.Q5_0]: { blockSize: 32, typeSize: 22, name: "Q5_0", weight: true },
  [GgmlType.Q5_1]: { blockSize: 32, typeSize: 24, name: "Q5_1", weight: true },
  [GgmlType.Q8_0]: { blockSize: 32, typeSize: 34, name: "Q8_0", weight: true },
  9: { blockSize: 32, typeSize: 36, name: "Q8_1" },
  [GgmlType.Q2_K]: { blockSize: 256, typeSize: 84, name: "Q2_K", weight: true },
  [GgmlType.Q3_K]: { blockSize: 256, typeSize: 110, name: "Q3_K", weight: true },
  [GgmlType.Q4_K]: { blockSize: 256, typeSize: 144, name: "Q4_K", weight: true },
  [GgmlType.Q5_K]: { blockSize: 256, typeSize: 176, name: "Q5_K", weight: true },
  [GgmlType.Q6_K]: { blockSize: 256, typeSize: 210, name: "Q6_K", weight: true },
  [GgmlType.Q8_K]: { blockSize: 256, typeSize: 292, name: "Q8_K" },
  16: { blockSize: 256, typeSize: 66, name: "IQ2_XXS", weight: true },
  17: { blockSize: 256, typeSize: 74, name: "IQ2_XS", weight: true },
  18: { blockSize: 256, typeSize: 98, name: "IQ3_XXS", weight: true },
  19: { blockSize: 256, typeSize: 50, name: "IQ1_S", weight: true },
  [GgmlType.IQ4_NL]: { blockSize: 32, typeSize: 18, name: "IQ4_NL", weight: true },
  21: { blockSize: 256, typeSize: 110, name: "IQ3_S", weight: true },
  22: { blockSize: 256, typeSize: 82, name: "IQ2_S", weight: true },
  23: { blockSize: 256, typeSize: 136, name: "IQ4_XS", weight: true },
  24: { blockSize: 1, typeSize: 1, name: "I8" },
  25: { blockSize: 1, typeSize: 2, name: "I16" },
  26: { blockSize: 1, typeSize: 4, name: "I32" },
  27: { blockSize: 1, typeSize: 8, name: "I64" },
  28: { blockSize: 1, typeSize: 8, name: "F64" },
  29: { blockSize: 256, typeSize: 56, name: "IQ1_M", weight: true },
  34: { blockSize: 256, typeSize: 54, name: "TQ1_0", weight: true },
  35: { blockSize: 256, typeSize: 66, name: "TQ2_0", weight: true },
  39: { blockSize: 32, typeSize: 17, name: "MXFP4", weight: true },
  40: { blockSize: 64, typeSize: 36, name: "NVFP4" },
  41: { blockSize: 128, typeSize: 18, name: "Q1_0" },
  42: { blockSize: 64, typeSize: 18, name: "Q2_0" },
};

export function ggmlTypeName(type: number): string {
  return GGML_TYPE_LAYOUT[type]?.name ?? `type${type}`;
}

/** Bytes of a tensor of `type` with dims `ne` (ne[0] = row length). */
export function tensorBytes(type: number, ne: readonly number[]): number {
  const layout = GGML_TYPE_LAYOUT[type];
  if (!layout) throw new QwenError("ERR_GGUF_INVALID", `unknown ggml type ${type}`);
  const elements = ne.reduce((a, b) => a * b, 1);
  return (elements / layout.blockSize) * layout.typeSize;
}

export type GgufValue = number | bigint | boolean | string | GgufValue[];
export interface GgufTypedValue { type: GgufValueType; value: GgufValue; arrayType?: GgufValueType }

export interface GgufTensorInfo {
  name: string;
  /** Dimensions in ggml order: ne[0] is the row length. */
  dims: number[];
  type: number;
  /** Offset relative to the start of the data section. */
  offset: number;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, GgufTypedValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  dataOffset: number;
  fileSize: number;
}

class NeedMore extends Error {}

/** Limits no real model comes near; past them a file is refused before anything large is allocated. */
export const GGUF_LIMITS = {
  /** Bytes of the header (metadata and tensor table); Qwen's 151,936-token vocabulary takes about 7 MB. */
  headerBytes: 256 << 20,
  /** Bytes of one string (a key, a token, a chat template). */
  stringBytes: 16 << 20,
  /** Elements of one metadata array. */
  arrayElements: 1 << 26,
  tensors: 1 << 16,
  metadataKeys: 1 << 16,
  /** llama.cpp's GGML_MAX_NAME: tensor names are stored in 64-byte fields, NUL included. */
  tensorNameBytes: 63,
  /** llama.cpp's LLAMA_MAX_LAYERS. */
  layers: 512,
} as const;

const invalid = (message: string) => new QwenError("ERR_GGUF_INVALID", message);

/** Smallest encoded size of one value of each type (a string is at least its 8-byte length). */
const MIN_VALUE_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: 8, 10: 8, 11: 8, 12: 8 };

class Cursor {
  pos = 0;
  constructor(private readonly buf: Buffer, private readonly complete: boolean, private readonly fileSize: number) {}
  /** Bytes between the cursor and the end of the file. */
  get remaining() { return this.fileSize - this.pos; }
  need(n: number, what: string) {
    if (this.pos + n > GGUF_LIMITS.headerBytes) throw invalid(`${what}: the GGUF header would be larger than ${GGUF_LIMITS.headerBytes >> 20} MiB`);
    if (this.pos + n > this.buf.length) {
      if (this.complete || this.pos + n > this.fileSize) {
        throw new QwenError("ERR_GGUF_TRUNCATED", `the GGUF header ends early: ${what} needs bytes up to ${this.pos + n}, the file has ${this.fileSize}`);
      }
      throw new NeedMore();
    }
  }
  u8(w: string) { this.need(1, w); return this.buf.readUInt8(this.pos++); }
  i8(w: string) { this.need(1, w); return this.buf.readInt8(this.pos++); }
  u16(w: string) { this.need(2, w); const v = this.buf.readUInt16LE(this.pos); this.pos += 2; return v; }
  i16(w: string) { this.need(2, w); const v = this.buf.readInt16LE(this.pos); this.pos += 2; return v; }
  u32(w: string) { this.need(4, w); const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v; }
  i32(w: string) { this.need(4, w); const v = this.buf.readInt32LE(this.pos); this.pos += 4; return v; }
  f32(w: string) { this.need(4, w); const v = this.buf.readFloatLE(this.pos); this.pos += 4; return v; }
  f64(w: string) { this.need(8, w); const v = this.buf.readDoubleLE(this.pos); this.pos += 8; return v; }
  u64(w: string) { this.need(8, w); const v = this.buf.readBigUInt64LE(this.pos); this.pos += 8; return v; }
  i64(w: string) { this.need(8, w); const v = this.buf.readBigInt64LE(this.pos); this.pos += 8; return v; }
  /**
   * A u64 count of items at least `minBytes` each: above `max` the file is invalid; when the items cannot fit in
   * the bytes left, it is truncated (or the count is corrupt), named as such before anything is allocated.
   */
  count(what: string, max: number, minBytes: number) {
    const v = this.u64(what);
    if (v > BigInt(max)) throw invalid(`${what} is ${v}, more than the limit of ${max}`);
    const n = Number(v);
    if (n * minBytes > this.remaining) {
      throw new QwenError("ERR_GGUF_TRUNCATED", `${what} is ${n}: at least ${n * minBytes} bytes, but only ${this.remaining} remain in the file (truncated or corrupt)`);
    }
    return n;
  }
  str(what: string) {
    const len = this.count(`${what} (string length)`, GGUF_LIMITS.stringBytes, 1);
    this.need(len, what);
    const bytes = this.buf.subarray(this.pos, this.pos + len);
    if (!isUtf8(bytes)) throw invalid(`${what} is not valid UTF-8`);
    this.pos += len;
    return bytes.toString("utf8");
  }
}

function readValue(c: Cursor, type: GgufValueType, what: string): GgufValue {
  switch (type) {
    case GgufValueType.UINT8: return c.u8(what);
    case GgufValueType.INT8: return c.i8(what);
    case GgufValueType.UINT16: return c.u16(what);
    case GgufValueType.INT16: return c.i16(what);
    case GgufValueType.UINT32: return c.u32(what);
    case GgufValueType.INT32: return c.i32(what);
    case GgufValueType.FLOAT32: return c.f32(what);
    case GgufValueType.BOOL: {
      const b = c.u8(what);
      if (b > 1) throw invalid(`${what}: a bool must be 0 or 1, got ${b}`);
      return b === 1;
    }
    case GgufValueType.STRING: return c.str(what);
    case GgufValueType.UINT64: return c.u64(what);
    case GgufValueType.INT64: return c.i64(what);
    case GgufValueType.FLOAT64: return c.f64(what);
    default: throw invalid(`${what} has unknown GGUF value type ${type}`);
  }
}

function parseHeader(buf: Buffer, complete: boolean, fileSize: number): GgufFile {
  const c = new Cursor(buf, complete, fileSize);
  if (buf.length < 4 || buf.readUInt32LE(0) !== GGUF_MAGIC) {
    if (buf.length < 4 && !complete) throw new NeedMore();
    throw new QwenError("ERR_NOT_GGUF", `not a GGUF file (magic is ${JSON.stringify(buf.subarray(0, 4).toString("latin1"))}, expected "GGUF")`);
  }
  c.pos = 4;
  const version = c.u32("version");
  if (version < 2 || version > 3) throw invalid(`unsupported GGUF version ${version} (supported: 2, 3)`);
  // a tensor info is at least a name (8), one dimension (4 + 8), a type (4) and an offset (8); a key-value pair a
  // key (8), a type (4) and a one-byte value
  const nTensors = c.count("tensor count", GGUF_LIMITS.tensors, 32);
  const nKv = c.count("metadata key count", GGUF_LIMITS.metadataKeys, 13);
  const metadata = new Map<string, GgufTypedValue>();
  for (let i = 0; i < nKv; i++) {
    const key = c.str(`metadata key #${i}`);
    if (key === "") throw invalid(`metadata key #${i} is empty`);
    if (metadata.has(key)) throw invalid(`duplicate metadata key ${key}`);
    const type = c.u32(key) as GgufValueType;
    if (type === GgufValueType.ARRAY) {
      const arrayType = c.u32(`${key} (array element type)`) as GgufValueType;
      if (MIN_VALUE_BYTES[arrayType] === undefined) throw invalid(`${key} is an array of unknown or nested type ${arrayType}`);
      const n = c.count(`${key} (array length)`, GGUF_LIMITS.arrayElements, MIN_VALUE_BYTES[arrayType]);
      const value: GgufValue[] = new Array(n);
      for (let j = 0; j < n; j++) value[j] = readValue(c, arrayType, `${key}[${j}]`);
      metadata.set(key, { type, arrayType, value });
    } else {
      metadata.set(key, { type, value: readValue(c, type, key) });
    }
  }
  const alignEntry = metadata.get("general.alignment");
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  if (alignEntry) {
    const a = alignEntry.value;
    if (alignEntry.type !== GgufValueType.UINT32 || typeof a !== "number" || a === 0 || (a & (a - 1)) !== 0) {
      throw invalid(`general.alignment must be a UINT32 power of two, got ${describeValue(alignEntry)}`);
    }
    alignment = a;
  }
  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = c.str(`tensor #${i} name`);
    const what = `tensor ${JSON.stringify(name)}`;
    if (name === "" || Buffer.byteLength(name) > GGUF_LIMITS.tensorNameBytes) throw invalid(`tensor #${i} name ${JSON.stringify(name)} must be 1 to ${GGUF_LIMITS.tensorNameBytes} bytes`);
    if (names.has(name)) throw invalid(`duplicate tensor name ${name}`);
    names.add(name);
    const nDims = c.u32(`${what} dimension count`);
    if (nDims < 1 || nDims > 4) throw invalid(`${what} has ${nDims} dimensions (1 to 4)`);
    const dims: number[] = [];
    let elements = 1;
    for (let d = 0; d < nDims; d++) {
      const v = c.u64(`${what} ne[${d}]`);
      if (v < 1n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${what} has dimension ne[${d}] = ${v}`);
      dims.push(Number(v));
      elements *= Number(v);
      if (elements > Number.MAX_SAFE_INTEGER) throw invalid(`${what} has more than 2^53 elements (dims ${dims.join(" × ")}…)`);
    }
    const type = c.u32(`${what} type`);
    const layout = GGML_TYPE_LAYOUT[type];
    if (!layout) throw invalid(`${what} has unknown ggml type ${type}`);
    if (!layout.weight) throw invalid(`${what} has type ${layout.name}, which cannot hold model weights`);
    if (dims[0] % layout.blockSize !== 0) throw invalid(`${what}: its row length ne[0] = ${dims[0]} is not a multiple of ${layout.name}'s block size ${layout.blockSize}`);
    const offsetValue = c.u64(`${what} offset`);
    if (offsetValue > BigInt(fileSize)) throw invalid(`${what} has data offset ${offsetValue}, beyond the end of the file (${fileSize} bytes)`);
    const offset = Number(offsetValue);
    if (offset % alignment !== 0) throw invalid(`${what} has data offset ${offset}, not a multiple of the alignment ${alignment}`);
    tensors.push({ name, dims, type, offset });
  }
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  return { version, metadata, tensors, alignment, dataOffset, fileSize };
}

function describeValue(e: GgufTypedValue): string {
  const v = Array.isArray(e.value) ? `an array of ${e.value.length}` : typeof e.value === "string" ? JSON.stringify(e.value.slice(0, 40)) : String(e.value);
  return `${GgufValueType[e.type] ?? e.type} ${v}`;
}

/**
 * Reads and validates a GGUF file's header with asynchronous I/O (the event loop keeps running): its structure
 * (see parseHeader), every tensor's data inside the data section without overlap, and what llama.cpp trusts
 * without checking (validateGgufModel). A truncated file is ERR_GGUF_TRUNCATED; any other bad value
 * ERR_GGUF_INVALID naming the field.
 */
export async function readGguf(path: string): Promise<GgufFile> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new QwenError("ERR_MODEL_NOT_FOUND", `${path} is not a file`);
    size = st.size;
  } catch (err) {
    if (err instanceof QwenError) throw err;
    throw new QwenError("ERR_MODEL_NOT_FOUND", `model file not found: ${path}`, { cause: err });
  }
  const fh = await open(path, "r");
  try {
    let want = Math.min(size, 1 << 20);
    for (;;) {
      const buf = Buffer.alloc(want);
      const { bytesRead } = await fh.read(buf, 0, want, 0);
      let file: GgufFile;
      try {
        file = parseHeader(buf.subarray(0, bytesRead), bytesRead >= size, size);
      } catch (err) {
        if (!(err instanceof NeedMore)) throw prefixed(err, path);
        want = Math.min(size, GGUF_LIMITS.headerBytes, want * 4);
        continue;
      }
      try {
        validateTensorData(file, path);
        validateGgufModel(file);
      } catch (err) {
        throw prefixed(err, path);
      }
      return file;
    }
  } finally {
    await fh.close();
  }
}

function prefixed(err: unknown, path: string): unknown {
  if (err instanceof QwenError && (err.code === "ERR_GGUF_INVALID" || err.code === "ERR_GGUF_TRUNCATED") && !err.message.startsWith(path)) {
    return new QwenError(err.code, `${path}: ${err.message}`);
  }
  return err;
}

/** Tensor data inside the data section and not overlapping; truncation named as such. */
function validateTensorData(file: GgufFile, path: string) {
  if (file.dataOffset > file.fileSize) {
    throw new QwenError("ERR_GGUF_TRUNCATED", `${path} is truncated: its data section would start at byte ${file.dataOffset} but the file has ${file.fileSize} bytes`);
  }
  const spans = file.tensors.map((t) => ({ t, start: t.offset, end: t.offset + tensorBytes(t.type, t.dims) }));
  for (const { t, end } of spans) {
    if (file.dataOffset + end > file.fileSize) {
      throw new QwenError("ERR_GGUF_TRUNCATED", `${path} is truncated: tensor ${t.name} ends at byte ${file.dataOffset + end} but the file has ${file.fileSize} bytes`);
    }
  }
  spans.sort((a, b) => a.start - b.start);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i].start < spans[i - 1].end) throw invalid(`tensor ${spans[i].t.name}'s data (from offset ${spans[i].start}) overlaps tensor ${spans[i - 1].t.name}'s (to ${spans[i - 1].end})`);
  }
}

const INTEGER_TYPES = new Set([GgufValueType.UINT8, GgufValueType.INT8, GgufValueType.UINT16, GgufValueType.INT16, GgufValueType.UINT32, GgufValueType.INT32, GgufValueType.UINT64, GgufValueType.INT64]);
const NUMBER_TYPES = new Set([...INTEGER_TYPES, GgufValueType.FLOAT32, GgufValueType.FLOAT64]);
/** llama.cpp's token types: UNDEFINED 0, NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6. */
const MAX_TOKEN_TYPE = 6;

/** A scalar integer metadata value in [min, max], or undefined when absent and optional. */
function metaInt(file: GgufFile, key: string, min: number, max: number, required: boolean): number | undefined {
  const e = file.metadata.get(key);
  if (!e) {
    if (required) throw invalid(`${key} is missing`);
    return undefined;
  }
  if (!INTEGER_TYPES.has(e.type)) throw invalid(`${key} must be an integer, got ${describeValue(e)}`);
  const v = Number(e.value as number | bigint);
  if (!(v >= min && v <= max)) throw invalid(`${key} must be between ${min} and ${max}, got ${e.value}`);
  return v;
}

/** A scalar number metadata value, finite and in [min, max]. */
function metaFinite(file: GgufFile, key: string, min: number, max: number): number | undefined {
  const e = file.metadata.get(key);
  if (!e) return undefined;
  if (!NUMBER_TYPES.has(e.type)) throw invalid(`${key} must be a number, got ${describeValue(e)}`);
  const v = Number(e.value as number | bigint);
  if (!Number.isFinite(v) || v < min || v > max) throw invalid(`${key} must be a finite number between ${min} and ${max}, got ${e.value}`);
  return v;
}

function metaArray(file: GgufFile, key: string, elementTypes: Set<GgufValueType>): GgufValue[] | undefined {
  const e = file.metadata.get(key);
  if (!e) return undefined;
  if (e.type !== GgufValueType.ARRAY || !elementTypes.has(e.arrayType!)) {
    throw invalid(`${key} must be an array of ${[...elementTypes].map((t) => GgufValueType[t]).join(" or ")}, got ${e.type === GgufValueType.ARRAY ? `an array of ${GgufValueType[e.arrayType!] ?? e.arrayType}` : describeValue(e)}`);
  }
  return e.value as GgufValue[];
}

function metaStringOnly(file: GgufFile, key: string): string | undefined {
  const e = file.metadata.get(key);
  if (!e) return undefined;
  if (e.type !== GgufValueType.STRING) throw invalid(`${key} must be a string, got ${describeValue(e)}`);
  return e.value as string;
}

const STRING = new Set([GgufValueType.STRING]);

/**
 * What llama.cpp reads from the metadata and trusts: the tokenizer arrays' lengths equal the vocabulary, token ids
 * (bos, eos, pad, …) inside it, token types known, scores finite; for qwen2/qwen3 the hyper-parameters it divides by
 * or sizes buffers with, and the embedding's shape; the sampling defaults the engine applies without further checks.
 */
export function validateGgufModel(file: GgufFile): void {
  const arch = metaStringOnly(file, "general.architecture");
  metaStringOnly(file, "general.name");
  metaInt(file, "general.file_type", 0, 1 << 16, false);
  metaInt(file, "general.quantization_version", 0, 1 << 16, false);

  // tokenizer
  metaStringOnly(file, "tokenizer.ggml.model");
  metaStringOnly(file, "tokenizer.ggml.pre");
  metaStringOnly(file, "tokenizer.chat_template");
  const tokens = metaArray(file, "tokenizer.ggml.tokens", STRING);
  const nVocab = tokens?.length;
  if (tokens && nVocab === 0) throw invalid("tokenizer.ggml.tokens is empty");
  const sameLength = (key: string, list: GgufValue[] | undefined) => {
    if (!list) return;
    if (nVocab === undefined) throw invalid(`${key} is present but tokenizer.ggml.tokens is not`);
    if (list.length !== nVocab) throw invalid(`${key} has ${list.length} entries but tokenizer.ggml.tokens has ${nVocab}`);
  };
  const types = metaArray(file, "tokenizer.ggml.token_type", INTEGER_TYPES);
  sameLength("tokenizer.ggml.token_type", types);
  types?.forEach((t, i) => {
    if (!(Number(t) >= 0 && Number(t) <= MAX_TOKEN_TYPE)) throw invalid(`tokenizer.ggml.token_type[${i}] is ${t}, not a token type (0 to ${MAX_TOKEN_TYPE})`);
  });
  const scores = metaArray(file, "tokenizer.ggml.scores", new Set([GgufValueType.FLOAT32]));
  sameLength("tokenizer.ggml.scores", scores);
  scores?.forEach((s, i) => {
    if (!Number.isFinite(s)) throw invalid(`tokenizer.ggml.scores[${i}] is ${s}, not a finite number`);
  });
  metaArray(file, "tokenizer.ggml.merges", STRING);
  for (const key of file.metadata.keys()) {
    if (!/^tokenizer\.ggml\.[a-z_]+_token_id$/.test(key)) continue;
    if (nVocab === undefined) throw invalid(`${key} is present but tokenizer.ggml.tokens is not`);
    metaInt(file, key, 0, nVocab - 1, true);
  }
  for (const key of ["tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix"]) {
    const e = file.metadata.get(key);
    if (e && e.type !== GgufValueType.BOOL) throw invalid(`${key} must be a bool, got ${describeValue(e)}`);
  }

  // sampling defaults (model.ts uses them as they are when a call gives none)
  metaFinite(file, "general.sampling.temp", 0, 100);
  metaInt(file, "general.sampling.top_k", 0, 1 << 24, false);
  metaFinite(file, "general.sampling.top_p", 0, 1);
  metaFinite(file, "general.sampling.min_p", 0, 1);
  metaFinite(file, "general.sampling.penalty_repeat", 0.01, 100);
  metaInt(file, "general.sampling.penalty_last_n", 0, 1 << 20, false);

  if (arch !== "qwen2" && arch !== "qwen3") return;
  const a = (k: string) => `${arch}.${k}`;
  const layers = metaInt(file, a("block_count"), 1, GGUF_LIMITS.layers, true)!;
  metaInt(file, a("context_length"), 1, 1 << 24, true);
  const embd = metaInt(file, a("embedding_length"), 1, 1 << 20, true)!;
  metaInt(file, a("feed_forward_length"), 1, 1 << 22, true);
  const heads = metaInt(file, a("attention.head_count"), 1, 1 << 14, true)!;
  const kvHeads = metaInt(file, a("attention.head_count_kv"), 1, heads, false) ?? heads;
  if (heads % kvHeads !== 0) throw invalid(`${a("attention.head_count")} ${heads} is not a multiple of ${a("attention.head_count_kv")} ${kvHeads}`);
  for (const k of ["attention.key_length", "attention.value_length"]) {
    if (metaInt(file, a(k), 1, 1 << 16, false) === undefined && embd % heads !== 0) {
      throw invalid(`${a(k)} is missing and ${a("embedding_length")} ${embd} is not a multiple of ${a("attention.head_count")} ${heads}`);
    }
  }
  metaFinite(file, a("rope.freq_base"), Number.MIN_VALUE, 1e12);
  metaFinite(file, a("rope.freq_scale"), Number.MIN_VALUE, 1e6);
  metaFinite(file, a("rope.scaling.factor"), 0, 1e6);
  metaInt(file, a("rope.scaling.original_context_length"), 0, 1 << 24, false);
  const scaling = metaStringOnly(file, a("rope.scaling.type"));
  // llama.cpp asserts (aborts the process) on an unknown scaling type
  if (scaling !== undefined && !["none", "linear", "yarn", "longrope"].includes(scaling)) throw invalid(`${a("rope.scaling.type")} ${JSON.stringify(scaling)} is not none, linear, yarn or longrope`);
  // dense models: llama.cpp asserts on expert counts that do not fit together, and qwen2/qwen3 have no experts
  for (const k of ["expert_count", "expert_used_count", "expert_group_count", "expert_group_used_count", "nextn_predict_layers"]) {
    const e = file.metadata.get(a(k));
    if (e && !(INTEGER_TYPES.has(e.type) && Number(e.value as number | bigint) === 0)) throw invalid(`${a(k)} is ${describeValue(e)}; ${arch} is a dense model (0 or absent)`);
  }
  const keyLength = metaInt(file, a("attention.key_length"), 1, 1 << 16, false) ?? embd / heads;
  const rot = metaInt(file, a("rope.dimension_count"), 2, keyLength, false);
  if (rot !== undefined && rot % 2 !== 0) throw invalid(`${a("rope.dimension_count")} ${rot} must be even`);
  metaFinite(file, a("attention.layer_norm_rms_epsilon"), Number.MIN_VALUE, 1);
  if (nVocab === undefined) throw invalid("tokenizer.ggml.tokens is missing");
  if (nVocab > 0x7fffffff) throw invalid(`tokenizer.ggml.tokens has ${nVocab} entries; token ids are 32-bit`);
  const byName = new Map(file.tensors.map((t) => [t.name, t]));
  for (const name of ["token_embd.weight", "output.weight"]) {
    const t = byName.get(name);
    if (!t) {
      if (name === "token_embd.weight") throw invalid("tensor token_embd.weight is missing");
      continue;
    }
    if (t.dims.length !== 2 || t.dims[0] !== embd || t.dims[1] !== nVocab) {
      throw invalid(`tensor ${name} has dims [${t.dims.join(", ")}]; the metadata implies [${embd}, ${nVocab}] (${a("embedding_length")}, tokenizer.ggml.tokens)`);
    }
  }
  for (const t of file.tensors) {
    const m = /^blk\.(\d+)\./.exec(t.name);
    if (m && Number(m[1]) >= layers) throw invalid(`tensor ${t.name} belongs to layer ${m[1]} but ${a("block_count")} is ${layers}`);
    // norms and biases: llama.cpp adds and multiplies them in F32 only
    if (t.dims.length === 1 && t.type !== GgmlType.F32) throw invalid(`tensor ${t.name} is one-dimensional and must be F32, got ${ggmlTypeName(t.type)}`);
  }
}

export function metaString(file: GgufFile, key: string): string | undefined {
  const v = file.metadata.get(key)?.value;
  return typeof v === "string" ? v : undefined;
}

export function metaNumber(file: GgufFile, key: string): number | undefined {
  const v = file.metadata.get(key)?.value;
  return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// Writer

/** A metadata entry to write; arrays carry their element type. */
export type GgufEntry =
  | { type: Exclude<GgufValueType, GgufValueType.ARRAY>; value: GgufValue }
  | { type: GgufValueType.ARRAY; arrayType: GgufValueType; value: GgufValue[] };

export const gguf = {
  str: (value: string): GgufEntry => ({ type: GgufValueType.STRING, value }),
  u32: (value: number): GgufEntry => ({ type: GgufValueType.UINT32, value }),
  i32: (value: number): GgufEntry => ({ type: GgufValueType.INT32, value }),
  f32: (value: number): GgufEntry => ({ type: GgufValueType.FLOAT32, value }),
  bool: (value: boolean): GgufEntry => ({ type: GgufValueType.BOOL, value }),
  strings: (value: string[]): GgufEntry => ({ type: GgufValueType.ARRAY, arrayType: GgufValueType.STRING, value }),
  i32s: (value: number[]): GgufEntry => ({ type: GgufValueType.ARRAY, arrayType: GgufValueType.INT32, value }),
  f32s: (value: number[]): GgufEntry => ({ type: GgufValueType.ARRAY, arrayType: GgufValueType.FLOAT32, value }),
};

/** Growable little-endian byte sink for the header. */
class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;
  private ensure(n: number) {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u8(v: number) { this.ensure(1); this.buf.writeUInt8(v, this.length); this.length += 1; }
  u32(v: number) { this.ensure(4); this.buf.writeUInt32LE(v, this.length); this.length += 4; }
  i32(v: number) { this.ensure(4); this.buf.writeInt32LE(v, this.length); this.length += 4; }
  f32(v: number) { this.ensure(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  u64(v: number | bigint) { this.ensure(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  str(s: string) {
    const bytes = Buffer.from(s, "utf8");
    this.u64(bytes.length);
    this.ensure(bytes.length);
    bytes.copy(this.buf, this.length);
    this.length += bytes.length;
  }
  pad(alignment: number) { while (this.length % alignment) this.u8(0); }
  bytes() { return this.buf.subarray(0, this.length); }
}

function writeValue(sink: ByteSink, type: GgufValueType, value: GgufValue) {
  switch (type) {
    case GgufValueType.UINT8: case GgufValueType.BOOL: sink.u8(Number(value)); break;
    case GgufValueType.UINT32: sink.u32(value as number); break;
    case GgufValueType.INT32: sink.i32(value as number); break;
    case GgufValueType.FLOAT32: sink.f32(value as number); break;
    case GgufValueType.STRING: sink.str(value as string); break;
    case GgufValueType.UINT64: sink.u64(value as bigint); break;
    default: throw new Error(`writing GGUF value type ${type} is not implemented`);
  }
}

export interface GgufTensorPlan { name: string; dims: number[]; type: number; bytes: number }

/**
 * Serializes the header (metadata + tensor infos, padded to the alignment) for tensors that will follow in the
 * given order; returns the header and each tensor's offset in the data section.
 */
export function encodeGgufHeader(metadata: Map<string, GgufEntry>, tensors: GgufTensorPlan[], alignment = GGUF_DEFAULT_ALIGNMENT) {
  const sink = new ByteSink();
  sink.u32(GGUF_MAGIC);
  sink.u32(GGUF_VERSION);
  sink.u64(tensors.length);
  sink.u64(metadata.size);
  for (const [key, entry] of metadata) {
    sink.str(key);
    sink.u32(entry.type);
    if (entry.type === GgufValueType.ARRAY) {
      sink.u32(entry.arrayType);
      sink.u64(entry.value.length);
      for (const v of entry.value) writeValue(sink, entry.arrayType, v);
    } else {
      writeValue(sink, entry.type, entry.value);
    }
  }
  const offsets: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    sink.str(t.name);
    sink.u32(t.dims.length);
    for (const d of t.dims) sink.u64(d);
    sink.u32(t.type);
    sink.u64(offset);
    offsets.push(offset);
    offset += Math.ceil(t.bytes / alignment) * alignment;
  }
  sink.pad(alignment);
  return { header: Buffer.from(sink.bytes()), offsets, dataBytes: offset };
}
