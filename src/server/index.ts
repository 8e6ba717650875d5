/**
 * `serve(modelOrPath, options)`: an OpenAI-compatible HTTP server (Fastify) around one model.
 *
 * Fastify because it validates bodies with JSON schemas (a wrong type is a 400 before any handler runs), has a
 * body limit, hooks for auth and metrics, and official plugins for SSE (@fastify/sse), CORS and static files.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { basename } from "node:path";
import Fastify, { type FastifyInstance } from "fastify";
import fastifyCors from "@fastify/cors";
import { fastifySSE as fastifySse } from "@fastify/sse";
import { QwenError } from "../errors.js";
import { loadModel, Model, type KvCacheType, type LoadModelOptions } from "../model.js";
import { ApiError, toApiError } from "./errors.js";
import { ClientGone, ServerState } from "./generation.js";
import { createMetrics } from "./metrics.js";
import { registerOpenAI } from "./openai.js";
import { registerSimple } from "./simple.js";
import { registerWebPage } from "./web.js";

export interface ServeOptions {
  /** Interface to bind. Default: "127.0.0.1" (loopback only). */
  host?: string;
  /** Port; 0 picks a free one. Default: 8080. */
  port?: number;
  /** Bearer key every API request must carry (`/health` and the page stay open). Default: none. */
  apiKey?: string;
  /** Origins allowed by CORS ("*" for any). Default: none (CORS off). */
  cors?: string[];
  /** Largest request body in bytes (413 above). Default: 4 MiB. */
  bodyLimit?: number;
  /** Milliseconds between `: ping` comments while a stream waits for its first token. Default: 5000. */
  pingInterval?: number;
  /** Name the model is served as (`/v1/models`, the `model` field). Default: the file name without `.gguf`. */
  modelId?: string;
  /** Serve the web chat page at `/`. Default: true. */
  web?: boolean;
  /** Fastify's logger (pino): true for JSON logs on stdout. Default: false. */
  logger?: boolean;
  /** Called when the server listens, before the model finished loading (`/health` answers 503 until then). */
  onListening?: (url: string) => void;
  // Load options, used when serve() loads the model from a path:
  threads?: number;
  contextSize?: number;
  kvCacheType?: KvCacheType;
  batchSize?: number;
  poll?: number;
  /** Concurrent generations (engine option). */
  parallel?: number;
  /** Requests waiting beyond the running ones before new ones get 503 (engine option). */
  maxQueue?: number;
  /** Cache of whole responses of deterministic requests (engine option). Default: on (256 entries, 16 MiB); false turns it off. */
  responseCache?: boolean | { maxEntries?: number; maxBytes?: number };
}

export interface Server {
  /** `http://host:port` */
  url: string;
  /** Stops taking requests, ends the running streams cleanly (final chunk and `[DONE]`), frees a model it loaded. */
  close(): Promise<void>;
  app: FastifyInstance;
  /** The model once loaded. */
  model: Model;
}

const LOAD_OPTIONS = ["threads", "contextSize", "kvCacheType", "batchSize", "poll", "parallel", "maxQueue", "responseCache"] as const;

/** Compares the Bearer key in constant time (both sides hashed first, so their lengths leak nothing either). */
function keyChecker(apiKey: string) {
  const expected = createHash("sha256").update(apiKey).digest();
  return (header: string | undefined) => {
    const m = /^Bearer\s+(.+)$/i.exec(header ?? "");
    const given = createHash("sha256").update(m ? m[1].trim() : "").digest();
    return timingSafeEqual(given, expected) && m !== null;
  };
}

