/**
 * Model references: `hf:owner/repo[@revision][:type]` (a safetensors repository, converted while it downloads; or a
 * GGUF repository, whose file for `type` is downloaded), `hf:owner/repo[@revision]/path/file.gguf` (that GGUF),
 * an `https://…/file.gguf` URL, or a local path.
 */
import { QwenError } from "../errors.js";
import { OUTPUT_TYPES, type OutputType } from "../convert/plan.js";

export type Reference =
  | { kind: "local"; path: string }
  | { kind: "hf"; repo: string; revision?: string; file?: string; type?: OutputType; text: string }
  | { kind: "url"; url: string; text: string };

// Hugging Face repository names: letters, digits, '-', '_', '.' (no '--' or '..' at the ends); owner/name
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;

export function isReference(ref: string): boolean {
  return /^hf:/i.test(ref) || /^https?:\/\//i.test(ref);
}

export function parseReference(ref: string): Reference {
  if (typeof ref !== "string" || ref.length === 0) throw new QwenError("ERR_INVALID_ARG_TYPE", "a model reference must be a non-empty string");
  if (/^https?:\/\//i.test(ref)) {
    let url: URL;
    try {
      url = new URL(ref);
    } catch {
      throw new QwenError("ERR_INVALID_REFERENCE", `${JSON.stringify(ref)} is not a valid URL`);
    }
    if (!/\.gguf$/i.test(url.pathname)) throw new QwenError("ERR_INVALID_REFERENCE", `${ref}: a URL reference must name a .gguf file (use hf:owner/repo for a Hugging Face repository)`);
    return { kind: "url", url: url.href, text: url.href };
  }
  if (!/^hf:/i.test(ref)) return { kind: "local", path: ref };
  const bad = (why: string) => new QwenError("ERR_INVALID_REFERENCE", `${JSON.stringify(ref)} is not a model reference: ${why} (expected hf:owner/repo[@revision][:type] or hf:owner/repo[@revision]/file.gguf)`);
  let rest = ref.slice(3).replace(/^\/\//, "");
  const parts = rest.split("/");
  if (parts.length < 2) throw bad("no owner/repo");
  const owner = parts[0];
  let name = parts[1];
  let file = parts.slice(2).join("/") || undefined;
  let revision: string | undefined;
  let type: OutputType | undefined;
  // owner/repo@rev/file, owner/repo@rev:type, owner/repo:type
  const colon = name.lastIndexOf(":");
  if (!file && colon >= 0) {
    const t = name.slice(colon + 1).toLowerCase().replace(/-/g, "_");
    if (!(OUTPUT_TYPES as readonly string[]).includes(t)) throw bad(`unknown type ${JSON.stringify(name.slice(colon + 1))}; types: ${OUTPUT_TYPES.join(", ")}`);
    type = t as OutputType;
    name = name.slice(0, colon);
  }
  const at = name.indexOf("@");
  if (at >= 0) {
    revision = decodeURIComponent(name.slice(at + 1));
    name = name.slice(0, at);
    if (!revision || /\s/.test(revision)) throw bad("empty or blank revision");
  }
  if (!NAME.test(owner) || !NAME.test(name)) throw bad(`${JSON.stringify(`${owner}/${name}`)} is not a repository name`);
  if (file !== undefined) {
    if (file.split("/").some((p) => p === "" || p === "." || p === "..")) throw bad(`bad file path ${JSON.stringify(file)}`);
    if (!/\.gguf$/i.test(file)) throw bad(`${file} is not a .gguf file (name a repository to convert its safetensors)`);
  }
  rest = `hf:${owner}/${name}${revision ? `@${revision}` : ""}${file ? `/${file}` : ""}`;
  return { kind: "hf", repo: `${owner}/${name}`, revision, file, type, text: rest };
}
