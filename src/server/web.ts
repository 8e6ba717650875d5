/**
 * The web chat page at `/`: static files served from the package itself (no CDN, works offline), plus the browser ES
 * module builds of its libraries (marked, DOMPurify, highlight.js) read from node_modules under /vendor/.
 */
import type { FastifyInstance, FastifyReply } from "fastify";
import fastifyStatic from "@fastify/static";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { packageRoot } from "../native.js";

export const webRoot = join(packageRoot, "src", "server", "web");

/**
 * Defence in depth behind DOMPurify: no inline script or event handler can run even if sanitizing ever failed, and the
 * page talks to its own origin only (no exfiltration through images or fetches to other hosts).
 */
export const PAGE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

/** The highlight.js grammars the page loads; each one is a small ES module in highlight.js/es/languages. */
export const HIGHLIGHT_LANGUAGES = [
  "bash", "c", "cpp", "csharp", "css", "diff", "go", "java", "javascript", "json", "kotlin", "markdown", "php",
  "python", "ruby", "rust", "shell", "sql", "swift", "typescript", "xml", "yaml",
] as const;

const path = (specifier: string) => fileURLToPath(import.meta.resolve(specifier));

/** Each vendor module: where it lives and how to turn it into a browser ES module. */
function vendorFiles(): Map<string, () => Promise<string>> {
  const files = new Map<string, () => Promise<string>>();
  const plain = (file: string) => () => readFile(file, "utf8");
  files.set("marked.js", plain(path("marked")));
  files.set("purify.js", plain(path("dompurify")));
  // highlight.js ships its core only as CommonJS (es/core.js re-exports ../lib/core.js): wrap it as a module. The file is
  // self-contained (no require), so a module object is all it needs.
  const hljsRoot = dirname(path("highlight.js/package.json"));
  files.set("highlight/core.js", async () => {
    const source = await readFile(join(hljsRoot, "lib", "core.js"), "utf8");
    return `const module = { exports: {} };\nconst exports = module.exports;\n${source}\nexport default module.exports;\n`;
  });
  for (const language of HIGHLIGHT_LANGUAGES) files.set(`highlight/languages/${language}.js`, plain(path(`highlight.js/lib/languages/${language}`)));
  // One module the page imports: the core with every grammar above registered (the list lives here only).
  files.set("highlight.js", async () =>
    [
      `import hljs from "./highlight/core.js";`,
      ...HIGHLIGHT_LANGUAGES.map((language, i) => `import l${i} from "./highlight/languages/${language}.js";\nhljs.registerLanguage(${JSON.stringify(language)}, l${i});`),
      `export default hljs;`,
      ``,
    ].join("\n"));
  return files;
}

export async function registerWebPage(app: FastifyInstance): Promise<void> {
  const files = vendorFiles();
  // Read once per process, on first use: the page loads ~25 small modules and nothing here changes while serving.
  const cache = new Map<string, Promise<string>>();
  const load = (name: string) => {
    let text = cache.get(name);
    if (!text) {
      text = files.get(name)!();
      text.catch(() => cache.delete(name));
      cache.set(name, text);
    }
    return text;
  };
  const sendModule = async (reply: FastifyReply, name: string) => {
    if (!files.has(name)) return reply.code(404).type("application/json").send({ error: { message: `No vendor module ${name}`, type: "invalid_request_error", param: null, code: "not_found" } });
    return reply
      .type("text/javascript; charset=utf-8")
      .header("cache-control", "public, max-age=3600")
      .header("x-content-type-options", "nosniff")
      .send(await load(name));
  };

  app.get("/vendor/:name", (request, reply) => sendModule(reply, (request.params as { name: string }).name));
  app.get("/vendor/highlight/:name", (request, reply) => sendModule(reply, `highlight/${(request.params as { name: string }).name}`));
  app.get("/vendor/highlight/languages/:name", (request, reply) => sendModule(reply, `highlight/languages/${(request.params as { name: string }).name}`));

  await app.register(fastifyStatic, {
    root: webRoot,
    prefix: "/",
    // The page is small and changes with the package version: revalidate instead of caching stale code for a day.
    cacheControl: false,
    setHeaders(reply, file) {
      reply.header("cache-control", "no-cache");
      reply.header("x-content-type-options", "nosniff");
      if (file.endsWith(".html")) {
        reply.header("content-security-policy", PAGE_CSP);
        reply.header("referrer-policy", "no-referrer");
      }
    },
  });
}