export async function serve(modelOrPath: Model | string, options: ServeOptions = {}): Promise<Server> {
  if (!(modelOrPath instanceof Model) && typeof modelOrPath !== "string") {
    throw new QwenError("ERR_INVALID_ARG_TYPE", "serve() needs a Model or the path of a GGUF file");
  }
  if (modelOrPath instanceof Model) {
    const given = LOAD_OPTIONS.filter((k) => options[k] !== undefined);
    if (given.length) throw new QwenError("ERR_INVALID_ARG_VALUE", `${given.join(", ")} apply when serve() loads the model; pass them to loadModel() instead`);
  }
  const path = modelOrPath instanceof Model ? modelOrPath.path : modelOrPath;
  const fileName = basename(path);
  const modelId = options.modelId ?? fileName.replace(/\.gguf$/i, "");
  const aliases = new Set([modelId, fileName, fileName.replace(/\.gguf$/i, "")]);

  let state!: ServerState;
  const metrics = createMetrics(() => state.stats());
  state = new ServerState(metrics, options.pingInterval ?? 5000, modelId, aliases);

  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: options.bodyLimit ?? 4 * 1024 * 1024,
    // no coercion: "temperature": "0.5" is a 400, as at OpenAI
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    forceCloseConnections: "idle",
    return503OnClosing: true,
  });
  await app.register(fastifySse, { heartbeatInterval: 0 });
  if (options.cors?.length) {
    await app.register(fastifyCors, { origin: options.cors.includes("*") ? true : options.cors, methods: ["GET", "POST", "OPTIONS"], allowedHeaders: ["Content-Type", "Authorization"] });
  }

  if (options.apiKey) {
    const check = keyChecker(options.apiKey);
    app.addHook("onRequest", async (req, reply) => {
      if (!(req.routeOptions.config as { auth?: boolean } | undefined)?.auth) return;
      if (!check(req.headers.authorization)) {
        const e = new ApiError(401, "a valid API key is required: send it as 'Authorization: Bearer <key>'", "authentication_error", null, "invalid_api_key");
        return reply.code(401).header("www-authenticate", "Bearer").send(e.body());
      }
    });
  }

  app.addHook("onResponse", async (req, reply) => {
    metrics.requests.inc({ route: req.routeOptions.url ?? "unmatched", method: req.method, status: String(reply.statusCode) });
  });

  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof ClientGone) return reply.code(499).send(); // the socket is gone; this only settles the request
    const e = toApiError(err);
    if (e.status >= 500 && e.status !== 501 && e.status !== 503) app.log.error(err);
    return reply.code(e.status).headers(e.headers).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(new ApiError(404, `no route ${req.method} ${req.url.split("?")[0]}`, "invalid_request_error", null, "not_found").body());
  });

  app.get("/health", async (_req, reply) => {
    if (state.closing) return reply.code(503).send({ status: "shutting down" });
    if (!state.model) return reply.code(503).send({ status: "loading" });
    const s = state.stats();
    return { status: "ok", model: modelId, ...(s && { slots: { parallel: s.parallel, active: s.active, queued: s.queued } }) };
  });
  app.get("/metrics", { config: { auth: true } }, async (_req, reply) => {
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
  registerOpenAI(app, state);
  registerSimple(app, state);
  if (options.web !== false) await registerWebPage(app);

  const host = options.host ?? "127.0.0.1";
  await app.listen({ host, port: options.port ?? 8080 });
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  options.onListening?.(url);

  const ownsModel = !(modelOrPath instanceof Model);
  try {
    if (modelOrPath instanceof Model) {
      state.model = modelOrPath;
    } else {
      const load: Record<string, unknown> = {};
      for (const k of LOAD_OPTIONS) if (options[k] !== undefined) load[k] = options[k];
      load.responseCache ??= true; // a server sees the same deterministic requests again (retries, refreshes, classifications)
      state.model = await loadModel(modelOrPath, load as LoadModelOptions);
    }
  } catch (err) {
    await app.close();
    throw err;
  }
  if (state.model.info.name) aliases.add(state.model.info.name);

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= (async () => {
      state.closing = true;
      for (const r of state.running) r.stop(); // each stream writes its final chunk and [DONE]
      // A connection busy at close() becomes idle when its stream ends; close it then instead of after keep-alive's 5 s
      const sweep = setInterval(() => app.server.closeIdleConnections(), 25);
      try {
        await app.close();
      } finally {
        clearInterval(sweep);
      }
      if (ownsModel) await state.model?.dispose();
    })();
    return closed;
  };
  return { url, close, app, model: state.model };
}
