// The server's HTTP API as the page uses it: chat completions streamed over SSE (fetch + ReadableStream, so the request
// is a POST and a Stop is a plain AbortController), the classifier for the sentiment badge, models and health.
// URLs are relative to the page, so the page also works behind a proxy under a sub-path.

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

function headers(apiKey, json = true) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  if (apiKey) h.authorization = `Bearer ${apiKey}`;
  return h;
}

/** The message of an OpenAI error body `{ error: { message } }`, or the status text. */
async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page or an empty body
  }
  const message = body?.error?.message ?? body?.message ?? `${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, message, body);
}

/**
 * The events of a `text/event-stream` body, each as its data string. Comment lines (`:` pings sent while a request is
 * queued or a long prompt decodes) and fields other than data are skipped; multi-line data is joined with "\n".
 */
export async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  const line = (text) => {
    if (text === "") {
      const event = data.length ? data.join("\n") : null;
      data = [];
      return event;
    }
    if (text.startsWith(":")) return null;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    return null;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      for (;;) {
        const end = buffer.search(/[\r\n]/);
        // A "\r" at the very end may be the first half of "\r\n": wait for the next chunk.
        if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break;
        const text = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer[end] === "\r" && buffer[end + 1] === "\n" ? 2 : 1));
        const event = line(text);
        if (event != null) yield event;
      }
    }
    const last = line(buffer.replace(/\r$/, "")) ?? line("");
    if (last != null) yield last;
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * POST /v1/chat/completions with stream: true; yields the parsed chunks until `data: [DONE]`. An error sent inside the
 * stream (`{ error }`) is thrown as an ApiError; aborting `signal` ends the request (and the server's generation).
 */
export async function* streamChat(request, { signal, apiKey } = {}) {
  const response = await fetch("v1/chat/completions", {
    method: "POST",
    headers: { ...headers(apiKey), accept: "text/event-stream" },
    body: JSON.stringify({ ...request, stream: true }),
    signal,
  });
  if (!response.ok) throw await errorFrom(response);
  if (!response.body) throw new ApiError(response.status, "The server sent no stream.");
  for await (const data of sseData(response.body)) {
    if (data === "[DONE]") return;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      continue; // not ours to interpret; OpenAI's clients skip such events too
    }
    if (chunk?.error) throw new ApiError(chunk.error.code ?? 500, chunk.error.message ?? "The server reported an error.", chunk);
    yield chunk;
  }
}

/**
 * POST /v1/classify for one text: `{ label, probabilities }`, or null when the server has no classifier (404 where the
 * route does not exist, 501). Other failures throw.
 */
export async function classify(input, labels, { apiKey, signal } = {}) {
  const response = await fetch("v1/classify", { method: "POST", headers: headers(apiKey), body: JSON.stringify({ input, labels }), signal });
  if (response.status === 404 || response.status === 501) return null;
  if (!response.ok) throw await errorFrom(response);
  const body = await response.json();
  const result = body?.results?.[0];
  if (!result || typeof result.label !== "string") throw new ApiError(response.status, "Unexpected classifier answer.", body);
  return result;
}

export async function listModels({ apiKey } = {}) {
  const response = await fetch("v1/models", { headers: headers(apiKey, false) });
  if (!response.ok) throw await errorFrom(response);
  const body = await response.json();
  return Array.isArray(body?.data) ? body.data.map((m) => m.id).filter((id) => typeof id === "string") : [];
}

/** "ok", "loading" (503 while the model loads) or "down". */
export async function health() {
  try {
    const response = await fetch("health", { cache: "no-store" });
    return response.ok ? "ok" : response.status === 503 ? "loading" : "down";
  } catch {
    return "down";
  }
}
