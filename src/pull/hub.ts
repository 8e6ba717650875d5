/**
 * HTTP to the Hugging Face Hub (or any server with its shapes): settings from the environment users already set,
 * one fetch with coded errors, retries with exponential backoff, and range reads that resume where a cut connection
 * stopped. API calls go through @huggingface/hub with this fetch; byte transfers use it directly.
 */
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { abortError, QwenError } from "../errors.js";

export interface HubSettings {
  /** HF_ENDPOINT, default https://huggingface.co (no trailing slash). */
  endpoint: string;
  /** HF_TOKEN (or HUGGING_FACE_HUB_TOKEN, or the token file `huggingface-cli login` writes). */
  token?: string;
  /** HF_HUB_OFFLINE=1: no network at all. */
  offline: boolean;
  /** Attempts per request before a network error is final. */
  attempts: number;
  /** First backoff delay; doubled each attempt (with jitter), capped at 30 s. */
  backoffMs: number;
}

const truthy = (v: string | undefined) => v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());

export function hubSettings(): HubSettings {
  const env = process.env;
  let token = env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || undefined;
  if (!token) {
    const file = env.HF_TOKEN_PATH || join(env.HF_HOME || join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "huggingface"), "token");
    try {
      if (existsSync(file)) token = readFileSync(file, "utf8").trim() || undefined;
    } catch {
      // unreadable token file: behave as without a token
    }
  }
  const endpoint = (env.HF_ENDPOINT || "https://huggingface.co").replace(/\/+$/, "");
  try {
    new URL(endpoint);
  } catch {
    throw new QwenError("ERR_INVALID_ARG_VALUE", `HF_ENDPOINT ${JSON.stringify(env.HF_ENDPOINT)} is not a URL`);
  }
  const attempts = Number(env.QWEN_GGUF_HTTP_ATTEMPTS ?? 6);
  const backoffMs = Number(env.QWEN_GGUF_HTTP_BACKOFF_MS ?? 500);
  return {
    endpoint, token, offline: truthy(env.HF_HUB_OFFLINE),
    attempts: Number.isInteger(attempts) && attempts >= 1 ? attempts : 6,
    backoffMs: Number.isFinite(backoffMs) && backoffMs >= 0 ? backoffMs : 500,
  };
}

/** What a request is about, to name it in errors. */
export interface RequestContext {
  repo?: string;
  file?: string;
  /** A 404 means the repository (or revision) is missing rather than a file. */
  repoLevel?: boolean;
}

