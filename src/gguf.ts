/**
 * GGUF reading and writing in TypeScript: the reader validates files before the native loader sees them and feeds
 * `inspect` and `model.info`; the writer is the converter's output stage.
 * Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
 */
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

/** Block size (elements) and bytes per block of the ggml types we read or write. */
export const GGML_TYPE_LAYOUT: Record<number, { blockSize: number; typeSize: number; name: string }> = {
  [GgmlType.F32]: { blockSize: 1, typeSize: 4, name: "F32" },
  [GgmlType.F16]: { blockSize: 1, typeSize: 2, name: "F16" },
  [GgmlType.BF16]: { blockSize: 1, typeSize: 2, name: "BF16" },
  [GgmlType.Q4_0]: { blockSize: 32, typeSize: 18, name: "Q4_0" },
  [GgmlType.Q4_1]: { blockSize: 32, typeSize: 20, name: "Q4_1" },
  [GgmlType.Q5_0]: { blockSize: 32, typeSize: 22, name: "Q5_0" },
  [GgmlType.Q5_1]: { blockSize: 32, typeSize: 24, name: "Q5_1" },
  [GgmlType.Q8_0]: { blockSize: 32, typeSize: 34, name: "Q8_0" },
  [GgmlType.Q2_K]: { blockSize: 256, typeSize: 84, name: "Q2_K" },
  [GgmlType.Q3_K]: { blockSize: 256, typeSize: 110, name: "Q3_K" },
  [GgmlType.Q4_K]: { blockSize: 256, typeSize: 144, name: "Q4_K" },
  [GgmlType.Q5_K]: { blockSize: 256, typeSize: 176, name: "Q5_K" },
  [GgmlType.Q6_K]: { blockSize: 256, typeSize: 210, name: "Q6_K" },
  [GgmlType.IQ4_NL]: { blockSize: 32, typeSize: 18, name: "IQ4_NL" },
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

class Cursor {
  pos = 0;
  constructor(private readonly buf: Buffer, private readonly complete: boolean) {}
  private need(n: number) {
    if (this.pos + n > this.buf.length) {
      if (this.complete) throw new QwenError("ERR_GGUF_TRUNCATED", `the GGUF header ends early (needs ${this.pos + n} bytes, file has ${this.buf.length})`);
      throw new NeedMore();
    }
  }
  u8() { this.need(1); return this.buf.readUInt8(this.pos++); }
  i8() { this.need(1); return this.buf.readInt8(this.pos++); }
  u16() { this.need(2); const v = this.buf.readUInt16LE(this.pos); this.pos += 2; return v; }
  i16() { this.need(2); const v = this.buf.readInt16LE(this.pos); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v; }
  i32() { this.need(4); const v = this.buf.readInt32LE(this.pos); this.pos += 4; return v; }
  f32() { this.need(4); const v = this.buf.readFloatLE(this.pos); this.pos += 4; return v; }
  f64() { this.need(8); const v = this.buf.readDoubleLE(this.pos); this.pos += 8; return v; }
  u64() { this.need(8); const v = this.buf.readBigUInt64LE(this.pos); this.pos += 8; return v; }
  i64() { this.need(8); const v = this.buf.readBigInt64LE(this.pos); this.pos += 8; return v; }
  /** A u64 count that must be a safe integer and plausibly small. */
  count(what: string, max: number) {
    const v = this.u64();
    if (v > BigInt(max)) throw new QwenError("ERR_GGUF_INVALID", `implausible ${what} count ${v} in the GGUF header`);
    return Number(v);
  }
  str() {
    const len = this.count("string length", 1 << 30);
    this.need(len);
    const s = this.buf.toString("utf8", this.pos, this.pos + len);
    this.pos += len;
    return s;
  }
}

function readValue(c: Cursor, type: GgufValueType): GgufValue {
  switch (type) {
    case GgufValueType.UINT8: return c.u8();
    case GgufValueType.INT8: return c.i8();
    case GgufValueType.UINT16: return c.u16();
    case GgufValueType.INT16: return c.i16();
    case GgufValueType.UINT32: return c.u32();
    case GgufValueType.INT32: return c.i32();
    case GgufValueType.FLOAT32: return c.f32();
    case GgufValueType.BOOL: return c.u8() !== 0;
    case GgufValueType.STRING: return c.str();
    case GgufValueType.UINT64: return c.u64();
    case GgufValueType.INT64: return c.i64();
    case GgufValueType.FLOAT64: return c.f64();
    default: throw new QwenError("ERR_GGUF_INVALID", `unknown GGUF value type ${type}`);
  }
}

function parseHeader(buf: Buffer, complete: boolean, fileSize: number): GgufFile {
  const c = new Cursor(buf, complete);
  if (buf.length < 4 || buf.readUInt32LE(0) !== GGUF_MAGIC) {
    if (buf.length < 4 && !complete) throw new NeedMore();
    throw new QwenError("ERR_NOT_GGUF", `not a GGUF file (magic is ${JSON.stringify(buf.subarray(0, 4).toString("latin1"))}, expected "GGUF")`);
  }
  c.pos = 4;
  const version = c.u32();
  if (version < 2 || version > 3) throw new QwenError("ERR_GGUF_INVALID", `unsupported GGUF version ${version} (supported: 2, 3)`);
  const nTensors = c.count("tensor", 1 << 24);
  const nKv = c.count("metadata", 1 << 24);
  const metadata = new Map<string, GgufTypedValue>();
  for (let i = 0; i < nKv; i++) {
    const key = c.str();
    const type = c.u32() as GgufValueType;
    if (type === GgufValueType.ARRAY) {
      const arrayType = c.u32() as GgufValueType;
      const n = c.count("array element", 1 << 28);
      const value: GgufValue[] = new Array(n);
      for (let j = 0; j < n; j++) value[j] = readValue(c, arrayType);
      metadata.set(key, { type, arrayType, value });
    } else {
      metadata.set(key, { type, value: readValue(c, type) });
    }
  }
  const tensors: GgufTensorInfo[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = c.str();
    const nDims = c.u32();
    if (nDims > 4) throw new QwenError("ERR_GGUF_INVALID", `tensor ${name} has ${nDims} dimensions (max 4)`);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(c.count("dimension", Number.MAX_SAFE_INTEGER));
    const type = c.u32();
    const offset = Number(c.u64());
    tensors.push({ name, dims, type, offset });
  }
  const alignmentValue = metadata.get("general.alignment")?.value;
  const alignment = typeof alignmentValue === "number" ? alignmentValue : GGUF_DEFAULT_ALIGNMENT;
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  return { version, metadata, tensors, alignment, dataOffset, fileSize };
}

/**
 * Reads and validates a GGUF file's header with asynchronous I/O (the event loop keeps running).
 * Checks that every tensor's data lies inside the file, so a truncated download is named as such.
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
      try {
        const file = parseHeader(buf.subarray(0, bytesRead), bytesRead >= size, size);
        validateTensorBounds(file, path);
        return file;
      } catch (err) {
        if (!(err instanceof NeedMore)) throw err;
        want = Math.min(size, want * 4);
      }
    }
  } finally {
    await fh.close();
  }
}

function validateTensorBounds(file: GgufFile, path: string) {
  for (const t of file.tensors) {
    if (!GGML_TYPE_LAYOUT[t.type]) continue; // a type we do not know: llama.cpp will judge it
    const end = file.dataOffset + t.offset + tensorBytes(t.type, t.dims);
    if (end > file.fileSize) {
      throw new QwenError("ERR_GGUF_TRUNCATED", `${path} is truncated: tensor ${t.name} ends at byte ${end} but the file has ${file.fileSize} bytes`);
    }
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
