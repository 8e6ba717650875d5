#!/usr/bin/env node
/**
 * `npm run fuzz -- --gguf 2000 --checkpoint 1000 --seed S [--timeout MS] [--keep] [--json]`
 *
 * Mutates generated inputs and loads (GGUF) or converts (Hugging Face checkpoint) each one in a child process, so
 * a crash of the native code or of Node shows as what it is. Each outcome is: loaded/converted, a clean error (its
 * code), an error without a code, or a crash (a signal, an abort, a non-zero exit, a hang over the time limit).
 * After every conversion the output directory must hold exactly the output (success) or nothing (failure).
 *
 * GGUF mutations: truncation at every structural boundary, byte flips in the header and metadata, huge counts and
 * lengths, duplicated keys and tensors, swapped value and tensor types, misaligned/overlapping/outside offsets, bad
 * dimensions, semantic edits of what llama.cpp reads (token ids, tokenizer arrays, hyper-parameters, templates,
 * sampling defaults), NaN/Inf/random tensor data. Checkpoint mutations: every config.json field the converter reads
 * set to wrong types and ranges, tokenizer.json / tokenizer_config.json / generation_config.json edits, broken JSON,
 * safetensors header and data edits, shard index edits, missing files.
 *
 * Case i of seed S is the same input on every run (`--only gguf:i` or `--only checkpoint:i` replays one).
 * `--validate-checkpoints` runs src/validate-checkpoint.ts's checks before each conversion, where the converter is to
 * call them; `--compact-only` leaves out the full-vocabulary GGUF base.
 */
import { fork, type ChildProcess } from "node:child_process";
import { cp, mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Rng } from "./fixtures/checkpoint.js";
import { compactCheckpoint, compactGguf, COMPACT_VOCAB, fullVocabGguf } from "./fixtures/compact.js";

const root = join(import.meta.dirname, "..");
export const FUZZ_CACHE = join(root, ".cache", "fuzz");

// ---------------------------------------------------------------------------------------------------------------
// Seeded choices

class Pick {
  readonly rng: Rng;
  constructor(seed: number) {
    this.rng = new Rng(seed);
    for (let i = 0; i < 4; i++) this.rng.uniform(); // decorrelate neighbouring seeds
  }
  int(n: number) { return Math.floor(this.rng.uniform() * n); }
  one<T>(list: readonly T[]): T { return list[this.int(list.length)]; }
  chance(p: number) { return this.rng.uniform() < p; }
}

/** Case `index` of `kind` under `seed`: its own generator, so any case can be replayed alone. */
const caseSeed = (seed: number, kind: "gguf" | "checkpoint", index: number) => (Math.imul(seed ^ 0x5bd1e995, 2654435761) + index * 7919 + (kind === "gguf" ? 0 : 104729)) >>> 0;

// ---------------------------------------------------------------------------------------------------------------
// GGUF layout of a known-good file, and re-assembly

interface KvLayout { start: number; end: number; key: string; typePos: number; type: number; valuePos: number; arrayTypePos?: number; countPos?: number; arrayType?: number; count?: number; stringLenPos?: number }
interface TensorLayout { start: number; end: number; name: string; nDimsPos: number; dimPos: number[]; dims: bigint[]; typePos: number; type: number; offsetPos: number; offset: bigint }
export interface GgufLayout { kvs: KvLayout[]; tensors: TensorLayout[]; headerEnd: number; dataOffset: number; alignment: number }

const VALUE_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

export function ggufLayout(b: Buffer): GgufLayout {
  let p = 8;
  const nTensors = Number(b.readBigUInt64LE(p)); p += 8;
  const nKv = Number(b.readBigUInt64LE(p)); p += 8;
  const str = () => { const n = Number(b.readBigUInt64LE(p)); const s = b.toString("utf8", p + 8, p + 8 + n); p += 8 + n; return s; };
  const skip = (type: number) => { if (type === 8) p += 8 + Number(b.readBigUInt64LE(p)); else p += VALUE_SIZE[type]; };
  const kvs: KvLayout[] = [];
  let alignment = 32;
  for (let i = 0; i < nKv; i++) {
    const start = p;
    const key = str();
    const typePos = p;
    const type = b.readUInt32LE(p); p += 4;
    const kv: KvLayout = { start, end: 0, key, typePos, type, valuePos: p };
    if (type === 9) {
      kv.arrayTypePos = p; kv.arrayType = b.readUInt32LE(p); p += 4;
      kv.countPos = p; kv.count = Number(b.readBigUInt64LE(p)); p += 8;
      for (let j = 0; j < kv.count; j++) skip(kv.arrayType);
    } else {
      if (type === 8) kv.stringLenPos = p;
      if (key === "general.alignment") alignment = b.readUInt32LE(p);
      skip(type);
    }
    kv.end = p;
    kvs.push(kv);
  }
  const tensors: TensorLayout[] = [];
  for (let i = 0; i < nTensors; i++) {
    const start = p;
    const name = str();
    const nDimsPos = p;
    const nDims = b.readUInt32LE(p); p += 4;
    const dimPos: number[] = [], dims: bigint[] = [];
    for (let d = 0; d < nDims; d++) { dimPos.push(p); dims.push(b.readBigUInt64LE(p)); p += 8; }
    const typePos = p; const type = b.readUInt32LE(p); p += 4;
    const offsetPos = p; const offset = b.readBigUInt64LE(p); p += 8;
    tensors.push({ start, end: p, name, nDimsPos, dimPos, dims, typePos, type, offsetPos, offset });
  }
  return { kvs, tensors, headerEnd: p, dataOffset: Math.ceil(p / alignment) * alignment, alignment };
}

const u64 = (v: bigint | number) => { const x = Buffer.alloc(8); x.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v))); return x; };
const u32 = (v: number) => { const x = Buffer.alloc(4); x.writeUInt32LE(v >>> 0); return x; };
const gstr = (s: string | Buffer) => { const bytes = typeof s === "string" ? Buffer.from(s) : s; return Buffer.concat([u64(bytes.length), bytes]); };

export type Scalar = number | bigint | boolean | string | Buffer;
function encodeScalar(type: number, v: Scalar): Buffer {
  const x = Buffer.alloc(VALUE_SIZE[type] ?? 0);
  switch (type) {
    case 0: x.writeUInt8(Number(v) & 0xff); return x;
    case 1: x.writeInt8(Number(v)); return x;
    case 2: x.writeUInt16LE(Number(v) & 0xffff); return x;
    case 3: x.writeInt16LE(Number(v)); return x;
    case 4: x.writeUInt32LE(Number(v) >>> 0); return x;
    case 5: x.writeInt32LE(Number(v) | 0); return x;
    case 6: x.writeFloatLE(Number(v)); return x;
    case 7: x.writeUInt8(v ? 1 : 0); return x;
    case 8: return gstr(v as string | Buffer);
    case 10: x.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v as number))); return x;
    case 11: x.writeBigInt64LE(BigInt.asIntN(64, BigInt(v as number))); return x;
    case 12: x.writeDoubleLE(Number(v)); return x;
    default: throw new Error(`scalar type ${type}`);
  }
}
const kvBytes = (key: string, type: number, v: Scalar) => Buffer.concat([gstr(key), u32(type), encodeScalar(type, v)]);
const kvArray = (key: string, type: number, list: Scalar[]) => Buffer.concat([gstr(key), u32(9), u32(type), u64(list.length), ...list.map((v) => encodeScalar(type, v))]);

/**
 * A copy of a GGUF with metadata key `key` set to a scalar of `type` (added when absent), or removed with
 * value null: regression inputs are made with it from the compact base, by code.
 */
