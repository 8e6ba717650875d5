/**
 * Tool calls in OpenAI's shapes over Qwen's own format: the chat template lists the tools and the model answers
 * `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` (one block per call). This module validates tool
 * definitions, builds the grammar that forces calls (tool_choice "required" or a named function) and turns the
 * model's blocks back into OpenAI `tool_calls`, whole or while streaming.
 */
import { randomBytes } from "node:crypto";
import { QwenError } from "./errors.js";
import { MAX_SCHEMA_DEPTH, SchemaConverter, gbnfLiteral } from "./grammar/json-schema.js";

export interface ToolDefinition {
  type: "function";
  function: {
    name: string;
    description?: string;
    /** JSON Schema of the arguments object. Default: any object. */
    parameters?: Record<string, unknown>;
  };
}

export type ToolChoice = "auto" | "none" | "required" | { type: "function"; function: { name: string } };

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; /** JSON text of the arguments object. */ arguments: string };
}

const OPEN = "<tool_call>";
const CLOSE = "</tool_call>";
/** OpenAI's rule for function names. */
const NAME = /^[a-zA-Z0-9_-]{1,64}$/;

const describe = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "an array" : typeof v === "string" ? JSON.stringify(v) : typeof v);

/** Checks tool definitions; throws QwenError naming the tool and the problem. Returns them unchanged. */
const MAX_JSON_DEPTH = 2 * MAX_SCHEMA_DEPTH;

/** How deep objects and arrays nest in `value`, counted without recursion and up to `limit + 1`. */
function nestingDepth(value: unknown, limit: number): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (!v || typeof v !== "object") continue;
    deepest = Math.max(deepest, d);
    if (deepest > limit) return deepest;
    for (const child of Object.values(v)) stack.push([child, d + 1]);
  }
  return deepest;
}

export function validateTools(tools: unknown): ToolDefinition[] {
  if (!Array.isArray(tools)) throw new QwenError("ERR_INVALID_ARG_TYPE", `tools must be an array, got ${describe(tools)}`);
  const seen = new Set<string>();
  tools.forEach((t, i) => {
    const where = `tools[${i}]`;
    if (!t || typeof t !== "object" || Array.isArray(t)) throw new QwenError("ERR_INVALID_ARG_TYPE", `${where} must be an object, got ${describe(t)}`);
    const tool = t as Record<string, unknown>;
    if (tool.type !== "function") throw new QwenError("ERR_INVALID_ARG_VALUE", `${where}.type must be "function", got ${describe(tool.type)}`);
    const fn = tool.function as Record<string, unknown> | undefined;
    if (!fn || typeof fn !== "object" || Array.isArray(fn)) throw new QwenError("ERR_INVALID_ARG_TYPE", `${where}.function must be an object, got ${describe(fn)}`);
    if (typeof fn.name !== "string" || !NAME.test(fn.name)) {
      throw new QwenError("ERR_INVALID_ARG_VALUE", `${where}.function.name must be 1 to 64 letters, digits, _ or -, got ${describe(fn.name)}`);
    }
    if (seen.has(fn.name)) throw new QwenError("ERR_INVALID_ARG_VALUE", `${where}.function.name ${JSON.stringify(fn.name)} is defined twice`);
    seen.add(fn.name);
    if (fn.description !== undefined && typeof fn.description !== "string") {
      throw new QwenError("ERR_INVALID_ARG_TYPE", `${where}.function.description must be a string, got ${describe(fn.description)}`);
    }
    const p = fn.parameters;
    if (p !== undefined) {
      if (!p || typeof p !== "object" || Array.isArray(p)) throw new QwenError("ERR_INVALID_ARG_TYPE", `${where}.function.parameters must be a JSON Schema object, got ${describe(p)}`);
      const type = (p as Record<string, unknown>).type;
      const isObjectSchema = type === "object" || (type === undefined && ("properties" in p || Object.keys(p).length === 0));
      if (!isObjectSchema) throw new QwenError("ERR_INVALID_ARG_VALUE", `${where}.function.parameters must describe an object (type "object"), got type ${describe(type)}`);
      // the schema is rendered into the prompt and converted to a grammar by recursive code: bound its depth here,
      // whatever the tool choice (a schema level is two JSON levels: "properties" then the property)
      if (nestingDepth(p, MAX_JSON_DEPTH) > MAX_JSON_DEPTH) {
        throw new QwenError("ERR_INVALID_ARG_VALUE", `${where}.function.parameters is nested deeper than ${MAX_JSON_DEPTH} JSON levels`);
      }
    }
  });
  return tools as ToolDefinition[];
}

