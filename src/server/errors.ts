/** Every error the server answers has OpenAI's body: `{ error: { message, type, param, code } }`, and a status. */
import type { FastifyError } from "fastify";
import { QwenError } from "../errors.js";

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = status >= 500 ? "server_error" : "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) => new ApiError(400, message, "invalid_request_error", param, code);

/** Model option names → the request field they came from, so messages and `param` speak the API's language. */
const OPTION_FIELDS: Record<string, string> = {
  maxTokens: "max_tokens", temperature: "temperature", topK: "top_k", topP: "top_p", minP: "min_p", repeatPenalty: "repeat_penalty",
  presencePenalty: "presence_penalty", frequencyPenalty: "frequency_penalty", seed: "seed", stop: "stop", logitBias: "logit_bias",
  topLogprobs: "top_logprobs", logprobs: "logprobs", reasoningBudget: "reasoning_budget", jsonSchema: "response_format", grammar: "grammar",
  tools: "tools", toolChoice: "tool_choice", messages: "messages", prompt: "prompt", labels: "labels", instruction: "instruction",
};

/** Seconds a client should wait before retrying when the queue is full. */
export const RETRY_AFTER_SECONDS = 1;

/** Maps anything thrown while serving a request to an ApiError. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof QwenError) {
    const code = err.code as string;
    const lead = /^([A-Za-z]+)(\[\d+\])?\b/.exec(err.message)?.[1];
    const field = lead && OPTION_FIELDS[lead];
    const message = field && lead !== field ? err.message.replace(lead, field) : err.message;
    switch (code) {
      case "ERR_CONTEXT_OVERFLOW":
        return new ApiError(400, message, "invalid_request_error", "messages", "context_length_exceeded");
      case "ERR_INVALID_ARG_TYPE":
      case "ERR_INVALID_ARG_VALUE":
      case "ERR_OUT_OF_RANGE":
      case "ERR_CHAT_TEMPLATE":
      case "ERR_GRAMMAR":
      case "ERR_SCHEMA_UNSUPPORTED":
        return new ApiError(400, message, "invalid_request_error", field ?? null, code === "ERR_CHAT_TEMPLATE" ? "invalid_messages" : "invalid_value");
      case "ERR_QUEUE_FULL":
        return new ApiError(503, `the server is busy: ${message}; retry in ${RETRY_AFTER_SECONDS} s`, "server_error", null, "queue_full", { "retry-after": String(RETRY_AFTER_SECONDS) });
      case "ERR_CONTEXT_FULL": // the shared KV cache is full of running generations: transient, like a full queue
        return new ApiError(503, `the server is busy: ${message}`, "server_error", null, "context_full", { "retry-after": String(RETRY_AFTER_SECONDS) });
      case "ERR_DISPOSED":
        return new ApiError(503, "the server is shutting down", "server_error", null, "shutting_down");
      case "ABORT_ERR":
        return new ApiError(499, "the request was cancelled", "invalid_request_error", null, "cancelled");
      default:
        return new ApiError(500, `${message} (${code})`, "server_error", null, code.toLowerCase());
    }
  }
  const fe = err as FastifyError;
  if (fe && typeof fe === "object" && (fe.validation || fe.code === "FST_ERR_VALIDATION")) {
    const v = fe.validation?.[0];
    let param = v?.instancePath?.replace(/^\//, "").replace(/\//g, ".") || null;
    if (v?.keyword === "required") param = [param, (v.params as { missingProperty?: string }).missingProperty].filter(Boolean).join(".");
    // the first error says what is wrong; a failed anyOf (stop: string or array…) also lists every branch's
    const anyOf = fe.validation?.find((e) => e.keyword === "anyOf" && e.instancePath === v?.instancePath);
    const what = anyOf ? "has a type or shape that is not allowed" : v?.message ?? fe.message;
    const where = v?.keyword === "required" ? (v.instancePath ? `body.${v.instancePath.slice(1).replace(/\//g, ".")}` : "body") : `body.${param ?? ""}`;
    return new ApiError(400, `invalid request: ${where} ${what}`, "invalid_request_error", param, "invalid_type");
  }
  if (fe && typeof fe === "object" && typeof fe.statusCode === "number" && fe.statusCode >= 400 && fe.statusCode < 500) {
    const code = fe.code === "FST_ERR_CTP_BODY_TOO_LARGE" ? "request_too_large"
      : fe.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE" ? "unsupported_media_type"
      : fe.statusCode === 400 ? "invalid_json" : (fe.code ?? null);
    const message = fe.code === "FST_ERR_CTP_BODY_TOO_LARGE" ? `the request body is larger than the server's limit: ${fe.message}`
      : code === "invalid_json" ? `the request body is not valid JSON: ${fe.message}` : fe.message;
    return new ApiError(fe.statusCode, message, "invalid_request_error", null, code);
  }
  return new ApiError(500, `internal error: ${(err as Error)?.message ?? String(err)}`, "server_error", null, "internal_error");
}
