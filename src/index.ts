export { loadModel, estimateMemory, Model, SUPPORTED_ARCHITECTURES, KV_CACHE_TYPES } from "./model.js";
export type { LoadModelOptions, SamplingOptions, StreamOptions, ChatOptions, GenerationResult, FinishReason, ModelInfo, MemoryEstimate, KvCacheType } from "./model.js";
export type { ChatMessage, ChatPiece } from "./chat.js";
export { QwenError } from "./errors.js";
export type { QwenErrorCode } from "./errors.js";
export { readGguf } from "./gguf.js";
export { versions } from "./versions.js";
