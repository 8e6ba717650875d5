import { loadNative } from "./native.js";

// The native binary is loaded at import: a CPU or platform without a fitting binary fails here, with one error that
// names what is missing and how to fix it.
loadNative();

export { loadModel, estimateMemory, Model, ChatSession, SUPPORTED_ARCHITECTURES, KV_CACHE_TYPES } from "./model.js";
export type {
  LoadModelOptions, SamplingOptions, StreamOptions, ChatOptions, ChatSessionOptions, ClassifyOptions, ClassifyResult, ModelInfo, ModelStats, MemoryEstimate, KvCacheType,
} from "./model.js";
export type { GenerationResult, GenerationTimings, FinishReason, Piece, TokenLogprob, TokenAlternative } from "./generation.js";
export { jsonSchemaToGbnf } from "./grammar/json-schema.js";
export { pull, resolveModel, removeModel, listModels, modelsDir, isReference, parseReference } from "./pull/index.js";
export type { PullOptions, PullProgress, PullResult, ResolveOptions, ModelEntry, Reference } from "./pull/index.js";
export type { ToolCall, ToolChoice, ToolDefinition } from "./tools.js";
export type { ChatMessage, ChatPiece } from "./chat.js";
export { QwenError } from "./errors.js";
export type { QwenErrorCode } from "./errors.js";
export { readGguf } from "./gguf.js";
export { versions } from "./versions.js";
export { convert } from "./convert/convert.js";
export type { ConvertOptions, ConvertResult, ConvertProgress } from "./convert/convert.js";
export { OUTPUT_TYPES } from "./convert/plan.js";
export type { OutputType } from "./convert/plan.js";
