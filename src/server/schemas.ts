/** JSON schemas of the request bodies: Fastify validates with them (no type coercion), so a wrong type is a 400. */

/** null is accepted as "not given" (clients send it); a type list keeps ajv's message to the point ("must be <= 1"). */
const nullable = (schema: Record<string, unknown>) =>
  typeof schema.type === "string" ? { ...schema, type: [schema.type, "null"] } : { anyOf: [schema, { type: "null" }] };
const num = nullable({ type: "number" });
const int = (minimum?: number, maximum?: number) => nullable({ type: "integer", ...(minimum !== undefined && { minimum }), ...(maximum !== undefined && { maximum }) });
const bool = nullable({ type: "boolean" });
const stop = nullable({ anyOf: [{ type: "string" }, { type: "array", items: { type: "string" } }] });

/** Sampling fields shared by chat, completions and the seeds' /generate. */
const sampling = {
  model: nullable({ type: "string" }),
  temperature: nullable({ type: "number", minimum: 0 }),
  top_p: nullable({ type: "number", minimum: 0, maximum: 1 }),
  top_k: int(0),
  min_p: nullable({ type: "number", minimum: 0, maximum: 1 }),
  max_tokens: int(1),
  stop,
  seed: int(),
  presence_penalty: num,
  frequency_penalty: num,
  repeat_penalty: nullable({ type: "number", exclusiveMinimum: 0 }),
  logit_bias: nullable({ type: "object", propertyNames: { pattern: "^[0-9]+$" }, additionalProperties: { type: "number", minimum: -100, maximum: 100 } }),
  n: int(1),
  stream: bool,
  stream_options: nullable({ type: "object", properties: { include_usage: bool } }),
  grammar: nullable({ type: "string" }),
  ignore_eos: bool,
};

const contentPart = {
  type: "object",
  required: ["type"],
  properties: { type: { type: "string" }, text: { type: "string" } },
};

const message = {
  type: "object",
  required: ["role"],
  properties: {
    role: { type: "string", enum: ["system", "developer", "user", "assistant", "tool"] },
    content: { anyOf: [{ type: "string" }, { type: "array", items: contentPart }, { type: "null" }] },
    name: { type: "string" },
    tool_call_id: { type: "string" },
    tool_calls: nullable({
      type: "array",
      items: {
        type: "object", required: ["function"],
        properties: {
          id: { type: "string" }, type: { type: "string" },
          function: { type: "object", required: ["name"], properties: { name: { type: "string" }, arguments: { type: "string" } } },
        },
      },
    }),
    reasoning_content: nullable({ type: "string" }),
  },
};

const tool = {
  type: "object",
  required: ["type", "function"],
  properties: {
    type: { type: "string", enum: ["function"] },
    function: {
      type: "object", required: ["name"],
      properties: { name: { type: "string" }, description: { type: "string" }, parameters: { type: "object" }, strict: bool },
    },
  },
};

export const chatCompletionBody = {
  type: "object",
  required: ["messages"],
  properties: {
    ...sampling,
    messages: { type: "array", minItems: 1, items: message },
    max_completion_tokens: int(1),
    logprobs: bool,
    top_logprobs: int(0, 20),
    response_format: nullable({
      type: "object", required: ["type"],
      properties: {
        type: { type: "string", enum: ["text", "json_object", "json_schema"] },
        json_schema: { type: "object", properties: { name: { type: "string" }, schema: { type: "object" }, strict: bool } },
      },
    }),
    tools: nullable({ type: "array", items: tool }),
    tool_choice: nullable({
      anyOf: [
        { type: "string", enum: ["none", "auto", "required"] },
        { type: "object", required: ["type", "function"], properties: { type: { type: "string", enum: ["function"] }, function: { type: "object", required: ["name"], properties: { name: { type: "string" } } } } },
      ],
    }),
    chat_template_kwargs: nullable({ type: "object", properties: { enable_thinking: bool } }),
    thinking: bool,
    reasoning_budget: int(-1),
  },
};

export const completionBody = {
  type: "object",
  required: ["prompt"],
  properties: {
    ...sampling,
    prompt: { anyOf: [{ type: "string" }, { type: "array", items: { type: "string" } }, { type: "array", items: { type: "integer" } }] },
    logprobs: int(0, 20),
    echo: bool,
    suffix: nullable({ type: "string" }),
    best_of: int(1),
  },
};

/** Seed 001's shape, with Hugging Face's names (max_new_tokens, repetition_penalty, do_sample). */
export const generateBody = {
  type: "object",
  required: ["prompt"],
  properties: {
    ...sampling,
    prompt: { type: "string" },
    max_new_tokens: int(1),
    repetition_penalty: nullable({ type: "number", exclusiveMinimum: 0 }),
    do_sample: bool,
    thinking: bool,
    raw: bool,
    system: nullable({ type: "string" }),
  },
};

/** Query strings are text; bodies are validated without coercion, so the numbers here are patterns, parsed by the route. */
const intText = { type: "string", pattern: "^-?[0-9]+$" };
const numText = { type: "string", pattern: "^-?[0-9]+(\\.[0-9]+)?$" };
export const streamQuery = {
  type: "object",
  required: ["q"],
  properties: {
    q: { type: "string", minLength: 1 },
    max_new_tokens: intText,
    temperature: numText,
    top_p: numText,
    top_k: intText,
    seed: intText,
    thinking: { type: "string", enum: ["true", "false", "1", "0"] },
  },
};

export const classifyBody = {
  type: "object",
  required: ["input", "labels"],
  properties: {
    model: nullable({ type: "string" }),
    input: { anyOf: [{ type: "string" }, { type: "array", items: { type: "string" }, minItems: 1 }] },
    labels: { type: "array", items: { type: "string", minLength: 1 }, minItems: 2 },
    instruction: nullable({ type: "string" }),
  },
};
