/** safetensors headers (single file or sharded with an index) and row-range reads of one tensor at a time. */
import { validateShardIndex } from "../validate-checkpoint.js";
import { QwenError } from "../errors.js";
import { DirectorySource, type CheckpointSource } from "./source.js";

export type SourceDtype = "F32" | "F16" | "BF16";
const DTYPE_BYTES: Record<SourceDtype, number> = { F32: 4, F16: 2, BF16: 2 };

export interface SourceTensor {
  name: string;
  dtype: SourceDtype;
  /** Shape in Hugging Face (row-major, outermost first) order. */
  shape: number[];
  /** The shard holding it, relative to the checkpoint (e.g. "model-00001-of-00002.safetensors"). */
  file: string;
  /** Absolute byte offset of the tensor's data in `file`. */
  start: number;
  bytes: number;
}

// the first read takes this much, so a remote shard's header usually costs one request (Qwen3-4B's is ~40 KB)
const HEADER_PROBE = 64 * 1024;

async function readHeader(source: CheckpointSource, shard: string): Promise<SourceTensor[]> {
  const file = source.describe(shard);
  const size = await source.size(shard);
  if (size === undefined) throw new QwenError("ERR_CHECKPOINT_MISSING_FILE", `${file} is missing (a checkpoint needs model.safetensors or the shards its index lists)`);
  if (size < 8) throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: too short to be a safetensors file (${size} bytes)`);
  const probe = Buffer.alloc(Math.min(size, HEADER_PROBE));
  const first = await source.read(shard, 0, probe.length, probe);
  const headerLen = Number(first.readBigUInt64LE(0));
  if (headerLen <= 0 || 8 + headerLen > size || headerLen > 100 * 1024 * 1024) {
    throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: header length ${headerLen} does not fit the file of ${size} bytes`);
  }
  let headerBuf: Buffer;
  if (8 + headerLen <= first.length) {
    headerBuf = first.subarray(8, 8 + headerLen);
  } else {
    headerBuf = Buffer.alloc(headerLen);
    first.copy(headerBuf, 0, 8);
    const rest = headerLen - (first.length - 8);
    const tail = await source.read(shard, first.length, rest, Buffer.alloc(rest));
    tail.copy(headerBuf, first.length - 8);
  }
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
    tensors.push({ name, dtype, shape, file: shard, start: dataStart + begin, bytes: expected });
  }
  const sorted = [...tensors].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].start < sorted[i - 1].start + sorted[i - 1].bytes) {
      throw new QwenError("ERR_SAFETENSORS_INVALID", `${file}: tensors ${sorted[i - 1].name} and ${sorted[i].name} overlap`);
    }
  }
  return tensors;
}

/** All tensors of a checkpoint: model.safetensors, or the shards listed by model.safetensors.index.json. */
export async function readCheckpointTensors(from: string | CheckpointSource): Promise<Map<string, SourceTensor>> {
  const source = typeof from === "string" ? new DirectorySource(from) : from;
  try {
    const indexName = "model.safetensors.index.json";
    const indexBytes = await source.readFile(indexName);
    let files: string[];
    if (indexBytes) {
      const index = source.describe(indexName);
      let parsed: unknown;
      try {
        parsed = JSON.parse(indexBytes.toString("utf8"));
      } catch (err) {
        throw new QwenError("ERR_CHECKPOINT_INVALID", `${index} is not valid JSON`, { cause: err });
      }
      // shard names must be plain files of the checkpoint: never a path outside it
      const weightMap = validateShardIndex(parsed, index);
      files = [...new Set(Object.values(weightMap))];
    } else {
      files = ["model.safetensors"];
    }
    const out = new Map<string, SourceTensor>();
    for (const file of files) {
      for (const t of await readHeader(source, file)) {
        if (out.has(t.name)) throw new QwenError("ERR_SAFETENSORS_INVALID", `tensor ${t.name} appears in more than one shard`);
        out.set(t.name, t);
      }
    }
    return out;
  } finally {
    if (typeof from === "string") await source.close();
  }
}

/** Reads blocks of rows of checkpoint tensors (rows = the innermost dimension) from a checkpoint source. */
export class TensorReader {
  constructor(private source: CheckpointSource) {}

  /** Bytes of `count` rows of `t`. */
  static bytes(t: SourceTensor, rowLength: number, count: number): number {
    return rowLength * count * DTYPE_BYTES[t.dtype];
  }

  /** Where rows [first, first + count) of `t` are. */
  static range(t: SourceTensor, rowLength: number, first: number, count: number) {
    return { file: t.file, start: t.start + first * rowLength * DTYPE_BYTES[t.dtype], bytes: TensorReader.bytes(t, rowLength, count) };
  }

  /**
   * Reads rows [first, first + count) as stored (F32, F16 or BF16 bits), into the start of `into` (a buffer the
   * caller reuses block after block) or into a buffer of the source's own; returns the bytes. Pass the result to
   * `release` once it has been used.
   */
  readRows(t: SourceTensor, rowLength: number, first: number, count: number, into: Buffer): Promise<Buffer> {
    const r = TensorReader.range(t, rowLength, first, count);
    return this.source.read(r.file, r.start, r.bytes, into);
  }

  release(data: Buffer) {
    this.source.release?.(data);
  }
}
