/**
 * Hugging Face checkpoint directory → GGUF in one streaming pass: tensors are read a bounded block of rows at a
 * time, converted to float32, quantized by ggml's own routines in the addon (multi-threaded) and appended to a
 * temporary file that is renamed over the output only when complete.
 */
import { existsSync } from "node:fs";
import { open, rename, statfs, unlink } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { abortError, QwenError } from "../errors.js";
import { encodeGgufHeader, GGUF_DEFAULT_ALIGNMENT, GgmlType, ggmlTypeName, tensorBytes } from "../gguf.js";
import { native } from "../native.js";
import { checkBool, checkFunction, checkInt, checkOneOf, checkSignal, checkString, checkStringList, optionalObject } from "../validate.js";
import { buildMetadata, type TokenizerFiles } from "./metadata.js";
import { fileTypeOf, OUTPUT_TYPES, parseConfig, parseTensorTypeOverride, planTensors, type OutputType } from "./plan.js";
import { readCheckpointTensors, TensorReader } from "./safetensors.js";
import { DirectorySource, type ByteRange, type CheckpointSource } from "./source.js";
import { validateConfig, validateGenerationConfig, validateTokenizer, validateTokenizerConfig } from "../validate-checkpoint.js";

export interface ConvertProgress {
  /** Tensor being written (GGUF name). */
  tensor: string;
  index: number;
  count: number;
  bytesDone: number;
  bytesTotal: number;
}

export interface ConvertOptions {
  /** Output GGUF path. Required unless `dryRun`. */
  out?: string;
  /** Output type: f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k or mixed. Default: "f16". */
  type?: OutputType;
  /** llama-quantize style overrides "pattern=type" (regex searched in the GGUF tensor name; the first match wins). */
  tensorTypes?: string[];
  /** Quantization threads. Default: the number of available CPUs. */
  threads?: number;
  /** Replace an existing output file. Default: false. */
  force?: boolean;
  /** Only plan: return each tensor's type and size, write nothing. Default: false. */
  dryRun?: boolean;
  /** general.name. Default: the checkpoint directory's (or repository's) name. */
  name?: string;
  onProgress?: (p: ConvertProgress) => void;
  signal?: AbortSignal;
}

export interface ConvertResult {
  out?: string;
  type: OutputType;
  architecture: string;
  tensors: { name: string; type: string; dims: number[]; bytes: number }[];
  /** Bytes of the whole file (header + data). */
  bytes: number;
  seconds: number;
}

const CHUNK_ELEMENTS = 8 * 1024 * 1024; // 8M values per block (16 MB of BF16): bounds memory whatever the tensor size
const SOURCE_TYPE = { F32: GgmlType.F32, F16: GgmlType.F16, BF16: GgmlType.BF16 } as const;