export function withMetadata(base: Buffer, key: string, type: number, value: Scalar | null): Buffer {
  const L = ggufLayout(base);
  const blobs = L.kvs.filter((x) => x.key !== key).map((x) => base.subarray(x.start, x.end));
  if (value !== null) blobs.push(kvBytes(key, type, value));
  return assemble(blobs, L.tensors.map((t) => base.subarray(t.start, t.end)), base.subarray(L.dataOffset));
}

/** A GGUF from parts: key-value blobs, tensor-info blobs, and the data section (re-aligned). */
function assemble(kvs: Buffer[], tensors: Buffer[], data: Buffer, alignment = 32): Buffer {
  const head = Buffer.concat([Buffer.from("GGUF"), u32(3), u64(tensors.length), u64(kvs.length), ...kvs, ...tensors]);
  const pad = (alignment - (head.length % alignment)) % alignment;
  return Buffer.concat([head, Buffer.alloc(pad), data]);
}

/** Decodes one array value of the base file (strings as Buffers, numbers as numbers). */
function readArray(b: Buffer, kv: KvLayout): Scalar[] {
  const out: Scalar[] = [];
  let p = kv.countPos! + 8;
  for (let j = 0; j < kv.count!; j++) {
    if (kv.arrayType === 8) { const n = Number(b.readBigUInt64LE(p)); out.push(b.subarray(p + 8, p + 8 + n)); p += 8 + n; }
    else if (kv.arrayType === 5) { out.push(b.readInt32LE(p)); p += 4; }
    else if (kv.arrayType === 6) { out.push(b.readFloatLE(p)); p += 4; }
    else { out.push(b.readUInt32LE(p)); p += VALUE_SIZE[kv.arrayType!]; }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// GGUF mutations

export interface Mutant { desc: string; bytes: Buffer }

const HUGE_U64 = [2n ** 64n - 1n, 2n ** 63n, 2n ** 62n + 7n, 2n ** 32n, 2n ** 31n, 0xffffffffn];

export function mutateGguf(base: Buffer, L: GgufLayout, pick: Pick): Mutant {
  const kv = () => pick.one(L.kvs);
  const kvNamed = (k: string) => L.kvs.find((x) => x.key === k)!;
  const tensor = () => pick.one(L.tensors);
  const copy = () => Buffer.from(base);
  const data = base.subarray(L.dataOffset);
  const kvBlobs = () => L.kvs.map((x) => base.subarray(x.start, x.end));
  const tensorBlobs = () => L.tensors.map((x) => base.subarray(x.start, x.end));
  /** The file with the key-value pair `key` replaced by `blob` (or removed with null, or added when absent). */
  const withKv = (key: string, blob: Buffer | null) => {
    const blobs: Buffer[] = [];
    let found = false;
    for (const x of L.kvs) {
      if (x.key === key) { found = true; if (blob) blobs.push(blob); } else blobs.push(base.subarray(x.start, x.end));
    }
    if (!found && blob) blobs.push(blob);
    return assemble(blobs, tensorBlobs(), data);
  };
  const vocab = kvNamed("tokenizer.ggml.tokens").count!;
  const op = pick.int(14);
  switch (op) {
    case 0: { // truncation at a structural boundary (or one byte either side)
      const bounds = [0, 4, 8, 16, 24, L.headerEnd, L.dataOffset, base.length - 1];
      for (const x of L.kvs) bounds.push(x.start, x.typePos, x.valuePos, x.end, ...(x.countPos ? [x.countPos, x.countPos + 8] : []));
      for (const t of L.tensors) bounds.push(t.start, t.nDimsPos, t.typePos, t.offsetPos, t.end, L.dataOffset + Number(t.offset));
      const at = Math.max(0, Math.min(base.length - 1, pick.one(bounds) + pick.one([0, 0, 0, -1, 1])));
      return { desc: `truncate at byte ${at} of ${base.length}`, bytes: base.subarray(0, at) };
    }
    case 1: { // random bytes in the header
      const b = copy();
      const n = 1 + pick.int(8);
      const at: number[] = [];
      for (let i = 0; i < n; i++) {
        const p = pick.int(L.headerEnd);
        at.push(p);
        b[p] = pick.chance(0.5) ? b[p] ^ (1 << pick.int(8)) : pick.int(256);
      }
      return { desc: `flip header bytes ${at.join(",")}`, bytes: b };
    }
    case 2: { // a flip in a structural field (counts, lengths, types, dims, offsets)
      const fields: [string, number, number][] = [["tensor count", 8, 8], ["kv count", 16, 8]];
      for (const x of L.kvs) {
        fields.push([`${x.key} key length`, x.start, 8], [`${x.key} type`, x.typePos, 4]);
        if (x.countPos) fields.push([`${x.key} array type`, x.arrayTypePos!, 4], [`${x.key} array length`, x.countPos, 8]);
        if (x.stringLenPos) fields.push([`${x.key} string length`, x.stringLenPos, 8]);
      }
      for (const t of L.tensors) {
        fields.push([`${t.name} name length`, t.start, 8], [`${t.name} n_dims`, t.nDimsPos, 4], [`${t.name} type`, t.typePos, 4], [`${t.name} offset`, t.offsetPos, 8]);
        t.dimPos.forEach((p, d) => fields.push([`${t.name} ne[${d}]`, p, 8]));
      }
      const [name, pos, size] = pick.one(fields);
      const b = copy();
      const byte = pos + pick.int(size);
      const bit = pick.int(8);
      b[byte] ^= 1 << bit;
      return { desc: `flip bit ${bit} of byte ${byte - pos} of ${name}`, bytes: b };
    }
    case 3: { // huge counts and lengths
      const fields: [string, number][] = [["tensor count", 8], ["kv count", 16]];
      for (const x of L.kvs) {
        fields.push([`${x.key} key length`, x.start]);
        if (x.countPos) fields.push([`${x.key} array length`, x.countPos]);
        if (x.stringLenPos) fields.push([`${x.key} string length`, x.stringLenPos]);
      }
      for (const t of L.tensors) {
        fields.push([`${t.name} name length`, t.start]);
        t.dimPos.forEach((p, d) => fields.push([`${t.name} ne[${d}]`, p]));
      }
      const [name, pos] = pick.one(fields);
      const old = base.readBigUInt64LE(pos);
      const value = pick.one([...HUGE_U64, BigInt(base.length), old + 1n, old * 2n, 0n, old - 1n]);
      const b = copy();
      b.writeBigUInt64LE(BigInt.asUintN(64, value), pos);
      return { desc: `${name} = ${BigInt.asUintN(64, value)} (was ${old})`, bytes: b };
    }
    case 4: { // duplicated key
      const x = kv();
      const blobs = kvBlobs();
      blobs.splice(pick.int(blobs.length + 1), 0, base.subarray(x.start, x.end));
      return { desc: `duplicate key ${x.key}`, bytes: assemble(blobs, tensorBlobs(), data) };
    }
    case 5: { // duplicated, dropped or renamed tensor
      const t = tensor();
      const blobs = tensorBlobs();
      const i = L.tensors.indexOf(t);
      const what = pick.int(3);
      if (what === 0) {
        blobs.splice(pick.int(blobs.length + 1), 0, base.subarray(t.start, t.end));
        return { desc: `duplicate tensor ${t.name}`, bytes: assemble(kvBlobs(), blobs, data) };
      }
      if (what === 1) {
        blobs.splice(i, 1);
        return { desc: `drop tensor ${t.name}`, bytes: assemble(kvBlobs(), blobs, data) };
      }
      const name = pick.one(["", "blk.9.attn_q.weight", "blk.0.attn_q.weight", "x".repeat(64), "token_embd.weight", "blk.4294967296.ffn_up.weight", "output.weight"]);
      blobs[i] = Buffer.concat([gstr(name), base.subarray(t.nDimsPos, t.end)]);
      return { desc: `rename tensor ${t.name} to ${JSON.stringify(name.length > 20 ? `${name.slice(0, 8)}…(${name.length})` : name)}`, bytes: assemble(kvBlobs(), blobs, data) };
    }
    case 6: { // swapped value types
      const x = kv();
      const b = copy();
      const arrayElem = x.arrayTypePos !== undefined && pick.chance(0.5);
      const t = pick.one([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 255, 0xffffffff]);
      b.writeUInt32LE(t >>> 0, arrayElem ? x.arrayTypePos! : x.typePos);
      return { desc: `${x.key} ${arrayElem ? "array element " : ""}type ${arrayElem ? x.arrayType : x.type} -> ${t}`, bytes: b };
    }
    case 7: { // swapped tensor types
      const t = tensor();
      const b = copy();
      const type = pick.one([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 23, 24, 28, 30, 31, 36, 39, 40, 41, 42, 43, 1000, 0xffffffff]);
      b.writeUInt32LE(type >>> 0, t.typePos);
      return { desc: `${t.name} type ${t.type} -> ${type}`, bytes: b };
    }
    case 8: { // offsets: misaligned, overlapping, outside
      const t = tensor();
      const other = tensor();
      const b = copy();
      const choice = pick.int(4);
      const value = choice === 0 ? t.offset + BigInt(1 + pick.int(L.alignment - 1)) : choice === 1 ? other.offset : choice === 2 ? BigInt(base.length) : pick.one(HUGE_U64);
      b.writeBigUInt64LE(BigInt.asUintN(64, value), t.offsetPos);
      return { desc: `${t.name} offset ${t.offset} -> ${value}${choice === 1 ? ` (${other.name}'s)` : ""}`, bytes: b };
    }
    case 9: { // dimensions
      const t = tensor();
      const b = copy();
      if (pick.chance(0.25)) {
        const n = pick.one([0, 3, 5, 0xffffffff]);
        b.writeUInt32LE(n >>> 0, t.nDimsPos);
        return { desc: `${t.name} n_dims ${t.dims.length} -> ${n}`, bytes: b };
      }
      const d = pick.int(t.dims.length);
      const v = pick.one([0n, 1n, t.dims[d] + 1n, t.dims[d] - 1n, t.dims[d] * 2n, t.dims[d] / 2n, 2n ** 32n, 2n ** 62n]);
      b.writeBigUInt64LE(v, t.dimPos[d]);
      return { desc: `${t.name} ne[${d}] ${t.dims[d]} -> ${v}`, bytes: b };
    }
    case 10: { // token ids and tokenizer arrays
      const ids = L.kvs.filter((x) => x.key.endsWith("_token_id"));
      const what = pick.int(7);
      if (what === 0) {
        const x = pick.one(ids);
        const v = pick.one([vocab, vocab + 7, 0xffffffff, 2 ** 31]);
        return { desc: `${x.key} = ${v} (vocabulary ${vocab})`, bytes: withKv(x.key, kvBytes(x.key, 4, v)) };
      }
      if (what === 1) {
        const x = pick.one(ids);
        return { desc: `${x.key} = -1 as INT32`, bytes: withKv(x.key, kvBytes(x.key, 5, -1)) };
      }
      if (what === 2) {
        const key = pick.one(["tokenizer.ggml.eot_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.sep_token_id", "tokenizer.ggml.eom_token_id", "tokenizer.ggml.fim_pre_token_id"]);
        return { desc: `add ${key} = ${vocab}`, bytes: withKv(key, kvBytes(key, 4, vocab)) };
      }
      const tok = kvNamed("tokenizer.ggml.tokens");
      const types = kvNamed("tokenizer.ggml.token_type");
      if (what === 3) {
        const list = readArray(base, types);
        const i = pick.int(list.length);
        const v = pick.one([7, -1, 1000, 2 ** 31 - 1]);
        list[i] = v;
        return { desc: `tokenizer.ggml.token_type[${i}] = ${v}`, bytes: withKv(types.key, kvArray(types.key, 5, list)) };
      }
      if (what === 4) {
        const which = pick.one([tok, types]);
        const list = readArray(base, which);
        const n = pick.one([list.length - 1, list.length + 1, 1, 0]);
        const resized = n <= list.length ? list.slice(0, n) : [...list, which.arrayType === 8 ? Buffer.from("extra") : 1];
        return { desc: `${which.key} resized ${list.length} -> ${n}`, bytes: withKv(which.key, kvArray(which.key, which.arrayType!, resized)) };
      }
      if (what === 5) {
        const list = readArray(base, tok);
        const i = pick.int(list.length);
        const v = pick.one([Buffer.from([0xff, 0xfe]), Buffer.from([0xc3]), Buffer.alloc(0), Buffer.from("a".repeat(70000)), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from("\u0000")]);
        list[i] = v;
        return { desc: `tokenizer.ggml.tokens[${i}] = bytes ${v.subarray(0, 4).toString("hex")}${v.length > 4 ? `…(${v.length})` : ""}`, bytes: withKv(tok.key, kvArray(tok.key, 8, list)) };
      }
      const scores = Array.from({ length: vocab }, (_, i) => (i === 3 ? pick.one([NaN, Infinity, -Infinity]) : -i));
      const len = pick.one([vocab, vocab - 1]);
      return { desc: `add tokenizer.ggml.scores (${len} entries, one non-finite)`, bytes: withKv("tokenizer.ggml.scores", kvArray("tokenizer.ggml.scores", 6, scores.slice(0, len))) };
    }
    case 11: { // hyper-parameters, alignment, sampling defaults
      const arch = "qwen3";
      const edits: [string, () => Buffer | null, string][] = [
        [`${arch}.attention.head_count_kv`, () => kvBytes(`${arch}.attention.head_count_kv`, 4, 0), "0"],
        [`${arch}.attention.head_count_kv`, () => kvBytes(`${arch}.attention.head_count_kv`, 4, 3), "3"],
        [`${arch}.attention.head_count`, () => kvBytes(`${arch}.attention.head_count`, 4, 0), "0"],
        [`${arch}.attention.head_count`, () => kvBytes(`${arch}.attention.head_count`, 4, 1 << 20), "2^20"],
        [`${arch}.attention.key_length`, () => kvBytes(`${arch}.attention.key_length`, 4, 0), "0"],
        [`${arch}.attention.key_length`, () => null, "removed"],
        [`${arch}.attention.value_length`, () => kvBytes(`${arch}.attention.value_length`, 4, 48), "48"],
        [`${arch}.block_count`, () => kvBytes(`${arch}.block_count`, 4, 0), "0"],
        [`${arch}.block_count`, () => kvBytes(`${arch}.block_count`, 4, 1), "1"],
        [`${arch}.block_count`, () => kvBytes(`${arch}.block_count`, 4, 3), "3"],
        [`${arch}.block_count`, () => kvBytes(`${arch}.block_count`, 4, 100000), "100000"],
        [`${arch}.block_count`, () => kvBytes(`${arch}.block_count`, 8, "2"), "a string"],
        [`${arch}.block_count`, () => kvBytes(`${arch}.block_count`, 6, 2.5), "2.5 as FLOAT32"],
        [`${arch}.embedding_length`, () => kvBytes(`${arch}.embedding_length`, 4, 0), "0"],
        [`${arch}.embedding_length`, () => kvBytes(`${arch}.embedding_length`, 4, 128), "128"],
        [`${arch}.feed_forward_length`, () => kvBytes(`${arch}.feed_forward_length`, 4, 0), "0"],
        [`${arch}.context_length`, () => kvBytes(`${arch}.context_length`, 4, 0), "0"],
        [`${arch}.context_length`, () => kvBytes(`${arch}.context_length`, 4, 0xffffffff), "2^32-1"],
        [`${arch}.context_length`, () => kvBytes(`${arch}.context_length`, 4, 8), "8"],
        [`${arch}.rope.freq_base`, () => kvBytes(`${arch}.rope.freq_base`, 6, pick.one([0, NaN, -1, Infinity])), "0/NaN/-1/Inf"],
        [`${arch}.attention.layer_norm_rms_epsilon`, () => kvBytes(`${arch}.attention.layer_norm_rms_epsilon`, 6, pick.one([0, NaN, -1])), "0/NaN/-1"],
        [`${arch}.rope.scaling.factor`, () => kvBytes(`${arch}.rope.scaling.factor`, 6, pick.one([NaN, -4, 1e30])), "NaN/-4/1e30"],
        [`${arch}.expert_count`, () => kvBytes(`${arch}.expert_count`, 4, 8), "8"],
        [`${arch}.expert_used_count`, () => kvBytes(`${arch}.expert_used_count`, 4, 2), "2"],
        [`${arch}.nextn_predict_layers`, () => kvBytes(`${arch}.nextn_predict_layers`, 4, 5), "5"],
        [`${arch}.rope.scaling.type`, () => kvBytes(`${arch}.rope.scaling.type`, 8, pick.one(["xyz", "yarn", ""])), "xyz/yarn/empty"],
        [`${arch}.rope.dimension_count`, () => kvBytes(`${arch}.rope.dimension_count`, 4, pick.one([0, 7, 1000])), "0/7/1000"],
        [`${arch}.attention.head_count`, () => kvArray(`${arch}.attention.head_count`, 4, [4, 4, 4]), "a per-layer array"],
        ["general.alignment", () => kvBytes("general.alignment", 4, pick.one([0, 3, 1 << 30, 8])), "0/3/2^30/8"],
        ["general.alignment", () => kvBytes("general.alignment", 10, 32), "32 as UINT64"],
        ["general.architecture", () => kvBytes("general.architecture", 8, pick.one(["qwen2", "llama", "", "qwen3moe", "bert"])), "another architecture"],
        ["general.architecture", () => kvBytes("general.architecture", 4, 3), "a number"],
        ["general.architecture", () => null, "removed"],
        ["tokenizer.ggml.model", () => kvBytes("tokenizer.ggml.model", 8, pick.one(["llama", "bert", "t5", "none", "no_vocab", "rwkv", "xyz", ""])), "another tokenizer model"],
        ["tokenizer.ggml.pre", () => kvBytes("tokenizer.ggml.pre", 8, pick.one(["xyz", "llama3", "", "deepseek-llm"])), "another pre-tokenizer"],
        ["tokenizer.ggml.merges", () => kvArray("tokenizer.ggml.merges", 8, pick.one([["", " ", "abc", "a  b"], [], ["Ġ Ġ", "Ġ Ġ"]])), "broken merges"],
        ["tokenizer.ggml.merges", () => kvArray("tokenizer.ggml.merges", 4, [1, 2, 3]), "merges as UINT32"],
        ["tokenizer.ggml.merges", () => null, "removed"],
        ["tokenizer.ggml.tokens", () => null, "removed"],
        ["tokenizer.ggml.token_type", () => null, "removed"],
        ["tokenizer.ggml.add_bos_token", () => kvBytes("tokenizer.ggml.add_bos_token", 4, 7), "7 as UINT32"],
        ["tokenizer.ggml.add_bos_token", () => kvBytes("tokenizer.ggml.add_bos_token", 7, true), "true"],
        ["general.sampling.temp", () => kvBytes("general.sampling.temp", 6, pick.one([NaN, -1, 1e30, Infinity])), "NaN/-1/1e30/Inf"],
        ["general.sampling.top_p", () => kvBytes("general.sampling.top_p", 6, pick.one([NaN, 2, -0.5])), "NaN/2/-0.5"],
        ["general.sampling.top_k", () => kvBytes("general.sampling.top_k", 5, pick.one([-5, 2 ** 31 - 1])), "-5/2^31-1"],
        ["general.sampling.penalty_last_n", () => kvBytes("general.sampling.penalty_last_n", 5, pick.one([-2, -1, 2 ** 31 - 1])), "-2/-1/2^31-1"],
        ["general.sampling.penalty_repeat", () => kvBytes("general.sampling.penalty_repeat", 6, pick.one([0, NaN, -3])), "0/NaN/-3"],
        ["general.file_type", () => kvBytes("general.file_type", 4, pick.one([9999, 0xffffffff])), "unknown"],
      ];
      const [key, make, what] = pick.one(edits);
      const blob = make();
      return { desc: `${key} ${blob ? `= ${what}` : "removed"}`, bytes: withKv(key, blob) };
    }
    case 12: { // chat templates (parse errors, runtime errors, recursion, heavy output) and invalid UTF-8 strings
      const templates = [
        "{% for m in messages %}{{ m.content }}",
        "{{ messages[0].content | no_such_filter }}",
        "{% if %}",
        "{{ raise_exception('refused by the template') }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% for i in range(200000) %}<|im_start|>{% endfor %}",
        "{{ messages }}{{ ''.join }}{{ none.attribute }}",
        "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endfor %}{{- '<|im_start|>assistant\\n' }}",
      ];
      if (pick.chance(0.25)) {
        return { desc: "tokenizer.chat_template = invalid UTF-8", bytes: withKv("tokenizer.chat_template", kvBytes("tokenizer.chat_template", 8, Buffer.from([0x7b, 0x7b, 0xff, 0x7d, 0x7d]))) };
      }
      const t = pick.one(templates);
      return { desc: `tokenizer.chat_template = ${JSON.stringify(t.slice(0, 60))}`, bytes: withKv("tokenizer.chat_template", kvBytes("tokenizer.chat_template", 8, t)) };
    }
    default: { // tensor data: NaN, Inf, random bytes
      const t = tensor();
      const b = copy();
      const start = L.dataOffset + Number(t.offset);
      const next = L.tensors.map((x) => L.dataOffset + Number(x.offset)).filter((o) => o > start).sort((x, y) => x - y)[0] ?? b.length;
      const fill = pick.int(3);
      if (fill === 2) for (let i = start; i < next; i++) b[i] = pick.int(256);
      else {
        const pattern = fill === 0 ? [0x00, 0x00, 0xc0, 0x7f] : [0x00, 0x7c]; // f32 NaN / f16 +Inf (an f16 scale in quantized blocks)
        for (let i = start; i < next; i++) b[i] = pattern[(i - start) % pattern.length];
      }
      return { desc: `${t.name} data filled with ${["NaN (f32 pattern)", "+Inf (f16 pattern)", "random bytes"][fill]}`, bytes: b };
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoint mutations: a function that edits a copy of the checkpoint directory

export interface CheckpointMutant { desc: string; sharded: boolean; apply(dir: string): Promise<void> }

const jsonEdit = (file: string, edit: (j: Record<string, unknown>) => unknown) => async (dir: string) => {
  const path = join(dir, file);
  const j = JSON.parse(await readFile(path, "utf8"));
  const r = edit(j);
  await writeFile(path, typeof r === "string" ? r : JSON.stringify(r === undefined ? j : r));
};

const CONFIG_FIELDS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "architectures", "rope_scaling", "bos_token_id", "eos_token_id", "model_type"];
const BAD_VALUES: [string, unknown][] = [["0", 0], ["-1", -1], ["1.5", 1.5], ["1e9", 1e9], ["2^53+2", 2 ** 53 + 2], ["1e308", 1e308], ["\"64\"", "64"], ["null", null], ["[]", []], ["{}", {}], ["true", true], ["[\"Qwen3ForCausalLM\"]", ["Qwen3ForCausalLM"]], ["{rope_type: yarn, factor: -2}", { rope_type: "yarn", factor: -2, original_max_position_embeddings: "x" }], ["{type: linear, factor: 1e400}", { type: "linear", factor: "Infinity" }]];

export function mutateCheckpoint(pick: Pick): CheckpointMutant {
  const sharded = pick.chance(0.15);
  const st = sharded ? "model-00001-of-00002.safetensors" : "model.safetensors";
  const op = pick.int(12);
  switch (op) {
    case 0: case 1: { // config.json fields: wrong types, ranges, missing
      const field = pick.one(CONFIG_FIELDS);
      if (pick.chance(0.2)) return { desc: `config.json without ${field}`, sharded, apply: jsonEdit("config.json", (j) => { delete j[field]; }) };
      const [label, value] = pick.one(BAD_VALUES);
      return { desc: `config.json ${field} = ${label}`, sharded, apply: jsonEdit("config.json", (j) => { j[field] = value; }) };
    }
    case 2: { // config.json as text: Infinity, broken, deep, not an object
      const text = pick.one([
        ["hidden_size 1e999 (Infinity)", (s: string) => s.replace(/"hidden_size": \d+/, '"hidden_size": 1e999')],
        ["truncated", (s: string) => s.slice(0, s.length >> 1)],
        ["empty", () => ""],
        ["an array", () => "[]"],
        ["a number", () => "5"],
        ["null", () => "null"],
        ["nested 100000 deep", () => `{"a":${"[".repeat(100000)}${"]".repeat(100000)}}`],
        ["BOM", (s: string) => `\ufeff${s}`],
        ["__proto__ key", (s: string) => s.replace("{", '{"__proto__": {"hidden_size": 5},')],
      ] as [string, (s: string) => string][]);
      return { desc: `config.json ${text[0]}`, sharded, apply: async (dir) => writeFile(join(dir, "config.json"), text[1](await readFile(join(dir, "config.json"), "utf8"))) };
    }
    case 3: { // tokenizer.json
      const edits: [string, (j: Record<string, unknown>) => unknown][] = [
        ["model.vocab id negative", (j) => { (j.model as { vocab: Record<string, number> }).vocab["!"] = -5; }],
        ["model.vocab id 1e9", (j) => { (j.model as { vocab: Record<string, number> }).vocab["!"] = 1e9; }],
        ["model.vocab id 1.5", (j) => { (j.model as { vocab: Record<string, number> }).vocab["!"] = 1.5; }],
        ["model.vocab id a string", (j) => { (j.model as { vocab: Record<string, unknown> }).vocab["!"] = "3"; }],
        ["model.vocab duplicate id", (j) => { (j.model as { vocab: Record<string, number> }).vocab["!"] = 1; }],
        ["model.vocab an array", (j) => { (j.model as Record<string, unknown>).vocab = ["a", "b"]; }],
        ["model.vocab missing", (j) => { delete (j.model as Record<string, unknown>).vocab; }],
        ["model missing", (j) => { delete j.model; }],
        ["model.merges numbers", (j) => { (j.model as Record<string, unknown>).merges = [1, 2, 3]; }],
        ["model.merges triples", (j) => { (j.model as Record<string, unknown>).merges = [["a", "b", "c"], [null, 2]]; }],
        ["model.merges a string", (j) => { (j.model as Record<string, unknown>).merges = "a b"; }],
        ["model.merges without spaces", (j) => { (j.model as Record<string, unknown>).merges = ["ab", "", " "]; }],
        ["added_tokens not an array", (j) => { j.added_tokens = { id: 5 }; }],
        ["added_tokens entry null", (j) => { (j.added_tokens as unknown[]).push(null); }],
        ["added_tokens id 5000000", (j) => { (j.added_tokens as { id: number }[])[0].id = 5000000; }],
        ["added_tokens id -3", (j) => { (j.added_tokens as { id: number }[])[0].id = -3; }],
        ["added_tokens content a number", (j) => { (j.added_tokens as { content: unknown }[])[0].content = 42; }],
        ["added_tokens special 'yes'", (j) => { (j.added_tokens as { special: unknown }[])[0].special = "yes"; }],
        ["truncated", (j) => JSON.stringify(j).slice(0, 5000)],
        ["a number", () => "7"],
      ];
      const [label, edit] = pick.one(edits);
      return { desc: `tokenizer.json ${label}`, sharded, apply: jsonEdit("tokenizer.json", edit) };
    }
    case 4: { // tokenizer_config.json and generation_config.json
      const edits: [string, string, (j: Record<string, unknown>) => unknown][] = [
        ["tokenizer_config.json", "chat_template broken Jinja", (j) => { j.chat_template = "{% for m in messages %}{{ m.content }"; }],
        ["tokenizer_config.json", "chat_template unknown tag", (j) => { j.chat_template = "{% frobnicate %}"; }],
        ["tokenizer_config.json", "chat_template a number", (j) => { j.chat_template = 12; }],
        ["tokenizer_config.json", "chat_template a list of named templates", (j) => { j.chat_template = [{ name: "default", template: "{{ messages }}" }, { name: "tool_use", template: 5 }]; }],
        ["tokenizer_config.json", "eos_token a number", (j) => { j.eos_token = 7; }],
        ["tokenizer_config.json", "eos_token an object without content", (j) => { j.eos_token = { text: "<|im_end|>" }; }],
        ["tokenizer_config.json", "eos_token not in the vocabulary", (j) => { j.eos_token = "<|nope|>"; }],
        ["tokenizer_config.json", "pad_token an array", (j) => { j.pad_token = ["a"]; }],
        ["tokenizer_config.json", "add_bos_token 'yes'", (j) => { j.add_bos_token = "yes"; }],
        ["tokenizer_config.json", "not an object", () => "[1,2]"],
        ["generation_config.json", "temperature 'hot'", (j) => { j.temperature = "hot"; }],
        ["generation_config.json", "temperature -1", (j) => { j.temperature = -1; }],
        ["generation_config.json", "top_k 1.5", (j) => { j.top_k = 1.5; }],
        ["generation_config.json", "top_p 7", (j) => { j.top_p = 7; }],
        ["generation_config.json", "top_k 1e300", (j) => { j.top_k = 1e300; }],
        ["generation_config.json", "repetition_penalty 0", (j) => { j.repetition_penalty = 0; }],
        ["generation_config.json", "broken JSON", (j) => JSON.stringify(j).slice(0, 10)],
      ];
      const [file, label, edit] = pick.one(edits);
      return { desc: `${file} ${label}`, sharded, apply: jsonEdit(file, edit) };
    }
    case 5: case 6: { // safetensors header JSON
      const edits: [string, (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>, names: string[]) => void][] = [
        ["dtype F64", (h, n) => { h[pick.one(n)].dtype = "F64"; }],
        ["dtype I8", (h, n) => { h[pick.one(n)].dtype = "I8"; }],
        ["dtype missing", (h, n) => { delete (h[pick.one(n)] as Partial<{ dtype: string }>).dtype; }],
        ["shape []", (h, n) => { h[pick.one(n)].shape = []; }],
        ["shape negative", (h, n) => { h[pick.one(n)].shape[0] = -64; }],
        ["shape 2^40 rows", (h, n) => { h[pick.one(n)].shape[0] = 2 ** 40; }],
        ["shape swapped", (h, n) => { const t = h[pick.one(n)]; t.shape = [...t.shape].reverse(); }],
        ["shape 1.5", (h, n) => { h[pick.one(n)].shape[0] = 1.5; }],
        ["shape a string", (h, n) => { (h[pick.one(n)] as unknown as { shape: unknown }).shape = "64,64"; }],
        ["offsets overlapping", (h, n) => { const a = h[n[0]], b = h[n[1]]; const len = b.data_offsets[1] - b.data_offsets[0]; b.data_offsets = [a.data_offsets[0], a.data_offsets[0] + len]; }],
        ["offsets beyond the file", (h, n) => { const t = h[pick.one(n)]; const len = t.data_offsets[1] - t.data_offsets[0]; t.data_offsets = [1e12, 1e12 + len]; }],
        ["offsets reversed", (h, n) => { const t = h[pick.one(n)]; t.data_offsets = [t.data_offsets[1], t.data_offsets[0]]; }],
        ["offsets short by one", (h, n) => { h[pick.one(n)].data_offsets[1] -= 1; }],
        ["offsets negative", (h, n) => { const t = h[pick.one(n)]; t.data_offsets = [-8, t.data_offsets[1] - t.data_offsets[0] - 8]; }],
        ["offsets strings", (h, n) => { (h[pick.one(n)] as unknown as { data_offsets: unknown }).data_offsets = ["0", "8"]; }],
        ["entry null", (h, n) => { (h as Record<string, unknown>)[pick.one(n)] = null; }],
        ["entry a number", (h, n) => { (h as Record<string, unknown>)[pick.one(n)] = 5; }],
        ["extra tensor", (h) => { h["model.layers.0.mlp.extra.weight"] = { dtype: "F32", shape: [1], data_offsets: [0, 4] }; }],
        ["tensor renamed", (h, n) => { const k = pick.one(n); h[`${k}.renamed`] = h[k]; delete h[k]; }],
        ["__metadata__ garbage", (h) => { (h as Record<string, unknown>).__metadata__ = [1, { x: null }]; }],
      ];
      const [label, edit] = pick.one(edits);
      return {
        desc: `${st} header ${label}`, sharded, apply: async (dir) => {
          const path = join(dir, st);
          const b = await readFile(path);
          const len = Number(b.readBigUInt64LE(0));
          const h = JSON.parse(b.toString("utf8", 8, 8 + len));
          const names = Object.keys(h).filter((k) => k !== "__metadata__");
          edit(h, names);
          const json = Buffer.from(JSON.stringify(h));
          const head = Buffer.alloc(8);
          head.writeBigUInt64LE(BigInt(json.length));
          await writeFile(path, Buffer.concat([head, json, b.subarray(8 + len)]));
        },
      };
    }
    case 7: { // safetensors bytes: header length, truncation, flips
      const what = pick.int(4);
      return {
        desc: `${st} ${["header length edit", "truncated", "header byte flips", "data truncated by one byte"][what]}`, sharded, apply: async (dir) => {
          const path = join(dir, st);
          const b = await readFile(path);
          const len = Number(b.readBigUInt64LE(0));
          if (what === 0) b.writeBigUInt64LE(pick.one([0n, 1n, 2n ** 64n - 1n, BigInt(b.length), BigInt(len + 1), BigInt(len - 1), 2n ** 40n]), 0);
          else if (what === 2) for (let i = 0; i < 1 + pick.int(6); i++) b[8 + pick.int(len)] = pick.one([0x22, 0x7b, 0x7d, 0x5b, 0x2c, 0x00, 0xff, 0x3a, 0x31]);
          const cut = what === 1 ? pick.one([0, 4, 8, 9, 8 + (len >> 1), 8 + len, 8 + len + 100, b.length >> 1]) : what === 3 ? b.length - 1 : b.length;
          await writeFile(path, b.subarray(0, cut));
        },
      };
    }
    case 8: { // shard index
      const edits: [string, (j: Record<string, unknown>) => unknown][] = [
        ["weight_map path traversal", (j) => { const w = j.weight_map as Record<string, string>; const k = Object.keys(w)[0]; w[k] = "../../../../../../etc/passwd"; }],
        ["weight_map absolute path", (j) => { const w = j.weight_map as Record<string, string>; const k = Object.keys(w)[0]; w[k] = "/etc/hostname"; }],
        ["weight_map missing shard", (j) => { const w = j.weight_map as Record<string, string>; const k = Object.keys(w)[0]; w[k] = "model-00009-of-00009.safetensors"; }],
        ["weight_map values numbers", (j) => { const w = j.weight_map as Record<string, unknown>; for (const k of Object.keys(w)) w[k] = 3; }],
        ["weight_map missing", (j) => { delete j.weight_map; }],
        ["weight_map an array", (j) => { j.weight_map = ["model-00001-of-00002.safetensors"]; }],
        ["weight_map drops a tensor", (j) => { const w = j.weight_map as Record<string, string>; delete w[Object.keys(w)[3]]; }],
      ];
      const [label, edit] = pick.one(edits);
      return { desc: `model.safetensors.index.json ${label}`, sharded: true, apply: jsonEdit("model.safetensors.index.json", edit) };
    }
    case 9: { // missing files
      const file = pick.one(["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", st]);
      return { desc: `${file} missing`, sharded, apply: (dir) => rm(join(dir, file)) };
    }
    case 10: { // vocab_size against the tokenizer and the embedding
      const v = pick.one([COMPACT_VOCAB - 100, COMPACT_VOCAB + 1, 1005, 1004, 1]);
      return { desc: `config.json vocab_size ${v} (embedding has ${COMPACT_VOCAB} rows)`, sharded, apply: jsonEdit("config.json", (j) => { j.vocab_size = v; }) };
    }
    default: { // several config fields at once, consistent with each other but extreme
      const layers = pick.one([0, 1, 3, 100000, 2 ** 31]);
      return { desc: `config.json num_hidden_layers ${layers}`, sharded, apply: jsonEdit("config.json", (j) => { j.num_hidden_layers = layers; }) };
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The child: runs one case at a time for the parent

interface Task { id: number; kind: "gguf" | "checkpoint"; path: string; out?: string; type?: string; validate?: boolean }
interface Reply { id: number; ok: boolean; stage?: string; code?: string; message?: string; detail?: string }

/**
 * The checks of src/validate-checkpoint.ts where the converter is to call them (config.json, tokenizer.json,
 * tokenizer_config.json, generation_config.json, the shard index), on files that parse as JSON; files that are
 * missing or not JSON are left to the converter's own errors.
 */
async function validateCheckpointFiles(dir: string) {
  const v = await import("../src/validate-checkpoint.js");
  const json = async (f: string) => {
    try {
      return { value: JSON.parse(await readFile(join(dir, f), "utf8")) as unknown };
    } catch {
      return undefined;
    }
  };
  const config = await json("config.json");
  if (!config) return;
  v.validateConfig(config.value);
  const vocab = (config.value as { vocab_size: number }).vocab_size;
  const tokenizer = await json("tokenizer.json");
  if (tokenizer) v.validateTokenizer(tokenizer.value, vocab);
  const tokenizerConfig = await json("tokenizer_config.json");
  if (tokenizerConfig) v.validateTokenizerConfig(tokenizerConfig.value);
  const generation = await json("generation_config.json");
  if (generation) v.validateGenerationConfig(generation.value, vocab);
  const index = await json("model.safetensors.index.json");
  if (index) v.validateShardIndex(index.value);
}

async function child() {
  const { loadModel, convert, readGguf } = await import("../src/index.js");
  const useModel = async (path: string) => {
    const model = await loadModel(path, { contextSize: 64, threads: 1, parallel: 2, batchSize: 32 });
    try {
      const r = await model.generate("Hello, world", { maxTokens: 3, seed: 1 });
      model.detokenize(model.tokenize("héllo <|im_end|>", { special: true }));
      let chat = "chat ok";
      try {
        for await (const _ of model.chat([{ role: "user", content: "hi" }], { maxTokens: 2, seed: 2 })) { /* drain */ }
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code !== "ERR_CHAT_TEMPLATE") throw err;
        chat = `chat ${code}`;
      }
      return `${r.tokens.length} tokens; ${chat}`;
    } finally {
      await model.dispose();
    }
  };
  process.on("message", async (task: Task) => {
    let reply: Reply;
    let stage = task.kind === "gguf" ? "load" : "convert";
    try {
      if (task.kind === "gguf") {
        reply = { id: task.id, ok: true, detail: await useModel(task.path) };
      } else {
        if (task.validate) await validateCheckpointFiles(task.path);
        await convert(task.path, { out: task.out!, type: task.type as never, threads: 1 });
        stage = "load";
        await readGguf(task.out!);
        reply = { id: task.id, ok: true, detail: await useModel(task.out!) };
      }
    } catch (err) {
      const e = err as Error & { code?: string };
      reply = { id: task.id, ok: false, stage, code: typeof e?.code === "string" ? e.code : undefined, message: String(e?.message ?? err).slice(0, 300), detail: e?.name };
    }
    process.send!(reply);
  });
  process.send!({ id: 0, ok: true, detail: "ready" });
}

// ---------------------------------------------------------------------------------------------------------------
// The parent

export type Outcome = "loaded" | "error" | "uncoded" | "crash" | "hang";
export interface CaseResult { kind: "gguf" | "checkpoint"; index: number; desc: string; outcome: Outcome; code?: string; message?: string; signal?: string | null; exitCode?: number | null; stderr?: string; leftovers?: string[]; badOutput?: boolean; input?: string }

class ChildRunner {
  private proc: ChildProcess | undefined;
  private stderr = "";
  private served = 0;
  private pending: { resolve: (r: Reply) => void; reject: (e: { signal: string | null; code: number | null }) => void } | undefined;
  private ready: Promise<void> | undefined;

  private start() {
    this.stderr = "";
    this.served = 0;
    const proc = fork(fileURLToPath(import.meta.url), ["--child"], { execArgv: ["--import", "tsx"], stdio: ["ignore", "ignore", "pipe", "ipc"], cwd: root });
    this.proc = proc;
    proc.stderr!.on("data", (d: Buffer) => { this.stderr = (this.stderr + d.toString()).slice(-4000); });
    this.ready = new Promise<void>((resolve, reject) => {
      proc.once("message", () => resolve());
      proc.once("exit", (code, signal) => reject(new Error(`the fuzz child exited before it was ready (code ${code}, signal ${signal}): ${this.stderr}`)));
    });
    proc.on("message", (r: Reply) => { if (r.id !== 0) { const p = this.pending; this.pending = undefined; p?.resolve(r); } });
    proc.on("exit", (code, signal) => {
      if (this.proc === proc) this.proc = undefined;
      const p = this.pending; this.pending = undefined;
      p?.reject({ signal, code });
    });
  }

  async run(task: Task, timeoutMs: number): Promise<{ reply?: Reply; crash?: { signal: string | null; code: number | null; stderr: string }; hang?: boolean }> {
    if (!this.proc || this.served >= 250) {
      await this.stop();
      this.start();
    }
    await this.ready;
    this.served++;
    const proc = this.proc!;
    this.stderr = "";
    let timer: NodeJS.Timeout | undefined;
    try {
      const reply = await new Promise<Reply>((resolve, reject) => {
        this.pending = { resolve, reject };
        timer = setTimeout(() => reject("hang"), timeoutMs);
        proc.send(task);
      });
      return { reply };
    } catch (e) {
      if (e === "hang") {
        this.pending = undefined;
        proc.kill("SIGKILL");
        await new Promise((r) => (proc.exitCode !== null || proc.signalCode !== null ? r(null) : proc.once("exit", r)));
        this.proc = undefined;
        return { hang: true };
      }
      const { signal, code } = e as { signal: string | null; code: number | null };
      return { crash: { signal, code, stderr: this.stderr } };
    } finally {
      clearTimeout(timer);
    }
  }

  async stop() {
    const proc = this.proc;
    this.proc = undefined;
    if (!proc) return;
    proc.kill("SIGKILL");
    if (proc.exitCode === null && proc.signalCode === null) await new Promise((r) => proc.once("exit", r));
  }
}

export interface FuzzOptions {
  gguf: number;
  checkpoint: number;
  seed: number;
  /** Per-case limit: over it the case is a hang. Default 30 s. */
  timeoutMs?: number;
  /** Extra GGUF bases (e.g. a full-vocabulary conversion); each case picks one base, the compact one 9 times in 10. */
  ggufBases?: string[];
  /** Run the checks of src/validate-checkpoint.ts before each conversion, as the converter is to call them. */
  validateCheckpoints?: boolean;
  /** Cases whose description matches are skipped and counted as known-open (tests keep the CI budget; the script
   * runs everything). */
  knownOpen?: RegExp[];
  /** Replay only these cases. */
  only?: { kind: "gguf" | "checkpoint"; index: number }[];
  /** Keep the inputs of crashes, hangs, leftovers and errors without a code here. */
  keepDir?: string;
  onCase?: (r: CaseResult, done: number, total: number) => void;
}

export interface FuzzSummary {
  seed: number;
  seconds: number;
  /** Cases skipped as known-open (options.knownOpen), by description. */
  skipped: string[];
  gguf: { tried: number; loaded: number; errors: Record<string, number>; uncoded: number; crashes: number; hangs: number };
  checkpoint: { tried: number; converted: number; errors: Record<string, number>; uncoded: number; crashes: number; hangs: number; leftovers: number; badOutputs: number };
  /** Crashes, hangs, errors without a code, leftovers and converted files that do not load. */
  findings: CaseResult[];
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzSummary> {
  const started = performance.now();
  const timeoutMs = o.timeoutMs ?? 30_000;
  const work = join(tmpdir(), `qwen-gguf-fuzz-${process.pid}-${Date.now()}`);
  await mkdir(work, { recursive: true });
  const compact = await compactGguf(FUZZ_CACHE);
  const bases = await Promise.all([compact, ...(o.ggufBases ?? [])].map(async (p) => { const bytes = await readFile(p); return { path: p, bytes, layout: ggufLayout(bytes) }; }));
  const ckpts = { single: await compactCheckpoint(FUZZ_CACHE, 1), sharded: await compactCheckpoint(FUZZ_CACHE, 2) };
  const summary: FuzzSummary = {
    seed: o.seed, seconds: 0, skipped: [],
    gguf: { tried: 0, loaded: 0, errors: {}, uncoded: 0, crashes: 0, hangs: 0 },
    checkpoint: { tried: 0, converted: 0, errors: {}, uncoded: 0, crashes: 0, hangs: 0, leftovers: 0, badOutputs: 0 },
    findings: [],
  };
  const cases: { kind: "gguf" | "checkpoint"; index: number }[] = o.only ?? [
    ...Array.from({ length: o.gguf }, (_, index) => ({ kind: "gguf" as const, index })),
    ...Array.from({ length: o.checkpoint }, (_, index) => ({ kind: "checkpoint" as const, index })),
  ];
  const runner = new ChildRunner();
  const keep = async (r: CaseResult, input: string) => {
    if (!o.keepDir) return;
    await mkdir(o.keepDir, { recursive: true });
    const dest = join(o.keepDir, `${r.kind}-seed${o.seed}-case${r.index}${r.kind === "gguf" ? ".gguf" : ""}`);
    await cp(input, dest, { recursive: true });
    r.input = dest;
  };
  try {
    let done = 0;
    for (const c of cases) {
      const pick = new Pick(caseSeed(o.seed, c.kind, c.index));
      let result: CaseResult;
      if (c.kind === "gguf") {
        const base = bases.length > 1 && pick.chance(0.1) ? bases[1 + pick.int(bases.length - 1)] : bases[0];
        const m = mutateGguf(base.bytes, base.layout, pick);
        if (o.knownOpen?.some((re) => re.test(m.desc))) {
          summary.skipped.push(`gguf:${c.index} ${m.desc}`);
          continue;
        }
        const path = join(work, `case-${c.index}.gguf`);
        await writeFile(path, m.bytes);
        const desc = base === bases[0] ? m.desc : `[${base.path.split("/").pop()}] ${m.desc}`;
        const r = await runner.run({ id: c.index + 1, kind: "gguf", path }, timeoutMs);
        result = classify("gguf", c.index, desc, r);
        const s = summary.gguf;
        s.tried++;
        tally(s, result);
        if (result.outcome === "loaded") s.loaded++;
        if (result.outcome !== "loaded" && result.outcome !== "error") await keep(result, path);
        await rm(path, { force: true });
      } else {
        const m = mutateCheckpoint(pick);
        if (o.knownOpen?.some((re) => re.test(m.desc))) {
          summary.skipped.push(`checkpoint:${c.index} ${m.desc}`);
          continue;
        }
        const dir = join(work, `ckpt-${c.index}`);
        const outDir = join(work, `out-${c.index}`);
        await cp(m.sharded ? ckpts.sharded : ckpts.single, dir, { recursive: true });
        await mkdir(outDir);
        await m.apply(dir);
        const type = pick.one(["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q6_k", "mixed"]);
        const r = await runner.run({ id: c.index + 1, kind: "checkpoint", path: dir, out: join(outDir, "out.gguf"), type, validate: o.validateCheckpoints }, timeoutMs * 2);
        result = classify("checkpoint", c.index, `${m.desc} (→ ${type})`, r);
        const s = summary.checkpoint;
        s.tried++;
        tally(s, result);
        const left = await readdir(outDir);
        const expected = result.outcome === "loaded" || r.reply?.stage === "load";
        if (result.outcome === "loaded") s.converted++;
        else if (expected) {
          // converted, but the GGUF it wrote is refused: the converter let a bad checkpoint through
          result.badOutput = true;
          s.badOutputs++;
        }
        const stray = left.filter((f) => !(expected && f === "out.gguf"));
        if (stray.length && result.outcome !== "crash" && result.outcome !== "hang") {
          result.leftovers = stray;
          s.leftovers++;
        }
        if (result.outcome !== "loaded" && result.outcome !== "error" || result.leftovers || result.badOutput) await keep(result, dir);
        await rm(dir, { recursive: true, force: true });
        await rm(outDir, { recursive: true, force: true });
      }
      if (result.outcome !== "loaded" && result.outcome !== "error" || result.leftovers || result.badOutput) summary.findings.push(result);
      o.onCase?.(result, ++done, cases.length);
    }
  } finally {
    await runner.stop();
    await rm(work, { recursive: true, force: true });
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

function classify(kind: "gguf" | "checkpoint", index: number, desc: string, r: Awaited<ReturnType<ChildRunner["run"]>>): CaseResult {
  if (r.hang) return { kind, index, desc, outcome: "hang" };
  if (r.crash) return { kind, index, desc, outcome: "crash", signal: r.crash.signal, exitCode: r.crash.code, stderr: r.crash.stderr.slice(-1500) };
  const reply = r.reply!;
  if (reply.ok) return { kind, index, desc, outcome: "loaded" };
  if (!reply.code) return { kind, index, desc, outcome: "uncoded", message: `${reply.detail}: ${reply.message}` };
  return { kind, index, desc, outcome: "error", code: reply.code, message: reply.message };
}

function tally(s: { errors: Record<string, number>; uncoded: number; crashes: number; hangs: number }, r: CaseResult) {
  if (r.outcome === "error") s.errors[r.code!] = (s.errors[r.code!] ?? 0) + 1;
  if (r.outcome === "uncoded") s.uncoded++;
  if (r.outcome === "crash") s.crashes++;
  if (r.outcome === "hang") s.hangs++;
}

export function formatSummary(s: FuzzSummary): string {
  const errs = (e: Record<string, number>) => Object.entries(e).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
  const lines = [
    `seed ${s.seed}, ${s.seconds.toFixed(0)} s${s.skipped.length ? `, ${s.skipped.length} known-open cases skipped` : ""}`,
    `GGUF files: ${s.gguf.tried} tried, ${s.gguf.loaded} loaded and generated, clean errors: ${errs(s.gguf.errors)}; errors without a code ${s.gguf.uncoded}; crashes ${s.gguf.crashes}; hangs ${s.gguf.hangs}`,
    `checkpoints: ${s.checkpoint.tried} tried, ${s.checkpoint.converted} converted and loaded, clean errors: ${errs(s.checkpoint.errors)}; errors without a code ${s.checkpoint.uncoded}; crashes ${s.checkpoint.crashes}; hangs ${s.checkpoint.hangs}; leftovers ${s.checkpoint.leftovers}; converted but refused at load ${s.checkpoint.badOutputs}`,
  ];
  for (const f of s.findings) {
    lines.push(`  ${f.outcome.toUpperCase()}${f.leftovers ? ` + leftovers ${f.leftovers.join(",")}` : ""}${f.badOutput ? " (bad output)" : ""} ${f.kind}:${f.index} ${f.desc}${f.code ? ` → ${f.code}` : ""}${f.message ? `: ${f.message}` : ""}${f.signal || f.exitCode != null ? ` (signal ${f.signal}, exit ${f.exitCode})` : ""}${f.input ? ` [input ${f.input}]` : ""}`);
    if (f.stderr) lines.push(f.stderr.split("\n").slice(-12).map((l) => `      ${l}`).join("\n"));
  }
  return lines.join("\n");
}

async function main(argv: string[]) {
  const arg = (name: string, fallback: string) => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1] : fallback; };
  const only = argv.includes("--only") ? [arg("only", "")].flatMap((s) => s.split(",")).map((s) => { const [kind, index] = s.split(":"); return { kind: kind as "gguf" | "checkpoint", index: Number(index) }; }) : undefined;
  const seed = Number(arg("seed", String(Date.now() % 100000)));
  const ggufBases: string[] = [];
  if (!argv.includes("--compact-only")) ggufBases.push(await fullVocabGguf(FUZZ_CACHE));
  const summary = await runFuzz({
    gguf: Number(arg("gguf", "200")), checkpoint: Number(arg("checkpoint", "100")), seed, timeoutMs: Number(arg("timeout", "30000")), only, ggufBases,
    validateCheckpoints: argv.includes("--validate-checkpoints"),
    keepDir: join(FUZZ_CACHE, "findings"),
    onCase: (r, done, total) => {
      if (!argv.includes("--json") && (done % 50 === 0 || (r.outcome !== "loaded" && r.outcome !== "error") || only)) {
        process.stderr.write(`[${done}/${total}] ${r.kind}:${r.index} ${r.outcome}${r.code ? ` ${r.code}` : ""} — ${r.desc}${r.message && only ? `: ${r.message}` : ""}\n`);
      }
    },
  });
  console.log(argv.includes("--json") ? JSON.stringify(summary, null, 2) : formatSummary(summary));
  process.exitCode = summary.gguf.crashes + summary.gguf.hangs + summary.checkpoint.crashes + summary.checkpoint.hangs + summary.checkpoint.leftovers > 0 ? 1 : 0;
}

if (process.argv.includes("--child")) await child();
else if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main(process.argv.slice(2));