/** Checks a tool_choice against the tools; returns it (default "auto"). */
export function validateToolChoice(choice: unknown, tools: ToolDefinition[]): ToolChoice {
  if (choice === undefined) return "auto";
  if (choice === "auto" || choice === "none" || choice === "required") {
    if (choice === "required" && !tools.length) throw new QwenError("ERR_INVALID_ARG_VALUE", `tool_choice "required" needs at least one tool`);
    return choice;
  }
  const named = choice as { type?: unknown; function?: { name?: unknown } };
  if (named && typeof named === "object" && named.type === "function" && typeof named.function?.name === "string") {
    const name = named.function.name;
    if (!tools.some((t) => t.function.name === name)) {
      throw new QwenError("ERR_INVALID_ARG_VALUE", `tool_choice names the function ${JSON.stringify(name)}, which is not among the tools (${tools.map((t) => t.function.name).join(", ") || "none"})`);
    }
    return { type: "function", function: { name } };
  }
  throw new QwenError("ERR_INVALID_ARG_VALUE", `tool_choice must be "auto", "none", "required" or { type: "function", function: { name } }, got ${describe(choice)}`);
}

/**
 * GBNF that forces Qwen's tool-call form: for "required", one or more calls of any listed tool (separated by a
 * newline, as the template writes them); for a named function, exactly one call of it. Each call's arguments
 * follow that tool's parameters schema (any object when it has none). "auto" and "none" constrain nothing and
 * have no grammar: they throw ERR_INVALID_ARG_VALUE. Unsupported schema keywords throw ERR_SCHEMA_UNSUPPORTED.
 */
export function toolCallGrammar(tools: ToolDefinition[], choice: ToolChoice): string {
  validateTools(tools);
  const c = validateToolChoice(choice, tools);
  if (c === "auto" || c === "none") throw new QwenError("ERR_INVALID_ARG_VALUE", `tool_choice ${JSON.stringify(c)} needs no grammar: only "required" or a named function constrain the reply`);
  const chosen = typeof c === "object" ? tools.filter((t) => t.function.name === c.function.name) : tools;
  const conv = new SchemaConverter();
  const calls = chosen.map((t, i) => {
    const name = t.function.name;
    const args = t.function.parameters === undefined ? conv.primitive("object") : conv.convert(t.function.parameters, { prefix: `tool${i}-args` });
    // the exact text Qwen's template writes for a call (so the model's training carries over)
    return conv.addRule(`tool${i}-call`, `${gbnfLiteral(`${OPEN}\n{"name": ${JSON.stringify(name)}, "arguments": `)} ${args} ${gbnfLiteral(`}\n${CLOSE}`)}`);
  });
  const call = conv.addRule("tool-call", calls.join(" | "));
  return conv.grammar(typeof c === "object" ? call : `${call} ("\\n" ${call})*`);
}

export function newToolCallId(): string {
  return `call_${randomBytes(12).toString("base64url").replace(/[-_]/g, "x")}`;
}

/** The call in one `<tool_call>` block's inner text, or undefined when it is not a well-formed call. */
function parseCall(inner: string): ToolCall | undefined {
  let v: unknown;
  try {
    v = JSON.parse(inner);
  } catch {
    return undefined;
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) return undefined;
  const { name, arguments: args } = v as { name?: unknown; arguments?: unknown };
  if (typeof name !== "string" || !name) return undefined;
  let text: string;
  if (args === undefined) text = "{}";
  else if (typeof args === "string") text = args; // some models write the arguments as a JSON string already
  else if (args && typeof args === "object" && !Array.isArray(args)) text = JSON.stringify(args);
  else return undefined;
  return { id: newToolCallId(), type: "function", function: { name, arguments: text } };
}

