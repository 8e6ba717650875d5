/** safetensors headers (single file or sharded with an index) and row-range reads of one tensor at a time. */
import { existsSync } from "node:fs";
import { open, readFile, stat, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { QwenError } from "../errors.js";

export type SourceDtype = "F32" | "F16" | "BF16";
const DTYPE_BYTES: Record<SourceDtype, number> = { F32: 4, F16: 2, BF16: 2 };

export interface SourceTensor {
  name: string;
  dtype: SourceDtype;
  /** Shape in Hugging Face (row-major, outermost first) order. */
  shape: number[];
  file: string;
  /** Absolute byte offset of the tensor's data in `file`. */
  start: number;
  bytes: number;
}

async function readHeader(file: string): Promise<SourceTensor[]> {
  const size = (await stat(file)).size;
  const fh = await open(file, "r");
  try {
    if (size < 8) throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: too short to be a safetensors file (${size} bytes)`);
    const lenBuf = Buffer.alloc(8);
    await fh.read(lenBuf, 0, 8, 0);
    const headerLen = Number(lenBuf.readBigUInt64LE(0));
    if (headerLen <= 0 || 8 + headerLen > size || headerLen > 100 * 1024 * 1024) {
      throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: header length ${headerLen} does not fit the file of ${size} bytes`);
    }
    const headerBuf = Buffer.alloc(headerLen);
    await fh.read(headerBuf, 0, headerLen, 8);
    let header: Record<string, { dtype?: string; shape?: number[]; data_offsets?: [number, number] }>;
    try {
      header = JSON.parse(headerBuf.toString("utf8"));
    } catch (err) {
      throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: the safetensors header is not valid JSON (${(err as Error).message})`, { cause: err });
    }
    if (!header || typeof header !== "object" || Array.isArray(header)) throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: the safetensors header is not a JSON object`);
    const dataStart = 8 + headerLen;
    const tensors: SourceTensor[] = [];
    for (const [name, info] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      const { dtype, shape, data_offsets: offsets } = info ?? {};
      if (dtype !== "F32" && dtype !== "F16" && dtype !== "BF16") {
        throw new QwenError("ERR_UNSUPPORTED_DTYPE", `${file}: tensor ${name} has dtype ${JSON.stringify(dtype)}; supported: BF16, F16, F32`);
      }
      if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0) || !Array.isArray(offsets) || offsets.length !== 2) {
        throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: tensor ${name} has a malformed shape or data_offsets`);
      }
      const [begin, end] = offsets;
      const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
      if (!Number.isInteger(begin) || !Number.isInteger(end) || begin < 0 || end - begin !== expected || dataStart + end > size) {
        throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: tensor ${name} has data_offsets [${begin}, ${end}] outside the file or not matching its shape (${expected} bytes)`);
      }
      tensors.push({ name, dtype, shape, file, start: dataStart + begin, bytes: expected });
    }
    const sorted = [...tensors].sort((a, b) => a.start - b.start);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i].start < sorted[i - 1].start + sorted[i - 1].bytes) {
        throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: tensors ${sorted[i - 1].name} and ${sorted[i].name} overlap`);
      }
    }
    return tensors;
  } finally {
    await fh.close();
  }
}

/** All tensors of a checkpoint directory: model.safetensors, or the shards listed by model.safetensors.index.json. */
export async function readCheckpointTensors(dir: string): Promise<Map<string, SourceTensor>> {
  const index = join(dir, "model.safetensors.index.json");
  let files: string[];
  if (existsSync(index)) {
    let weightMap: Record<string, string>;
    try {
      weightMap = JSON.parse(await readFile(index, "utf8")).weight_map;
    } catch (err) {
      throw new QwenError("ERR_CHECKPOINT_INVALID", `${index} is not valid JSON`, { cause: err });
    }
    if (!weightMap || typeof weightMap !== "object") throw new QwenError("ERR_CHECKPOINT_INVALID", `${index} has no weight_map`);
    files = [...new Set(Object.values(weightMap))].map((f) => join(dir, f));
  } else {
    files = [join(dir, "model.safetensors")];
  }
  const out = new Map<string, SourceTensor>();
  for (const file of files) {
    if (!existsSync(file)) throw new QwenError("ERR_CHECKPOINT_MISSING_FILE", `${file} is missing (a checkpoint needs model.safetensors or the shards its index lists)`);
    for (const t of await readHeader(file)) {
      if (out.has(t.name)) throw new QwenError("ERR_SAFETENSORS_INVALID", `tensor ${t.name} appears in more than one shard`);
      out.set(t.name, t);
    }
  }
  return out;
}

/** Reads blocks of rows of checkpoint tensors (rows = the innermost dimension), keeping each shard open once. */
export class TensorReader {
  private handles = new Map<string, FileHandle>();

  /** Bytes of `count` rows of `t`. */
  static bytes(t: SourceTensor, rowLength: number, count: number): number {
    return rowLength * count * DTYPE_BYTES[t.dtype];
  }

  /**
   * Reads rows [first, first + count) as stored (F32, F16 or BF16 bits) into the start of `into`, a buffer the
   * caller reuses block after block, and returns that part of it.
   */
  async readRows(t: SourceTensor, rowLength: number, first: number, count: number, into: Buffer): Promise<Buffer> {
    let fh = this.handles.get(t.file);
    if (!fh) {
      fh = await open(t.file, "r");
      this.handles.set(t.file, fh);
    }
    const bytes = TensorReader.bytes(t, rowLength, count);
    const { bytesRead } = await fh.read(into, 0, bytes, t.start + first * rowLength * DTYPE_BYTES[t.dtype]);
    if (bytesRead !== bytes) throw new QwenError("ERR_SAFETENSORS_INVALID", `${t.file}: short read of tensor ${t.name}`);
    return into.subarray(0, bytes);
  }

  async close() {
    for (const fh of this.handles.values()) await fh.close();
    this.handles.clear();
  }
}
