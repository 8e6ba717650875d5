/** Every error qwen-gguf throws on purpose carries a stable `code` that names the problem. */
export type QwenErrorCode =
  | "ERR_MODEL_NOT_FOUND"
  | "ERR_NOT_GGUF"
  | "ERR_GGUF_TRUNCATED"
  | "ERR_GGUF_INVALID"
  | "ERR_UNSUPPORTED_ARCHITECTURE"
  | "ERR_MODEL_LOAD"
  | "ERR_CONTEXT_CREATE"
  | "ERR_CONTEXT_OVERFLOW"
  | "ERR_DECODE"
  | "ERR_DISPOSED"
  | "ERR_INVALID_STATE"
  | "ERR_BUSY"
  | "ERR_INVALID_ARG_TYPE"
  | "ERR_INVALID_ARG_VALUE"
  | "ERR_OUT_OF_RANGE"
  | "ERR_NATIVE_LOAD"
  | "ERR_CPU_UNSUPPORTED"
  | "ERR_CHAT_TEMPLATE"
  | "ERR_SCHEMA_UNSUPPORTED"
  | "ERR_CHECKPOINT_INVALID"
  | "ERR_CHECKPOINT_MISSING_FILE"
  | "ERR_SAFETENSORS_INVALID"
  | "ERR_TENSOR_MISSING"
  | "ERR_TENSOR_UNEXPECTED"
  | "ERR_TENSOR_SHAPE"
  | "ERR_UNSUPPORTED_DTYPE"
  | "ERR_VOCAB_SIZE"
  | "ERR_OUTPUT_EXISTS"
  | "ERR_OUTPUT_WRITE"
  | "ERR_QUEUE_FULL"
  | "ERR_CONTEXT_FULL"
  | "ERR_GRAMMAR"
  | "ERR_ENGINE"
  // pull (src/pull): references, the Hugging Face Hub, downloads, the models directory
  | "ERR_INVALID_REFERENCE"
  | "ERR_MODEL_NOT_PULLED"
  | "ERR_HUB_OFFLINE"
  | "ERR_REPO_NOT_FOUND"
  | "ERR_HUB_FILE_NOT_FOUND"
  | "ERR_REPO_GATED"
  | "ERR_HUB_UNAUTHORIZED"
  | "ERR_HUB_NO_WEIGHTS"
  | "ERR_HUB_RESPONSE"
  | "ERR_NETWORK"
  | "ERR_CHECKSUM_MISMATCH"
  | "ERR_DISK_FULL"
  | "ABORT_ERR";

export class QwenError extends Error {
  readonly code: QwenErrorCode;
  constructor(code: QwenErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = code === "ABORT_ERR" ? "AbortError" : "QwenError";
    this.code = code;
  }
}

/** Turns an error thrown by the native addon (a plain Error with a `code`) into a QwenError. */
export function fromNative(err: unknown): QwenError {
  if (err instanceof QwenError) return err;
  const e = err as { code?: string; message?: string };
  return new QwenError((e?.code as QwenErrorCode) ?? "ERR_DECODE", e?.message ?? String(err), { cause: err });
}

export function abortError(signal?: AbortSignal): QwenError {
  const reason = signal?.reason;
  return new QwenError("ABORT_ERR", reason instanceof Error ? `aborted: ${reason.message}` : "the operation was aborted", { cause: reason });
}