async function readJson(source: CheckpointSource, file: string, required: boolean): Promise<Record<string, unknown> | undefined> {
  const bytes = await source.readFile(file);
  if (!bytes) {
    if (!required) return undefined;
    throw new QwenError("ERR_CHECKPOINT_MISSING_FILE", `${source.describe(file)} is missing`);
  }
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch (err) {
    throw new QwenError("ERR_CHECKPOINT_INVALID", `${source.describe(file)} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

/** Fails with ERR_DISK_FULL when the file system holding `dir` has less than `bytes` available. */
export async function checkFreeSpace(dir: string, bytes: number, what: string): Promise<void> {
  let free: number;
  try {
    const s = await statfs(dir);
    free = s.bavail * s.bsize;
  } catch {
    return; // no statfs here (or no such directory yet): the write itself reports a full disk
  }
  if (free < bytes) {
    throw new QwenError("ERR_DISK_FULL", `${what} needs ${(bytes / 1e9).toFixed(2)} GB but only ${(free / 1e9).toFixed(2)} GB is free in ${dir}`);
  }
}

/** Converts a checkpoint directory on disk. */
export async function convert(dir: string, options: ConvertOptions = {}): Promise<ConvertResult> {
  checkString("dir", dir);
  return convertCheckpoint(new DirectorySource(resolve(dir)), options);
}

/** Internal options of convertCheckpoint (used by pull). */
export interface CheckpointConvertOptions extends ConvertOptions {
  /** Called with every chunk written to the output, in file order (to hash it on the way). */
  onWrite?: (chunk: Buffer) => void;
}

/** Converts from any checkpoint source (a directory, or a remote repository read by ranges); closes the source. */
export async function convertCheckpoint(source: CheckpointSource, options: CheckpointConvertOptions = {}): Promise<ConvertResult> {
  try {
    return await convertFrom(source, options);
  } finally {
    await source.close();
  }
}

async function convertFrom(source: CheckpointSource, options: CheckpointConvertOptions): Promise<ConvertResult> {
  const started = performance.now();
  const o = optionalObject<CheckpointConvertOptions>("options", options);
  const onWrite = checkFunction<(chunk: Buffer) => void>("onWrite", o.onWrite);
  const type = checkOneOf("type", o.type, OUTPUT_TYPES, "f16");
  const threads = checkInt("threads", o.threads, availableParallelism(), 1, 1024);
  const force = checkBool("force", o.force, false);
  const dryRun = checkBool("dryRun", o.dryRun, false);
  const signal = checkSignal("signal", o.signal);
  const onProgress = checkFunction<(p: ConvertProgress) => void>("onProgress", o.onProgress);
  const overrides = checkStringList("tensorTypes", o.tensorTypes).map(parseTensorTypeOverride);
  const out = o.out === undefined ? undefined : resolve(checkString("out", o.out));
  if (!dryRun && !out) throw new QwenError("ERR_INVALID_ARG_VALUE", "options.out (the output path) is required");

  const { config, tensors, header, dataBytes } = await planConversion(source, type, overrides, o.name);
  const summary = tensors.map((t) => ({ name: t.name, type: ggmlTypeName(t.type), dims: t.dims, bytes: t.bytes }));
  const result: ConvertResult = { out, type, architecture: config.arch, tensors: summary, bytes: header.length + dataBytes, seconds: 0 };
  if (dryRun) return { ...result, out: undefined, seconds: (performance.now() - started) / 1000 };

  if (existsSync(out!) && !force) throw new QwenError("ERR_OUTPUT_EXISTS", `${out} exists; pass force (--force) to replace it`);
  await checkFreeSpace(dirname(out!), result.bytes, `the output ${out}`);
  const temp = join(dirname(out!), `.${basename(out!)}.${process.pid}.${Date.now()}.tmp`);
  const addon = native();
  const reader = new TensorReader(source);
  // Blocks of at most CHUNK_ELEMENTS values; two buffers each way, reused: one block is read while the other is
  // quantized, and one is quantized while the other is written (each step awaits the one that used the buffer last).
  const blockRows = (t: (typeof tensors)[number]) => Math.max(1, Math.floor(CHUNK_ELEMENTS / t.dims[0]));
  const rowsOf = (t: (typeof tensors)[number]) => t.dims.slice(1).reduce((a, b) => a * b, 1);
  const inBytes = Math.max(...tensors.map((t) => TensorReader.bytes(t.source, t.dims[0], Math.min(blockRows(t), rowsOf(t)))));
  const outBytes = Math.max(...tensors.map((t) => tensorBytes(t.type, [t.dims[0], Math.min(blockRows(t), rowsOf(t))])));
  const inBuffers = [Buffer.allocUnsafeSlow(inBytes), Buffer.allocUnsafeSlow(inBytes)];
  const outBuffers = [Buffer.allocUnsafeSlow(outBytes), Buffer.allocUnsafeSlow(outBytes)];
  if (source.plan) {
    const reads: ByteRange[] = [];
    for (const t of tensors) {
      const rows = rowsOf(t), rowsPerBlock = blockRows(t);
      for (let first = 0; first < rows; first += rowsPerBlock) reads.push(TensorReader.range(t.source, t.dims[0], first, Math.min(rowsPerBlock, rows - first)));
    }
    source.plan(reads);
  }
  let fh;
  try {
    fh = await open(temp, "wx");
  } catch (err) {
    throw new QwenError("ERR_OUTPUT_WRITE", `cannot create ${temp} next to the output: ${(err as Error).message}`, { cause: err });
  }
  let completed = false;
  try {
    onWrite?.(header);
    await fh.write(header);
    let bytesDone = header.length;
    let writing: Promise<unknown> = Promise.resolve();
    let block = 0;
    const padding = Buffer.alloc(GGUF_DEFAULT_ALIGNMENT);
    for (let index = 0; index < tensors.length; index++) {
      const t = tensors[index];
      const rowLength = t.dims[0];
      const rows = rowsOf(t);
      const rowsPerBlock = blockRows(t);
      const read = (first: number, into: Buffer) => {
        const p = reader.readRows(t.source, rowLength, first, Math.min(rowsPerBlock, rows - first), into);
        p.catch(() => undefined); // awaited below; a remote read that fails (or is aborted) while a block is quantized must not go unhandled
        return p;
      };
      let pending = read(0, inBuffers[block % 2]);
      for (let first = 0; first < rows; first += rowsPerBlock, block++) {
        if (signal?.aborted) throw abortError(signal);
        const data = await pending;
        const count = Math.min(rowsPerBlock, rows - first);
        if (first + rowsPerBlock < rows) pending = read(first + rowsPerBlock, inBuffers[(block + 1) % 2]);
        const out = outBuffers[block % 2];
        const bytes = await addon.quantize(t.type, data, SOURCE_TYPE[t.source.dtype], count, rowLength, threads, out);
        reader.release(data);
        onWrite?.(out.subarray(0, bytes));
        await writing;
        writing = fh.write(out, 0, bytes);
        writing.catch(() => undefined); // awaited below; an abort in between must not leave it unhandled
        bytesDone += bytes;
      }
      await writing;
      const pad = (GGUF_DEFAULT_ALIGNMENT - (t.bytes % GGUF_DEFAULT_ALIGNMENT)) % GGUF_DEFAULT_ALIGNMENT;
      if (pad) {
        onWrite?.(padding.subarray(0, pad));
        await fh.write(padding, 0, pad);
      }
      bytesDone += pad;
      onProgress?.({ tensor: t.name, index: index + 1, count: tensors.length, bytesDone, bytesTotal: result.bytes });
    }
    // no fsync: the rename makes the file appear whole or not at all to any process; flushing to the device is
    // the OS's job (llama-quantize does not fsync either), and syncing gigabytes would double the write time
    await fh.close();
    fh = undefined;
    await rename(temp, out!);
    completed = true;
  } catch (err) {
    if (err instanceof QwenError) throw err;
    const e = err as NodeJS.ErrnoException;
    if (e.code === "ENOSPC") throw new QwenError("ERR_DISK_FULL", `writing ${out} failed: the disk is full`, { cause: err });
    throw new QwenError("ERR_OUTPUT_WRITE", `writing ${out} failed: ${e.message}`, { cause: err });
  } finally {
    await fh?.close().catch(() => undefined);
    if (!completed) await unlink(temp).catch(() => undefined);
  }
  return { ...result, seconds: (performance.now() - started) / 1000 };
}

/**
 * Reads the checkpoint's JSON files and tensor headers, plans each tensor's type and encodes the GGUF header. Its own
 * function so the parsed tokenizer (hundreds of thousands of JS strings) is garbage once the header is encoded:
 * every GC during the conversion would otherwise mark it again.
 */
async function planConversion(source: CheckpointSource, type: OutputType, overrides: ReturnType<typeof parseTensorTypeOverride>[], name: string | undefined) {
  // config.json first: an unsupported architecture fails before anything else (for a remote source: any weight) is read
  const rawConfig = await readJson(source, "config.json", true);
  validateConfig(rawConfig);
  const config = parseConfig(rawConfig!);
  // every field the converter reads is checked (types, ranges; the chat template parses) before it is used
  const files: TokenizerFiles = {
    tokenizer: (await readJson(source, "tokenizer.json", true)) as TokenizerFiles["tokenizer"],
    tokenizerConfig: (await readJson(source, "tokenizer_config.json", true))!,
    generationConfig: await readJson(source, "generation_config.json", false),
  };
  validateTokenizer(files.tokenizer, config.vocab);
  validateTokenizerConfig(files.tokenizerConfig);
  if (files.generationConfig) validateGenerationConfig(files.generationConfig, config.vocab);
  const sources = await readCheckpointTensors(source);
  const plan = planTensors(config, sources, { type, overrides });
  const parameters = plan.reduce((n, t) => n + t.dims.reduce((a, b) => a * b, 1), 0);
  const quantized = plan.some((t) => ![GgmlType.F32, GgmlType.F16, GgmlType.BF16].includes(t.type));
  const metadata = buildMetadata(config, files, {
    name: checkString("name", name ?? source.name), fileType: fileTypeOf(type), quantized, parameters,
  });
  const tensors = plan.map((t) => ({ ...t, bytes: tensorBytes(t.type, t.dims) }));
  const { header, dataBytes } = encodeGgufHeader(metadata, tensors);
  return { config, tensors, header, dataBytes };
}