/** A failure worth another attempt: a network error, a cut body, 429 or 5xx. */
export class RetryableError extends Error {
  constructor(message: string, readonly retryAfterMs?: number, options?: { cause?: unknown }) {
    super(message, options);
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export class Hub {
  constructor(readonly settings: HubSettings = hubSettings()) {}

  private get origin() {
    return new URL(this.settings.endpoint).origin;
  }

  /** Headers for a URL: the token only ever goes to the hub's own origin (never to a CDN a redirect names). */
  headers(url: string, extra?: RequestInit["headers"]): Headers {
    const h = new Headers(extra);
    h.set("user-agent", "qwen-gguf (+https://www.npmjs.com/package/qwen-gguf)");
    if (this.settings.token && new URL(url).origin === this.origin) h.set("authorization", `Bearer ${this.settings.token}`);
    return h;
  }

  /** One request: the response when it is OK (2xx), a coded QwenError for 4xx, a RetryableError otherwise. */
  async request(url: string, init: RequestInit, ctx: RequestContext): Promise<Response> {
    if (this.settings.offline) throw new QwenError("ERR_HUB_OFFLINE", `HF_HUB_OFFLINE is set: not fetching ${url}`);
    if (init.signal?.aborted) throw abortError(init.signal);
    let res: Response;
    try {
      res = await fetch(url, { ...init, headers: this.headers(url, init.headers) });
    } catch (err) {
      if (init.signal?.aborted) throw abortError(init.signal);
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      throw new RetryableError(`${url}: ${cause?.code ?? cause?.message ?? (err as Error).message}`, undefined, { cause: err });
    }
    if (res.ok) return res;
    const body = await res.text().catch(() => "");
    let message = body.slice(0, 300);
    try {
      const json = JSON.parse(body);
      message = json.error ?? json.message ?? message;
    } catch {
      // not JSON: keep the text
    }
    if (res.status === 429 || res.status >= 500) {
      const after = Number(res.headers.get("retry-after"));
      throw new RetryableError(`${url}: HTTP ${res.status}${message ? ` (${message})` : ""}`, Number.isFinite(after) && after > 0 ? after * 1000 : undefined);
    }
    throw this.statusError(res.status, res.headers.get("x-error-code"), message, url, ctx);
  }

  private statusError(status: number, code: string | null, message: string, url: string, ctx: RequestContext): QwenError {
    const repo = ctx.repo ? `${ctx.repo}` : url;
    const page = ctx.repo ? `https://huggingface.co/${ctx.repo}` : url;
    const tokenHint = this.settings.token ? "" : "; if it is private, set HF_TOKEN to a token that can read it";
    if (code === "GatedRepo" || (status === 403 && /gated|restricted/i.test(message))) {
      return new QwenError("ERR_REPO_GATED", this.settings.token
        ? `${repo} is gated and the token in HF_TOKEN has no access to it: accept its conditions at ${page} with that account (HTTP ${status})`
        : `${repo} is gated: accept its conditions at ${page}, then set HF_TOKEN to a read token of that account (HTTP ${status})`);
    }
    if (code === "RepoNotFound" || (status === 404 && ctx.repoLevel && code !== "RevisionNotFound" && code !== "EntryNotFound")) {
      return new QwenError("ERR_REPO_NOT_FOUND", `repository ${repo} was not found on ${this.settings.endpoint}${tokenHint} (HTTP ${status})`);
    }
    if (code === "RevisionNotFound") return new QwenError("ERR_REPO_NOT_FOUND", `${repo}: revision not found on ${this.settings.endpoint} (HTTP ${status}${message ? `: ${message}` : ""})`);
    if (code === "EntryNotFound" || status === 404 || status === 410) {
      return new QwenError("ERR_HUB_FILE_NOT_FOUND", `${ctx.file ? `${repo}: file ${ctx.file}` : url} was not found (HTTP ${status}${message ? `: ${message}` : ""})`);
    }
    if (status === 401 || status === 403) {
      return new QwenError("ERR_HUB_UNAUTHORIZED", this.settings.token
        ? `${repo}: the hub refused the token in HF_TOKEN (HTTP ${status}${message ? `: ${message}` : ""})`
        : `${repo}: the hub requires authentication: set HF_TOKEN (HTTP ${status}${message ? `: ${message}` : ""})`);
    }
    if (status === 416) return new QwenError("ERR_HUB_RESPONSE", `${url}: the server refused the byte range (HTTP 416)`);
    return new QwenError("ERR_HUB_RESPONSE", `${url}: unexpected HTTP ${status}${message ? ` (${message})` : ""}`);
  }

  /**
   * Runs `attempt` until it succeeds, retrying RetryableErrors with exponential backoff and jitter. `progressed`
   * (called before each retry) resets the count when the last attempt moved forward, so a long transfer survives
   * any number of separate cuts.
   */
  async retry<T>(what: string, attempt: () => Promise<T>, signal?: AbortSignal, progressed?: () => boolean): Promise<T> {
    let failures = 0;
    for (;;) {
      try {
        return await attempt();
      } catch (err) {
        if (!(err instanceof RetryableError)) throw err;
        if (signal?.aborted) throw abortError(signal);
        failures = progressed?.() ? 1 : failures + 1;
        if (failures >= this.settings.attempts) {
          throw new QwenError("ERR_NETWORK", `${what} failed after ${failures} attempts: ${err.message}`, { cause: err });
        }
        const backoff = Math.min(30_000, this.settings.backoffMs * 2 ** (failures - 1));
        await sleep(err.retryAfterMs !== undefined ? Math.min(err.retryAfterMs, 60_000) : backoff * (0.5 + Math.random() / 2), signal);
      }
    }
  }

  /** A fetch for @huggingface/hub's API calls: auth on the hub's origin, retries, coded errors. */
  fetchFor(ctx: RequestContext, signal?: AbortSignal): typeof fetch {
    return ((input: string | URL | Request, init?: RequestInit) => {
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      return this.retry(`GET ${url}`, () => this.request(url, { ...init, signal: init?.signal ?? signal }, ctx), signal);
    }) as typeof fetch;
  }
}

/** A file to transfer: its resolve URL and, once a redirect has been followed, the URL it led to. */
export interface RemoteFile {
  path: string;
  size: number;
  /** sha256 of the content (the LFS oid), when the hub publishes it. */
  sha256?: string;
  url: string;
  /** Where `url` redirected last time (a CDN); reused until it stops working. */
  location?: string;
}

/**
 * Reads `bytes` bytes of `file` at `position` into the start of `into`. A connection cut mid-body is retried from the
 * byte reached; an expired redirect target is resolved again.
 */
export async function readRange(hub: Hub, file: RemoteFile, position: number, bytes: number, into: Buffer, ctx: RequestContext, signal?: AbortSignal, onBytes?: (n: number) => void): Promise<Buffer> {
  if (bytes === 0) return into.subarray(0, 0);
  if (position < 0 || position + bytes > file.size) throw new QwenError("ERR_HUB_RESPONSE", `${file.path}: range ${position}+${bytes} is outside the file of ${file.size} bytes`);
  let got = 0, before = 0;
  await hub.retry(`reading ${ctx.repo ? `${ctx.repo}/` : ""}${file.path}`, async () => {
    before = got;
    const from = position + got, to = position + bytes - 1;
    const res = await requestFollowing(hub, file, { headers: { range: `bytes=${from}-${to}` }, signal }, ctx);
    let skip = 0;
    if (res.status === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
      if (!m || Number(m[1]) !== from) {
        await res.body?.cancel().catch(() => undefined);
        throw new QwenError("ERR_HUB_RESPONSE", `${file.path}: asked for bytes ${from}-${to}, got Content-Range ${JSON.stringify(res.headers.get("content-range"))}`);
      }
    } else {
      skip = from; // 200: the server ignored Range and sends the whole file
    }
    const reader = res.body!.getReader();
    try {
      while (got < bytes) {
        let chunk: Uint8Array;
        try {
          const r = await reader.read();
          if (r.done) break;
          chunk = r.value;
        } catch (err) {
          if (signal?.aborted) throw abortError(signal);
          throw new RetryableError(`${file.path}: connection lost after ${got} of ${bytes} bytes (${(err as Error).message})`, undefined, { cause: err });
        }
        let c = chunk;
        if (skip > 0) {
          const s = Math.min(skip, c.length);
          skip -= s;
          c = c.subarray(s);
        }
        const n = Math.min(c.length, bytes - got);
        into.set(n === c.length ? c : c.subarray(0, n), got);
        got += n;
        onBytes?.(n);
      }
    } finally {
      if (got >= bytes) await reader.cancel().catch(() => undefined);
      else reader.releaseLock();
    }
    if (got < bytes) {
      await res.body?.cancel().catch(() => undefined);
      throw new RetryableError(`${file.path}: the response ended after ${got} of ${bytes} bytes`);
    }
  }, signal, () => got > before);
  return into.subarray(0, bytes);
}

/** GET through the remembered redirect target when there is one, falling back to the resolve URL once it fails. */
export async function requestFollowing(hub: Hub, file: RemoteFile, init: RequestInit, ctx: RequestContext): Promise<Response> {
  if (file.location) {
    try {
      return await hub.request(file.location, init, ctx);
    } catch (err) {
      if (!(err instanceof QwenError) || err.code === "ABORT_ERR" || err.code === "ERR_HUB_OFFLINE") throw err;
      file.location = undefined; // a signed CDN URL that expired: resolve again
    }
  }
  const res = await hub.request(file.url, init, ctx);
  if (res.redirected && res.url) file.location = res.url;
  return res;
}