/** Length of the longest suffix of `text` that is a proper prefix of `tag` (text that may become the tag). */
function partialTagSuffix(text: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) if (text.endsWith(tag.slice(0, n))) return n;
  return 0;
}

/**
 * Splits streamed model text into content and tool calls. Ordinary text passes through at once; text that may be
 * the start of `<tool_call>` is held until it is decided; a call is emitted when its block closes. A malformed
 * block (not JSON, no name) stays in the content, as written. Whitespace next to a recognised call is dropped
 * (the newlines the template puts around calls), so content is what the model said besides its calls.
 */
export class ToolCallStreamParser {
  private buf = "";
  private inCall = false;
  /** Trailing whitespace of the content so far: dropped if a call follows, written if more content does. */
  private pendingSpace = "";
  /** Whether the last thing seen was a call (leading whitespace after it is dropped). */
  private afterCall = false;
  /** The whitespace before a run of calls: it separates the content before them from content after them. */
  private resumeSpace = "";
  private emitted = false;

  push(text: string): { content: string; toolCalls: ToolCall[] } {
    if (typeof text !== "string") throw new QwenError("ERR_INVALID_ARG_TYPE", "ToolCallStreamParser.push takes a string");
    this.buf += text;
    let content = "";
    const toolCalls: ToolCall[] = [];
    const write = (s: string) => {
      if (this.afterCall) {
        s = s.trimStart();
        if (!s) return;
        this.afterCall = false;
        this.pendingSpace = this.resumeSpace;
        this.resumeSpace = "";
      }
      const body = s.trimEnd();
      if (body) {
        content += this.pendingSpace + body;
        this.pendingSpace = "";
        this.emitted = true;
      }
      this.pendingSpace += s.slice(body.length);
    };
    for (;;) {
      if (!this.inCall) {
        const at = this.buf.indexOf(OPEN);
        if (at < 0) {
          const keep = partialTagSuffix(this.buf, OPEN);
          write(this.buf.slice(0, this.buf.length - keep));
          this.buf = this.buf.slice(this.buf.length - keep);
          break;
        }
        write(this.buf.slice(0, at));
        this.buf = this.buf.slice(at + OPEN.length);
        this.inCall = true;
      } else {
        const end = this.buf.indexOf(CLOSE);
        if (end < 0) break;
        const inner = this.buf.slice(0, end);
        this.buf = this.buf.slice(end + CLOSE.length);
        this.inCall = false;
        const call = parseCall(inner.trim());
        if (call) {
          toolCalls.push(call);
          if (!this.afterCall) this.resumeSpace = this.emitted ? this.pendingSpace : "";
          this.pendingSpace = "";
          this.afterCall = true;
        } else {
          write(OPEN + inner + CLOSE);
        }
      }
    }
    return { content, toolCalls };
  }

  /** Ends the stream: held text (a partial tag, an unclosed block, trailing whitespace) becomes content. */
  flush(): { content: string; toolCalls: ToolCall[] } {
    let rest = this.inCall ? OPEN + this.buf : this.buf;
    let content: string;
    if (this.afterCall) {
      rest = rest.trimStart();
      content = rest ? this.resumeSpace + rest : "";
    } else content = this.pendingSpace + rest;
    this.buf = "";
    this.inCall = false;
    this.pendingSpace = this.resumeSpace = "";
    this.afterCall = this.emitted = false;
    return { content, toolCalls: [] };
  }
}

/** Splits a whole reply into content and tool calls (the same rules as ToolCallStreamParser). */
export function parseToolCalls(text: string): { content: string; toolCalls: ToolCall[] } {
  const p = new ToolCallStreamParser();
  const a = p.push(text);
  const b = p.flush();
  return { content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] };
}
