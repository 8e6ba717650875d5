/**
 * JSON Schema → GBNF for llama.cpp's grammar sampler, modelled on llama.cpp's `common/json-schema-to-grammar.cpp`
 * (rule layout, bounded whitespace, digit-range integers) but stricter: a keyword we cannot enforce is an error
 * (ERR_SCHEMA_UNSUPPORTED naming the keyword and its JSON pointer), never silently dropped. The grammar is sound:
 * everything it accepts is valid under the schema. Where an exact grammar would be impractical it accepts a
 * documented subset of the valid instances instead (listed in jsonSchemaToGbnf's doc comment).
 */
import { QwenError } from "../errors.js";
import { parseGbnf } from "./gbnf.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Schema = boolean | { [key: string]: unknown };

/** Bounded whitespace: unbounded `[ \t\n]*` lets a model with a flat distribution loop on spaces forever. */
const SPACE_RULE = `| " " | "\\n"{1,2} [ \\t]{0,20}`;

/** Largest number of digits an integer may have when a side of its range is open (llama.cpp's choice too). */
const MAX_DIGITS = 16;

const PRIMITIVES: Record<string, { body: string; deps: string[] }> = {
  space: { body: SPACE_RULE, deps: [] },
  // one JSON string character: no raw `"`, `\` or control character; escapes are the JSON ones, and \u escapes of
  // surrogate halves are left out so that one grammar character is one code point (as minLength/maxLength count)
  char: {
    body: `[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\/bfnrt] | "u" ([0-9a-cA-CeEfF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))`,
    deps: [],
  },
  string: { body: `"\\"" char* "\\"" space`, deps: ["char", "space"] },
  boolean: { body: `("true" | "false") space`, deps: ["space"] },
  null: { body: `"null" space`, deps: ["space"] },
  "integral-part": { body: `[0] | [1-9] [0-9]{0,${MAX_DIGITS - 1}}`, deps: [] },
  "decimal-part": { body: `[0-9]{1,${MAX_DIGITS}}`, deps: [] },
  // exponents of at most two digits keep every number finite in a double (JSON.parse("1e999") is Infinity)
  number: { body: `("-"? integral-part) ("." decimal-part)? ([eE] [-+]? [0-9]{1,2})? space`, deps: ["integral-part", "decimal-part", "space"] },
  integer: { body: `("-"? integral-part) space`, deps: ["integral-part", "space"] },
  value: { body: `object | array | string | number | boolean | null`, deps: ["object", "array", "string", "number", "boolean", "null"] },
  object: { body: `"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space`, deps: ["string", "value", "space"] },
  array: { body: `"[" space ( value ("," space value)* )? "]" space`, deps: ["value", "space"] },
  // formats: the text inside the quotes
  "date": { body: `[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )`, deps: [] },
  "time": { body: `([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )`, deps: [] },
  "date-time": { body: `date "T" time`, deps: ["date", "time"] },
  "uuid": { body: `[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}`, deps: [] },
};
const FORMATS = ["date", "time", "date-time", "uuid"];

const ANNOTATIONS = new Set(["description", "title", "$schema", "$id", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"]);
const STRUCTURE = new Set(["$defs", "definitions"]);
const OBJECT_KEYWORDS = ["properties", "required", "additionalProperties"];
const ARRAY_KEYWORDS = ["items", "prefixItems", "minItems", "maxItems"];
const STRING_KEYWORDS = ["minLength", "maxLength", "pattern", "format"];
const NUMBER_KEYWORDS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
const KNOWN = new Set([
  ...ANNOTATIONS, ...STRUCTURE, "type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
  ...OBJECT_KEYWORDS, ...ARRAY_KEYWORDS, ...STRING_KEYWORDS, ...NUMBER_KEYWORDS,
]);
const TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"];

const pointerPart = (s: string | number) => String(s).replace(/~/g, "~0").replace(/\//g, "~1");
const at = (pointer: string) => (pointer === "" ? "the schema root" : `#${pointer}`);

/** Deepest schema nesting converted (subschemas within subschemas, $ref hops included). */
export const MAX_SCHEMA_DEPTH = 64;

function unsupported(keyword: string, pointer: string, why?: string): never {
  throw new QwenError("ERR_SCHEMA_UNSUPPORTED", `JSON Schema keyword "${keyword}" at ${at(pointer)} is not supported${why ? `: ${why}` : ""}`);
}
function invalid(pointer: string, message: string): never {
  throw new QwenError("ERR_INVALID_ARG_VALUE", `invalid JSON Schema at ${at(pointer)}: ${message}`);
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** A GBNF string literal for exact text (escapes `"`, `\` and anything not printable ASCII). */
export function gbnfLiteral(text: string): string {
  let out = "\"";
  for (const ch of text) out += ch === "\"" || ch === "\\" ? `\\${ch}` : gbnfChar(ch.codePointAt(0)!, false);
  return `${out}"`;
}

function gbnfChar(cp: number, inClass: boolean): string {
  if (cp >= 0x20 && cp < 0x7f) {
    const c = String.fromCharCode(cp);
    if (c === "\\" || c === "\"") return `\\${c}`;
    if (inClass && (c === "]" || c === "-" || c === "[")) return `\\${c}`;
    if (inClass && c === "^") return "\\x5E";
    return c;
  }
  const h = cp.toString(16).toUpperCase();
  return cp <= 0xff ? `\\x${h.padStart(2, "0")}` : cp <= 0xffff ? `\\u${h.padStart(4, "0")}` : `\\U${h.padStart(8, "0")}`;
}

/** `item` repeated min..max times; counts past llama.cpp's repetition limit (2000) go through named chunks. */
function repetition(item: string, min: number, max: number, chunk: () => string): string {
  const simple = (a: number, b: number): string => {
    if (b === 0) return "";
    if (a === 0 && b === 1) return `${item}?`;
    if (a === 0 && b === Infinity) return `${item}*`;
    if (a === 1 && b === Infinity) return `${item}+`;
    if (a === b) return a === 1 ? item : `${item}{${a}}`;
    return `${item}{${a},${b === Infinity ? "" : b}}`;
  };
  const LIMIT = 1000;
  if (min <= LIMIT && (max <= LIMIT || max === Infinity)) return simple(min, max);
  if (min > LIMIT * LIMIT || (max !== Infinity && max > LIMIT * LIMIT)) throw new QwenError("ERR_SCHEMA_UNSUPPORTED", `a repetition bound of ${Math.max(min, max)} is too large for a grammar`);
  const c = chunk(); // c ::= item{1000}
  const parts: string[] = [];
  const q = Math.floor(min / LIMIT);
  if (q) parts.push(q === 1 ? c : `${c}{${q}}`);
  if (min % LIMIT) parts.push(`${item}{${min % LIMIT}}`);
  const extra = max - min;
  if (extra === Infinity) parts.push(`${item}*`);
  else if (extra > 0 && extra <= LIMIT) parts.push(simple(0, extra));
  else if (extra > LIMIT) {
    const a = Math.floor(extra / LIMIT);
    const b = extra % LIMIT;
    parts.push(`(${a > 1 ? `${c}{0,${a - 1}} ` : ""}${item}{0,${LIMIT}} | ${a === 1 ? c : `${c}{${a}}`}${b ? ` ${simple(0, b)}` : ""})`);
  }
  return parts.join(" ");
}

// ---------- integer ranges: exact digit-range grammars (same idea as llama.cpp's _generate_min_max_int) ----------

/** Decimal strings of one length, lo ≤ x ≤ hi. */
function sameLengthRange(lo: string, hi: string): string {
  if (lo === hi) return gbnfLiteral(lo);
  let i = 0;
  while (lo[i] === hi[i]) i++;
  const prefix = lo.slice(0, i);
  const a = lo.charCodeAt(i) - 48;
  const b = hi.charCodeAt(i) - 48;
  const restLo = lo.slice(i + 1);
  const restHi = hi.slice(i + 1);
  const n = restLo.length;
  const digits = (x: number, y: number) => (x === y ? `[${x}]` : `[${x}-${y}]`);
  let body: string;
  if (n === 0) body = digits(a, b);
  else {
    const zeros = "0".repeat(n);
    const nines = "9".repeat(n);
    const any = n === 1 ? "[0-9]" : `[0-9]{${n}}`;
    const alts: string[] = [];
    const midFrom = restLo === zeros ? a : a + 1;
    const midTo = restHi === nines ? b : b - 1;
    if (restLo !== zeros) alts.push(`[${a}] ${wrap(sameLengthRange(restLo, nines))}`);
    if (midFrom <= midTo) alts.push(`${digits(midFrom, midTo)} ${any}`);
    if (restHi !== nines) alts.push(`[${b}] ${wrap(sameLengthRange(zeros, restHi))}`);
    body = alts.length > 1 ? `(${alts.join(" | ")})` : alts[0];
  }
  return prefix ? `${gbnfLiteral(prefix)} ${body}` : body;
}
const wrap = (e: string) => (/\|/.test(e) && !/^\(.*\)$/.test(e) ? `(${e})` : e);

/** Non-negative integers lo ≤ x ≤ hi (hi null: up to MAX_DIGITS digits), without leading zeros. */
function nonNegativeRange(lo: bigint, hi: bigint | null): string {
  const loS = lo.toString();
  const parts: string[] = [];
  if (hi === null) {
    parts.push(sameLengthRange(loS, "9".repeat(loS.length)));
    if (loS.length < MAX_DIGITS) parts.push(`[1-9] [0-9]{${loS.length},${MAX_DIGITS - 1}}`);
  } else {
    const hiS = hi.toString();
    for (let d = loS.length; d <= hiS.length; d++) {
      const from = d === loS.length ? loS : `1${"0".repeat(d - 1)}`;
      const to = d === hiS.length ? hiS : "9".repeat(d);
      parts.push(sameLengthRange(from, to));
    }
  }
  return parts.length > 1 ? `(${parts.join(" | ")})` : parts[0];
}

/** Integers lo ≤ x ≤ hi as JSON text; null is an open side. */
function integerRange(lo: bigint | null, hi: bigint | null): string {
  const parts: string[] = [];
  if (hi === null || hi >= 0n) parts.push(nonNegativeRange(lo !== null && lo > 0n ? lo : 0n, hi));
  if (lo === null || lo < 0n) {
    const magLo = hi !== null && hi < 0n ? -hi : 1n;
    parts.push(`"-" ${nonNegativeRange(magLo, lo === null ? null : -lo)}`);
  }
  return parts.length > 1 ? `(${parts.join(" | ")})` : parts[0];
}

// ---------- regular expressions (the pattern keyword) → GBNF over the JSON-encoded string ----------

type Ranges = Array<[number, number]>;
type Re =
  | { k: "alt"; alts: Re[][] }
  | { k: "set"; ranges: Ranges }
  | { k: "rep"; item: Re; min: number; max: number }
  | { k: "start" }
  | { k: "end" };

const MAX_CP = 0x10ffff;
const DIGIT: Ranges = [[48, 57]];
const WORD: Ranges = [[48, 57], [65, 90], [95, 95], [97, 122]];
const SPACE: Ranges = [[9, 13], [32, 32], [0xa0, 0xa0], [0x1680, 0x1680], [0x2000, 0x200a], [0x2028, 0x2029], [0x202f, 0x202f], [0x205f, 0x205f], [0x3000, 0x3000], [0xfeff, 0xfeff]];
const DOT: Ranges = [[0, 9], [11, 12], [14, 0x2027], [0x202a, MAX_CP]];

function normalize(ranges: Ranges): Ranges {
  const sorted = ranges.map(([a, b]) => [a, b] as [number, number]).sort((x, y) => x[0] - y[0]);
  const out: Ranges = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]);
    else out.push(r);
  }
  return out;
}
function complement(ranges: Ranges): Ranges {
  const out: Ranges = [];
  let next = 0;
  for (const [a, b] of normalize(ranges)) {
    if (a > next) out.push([next, a - 1]);
    next = b + 1;
  }
  if (next <= MAX_CP) out.push([next, MAX_CP]);
  return out;
}
const subtract = (ranges: Ranges, minus: Ranges) => intersect(ranges, complement(minus));
function intersect(x: Ranges, y: Ranges): Ranges {
  const out: Ranges = [];
  for (const [a, b] of normalize(x)) for (const [c, d] of normalize(y)) if (Math.max(a, c) <= Math.min(b, d)) out.push([Math.max(a, c), Math.min(b, d)]);
  return normalize(out);
}

class RegexParser {
  private i = 0;
  constructor(private readonly src: string, private readonly fail: (why: string) => never) {}

  parse(): Re {
    const re = this.alternation();
    if (this.i < this.src.length) this.fail(`unexpected ${JSON.stringify(this.src[this.i])} at offset ${this.i}`);
    return re;
  }
  private alternation(): Re {
    const alts: Re[][] = [this.sequence()];
    while (this.src[this.i] === "|") {
      this.i++;
      alts.push(this.sequence());
    }
    return { k: "alt", alts };
  }
  private sequence(): Re[] {
    const items: Re[] = [];
    while (this.i < this.src.length && this.src[this.i] !== "|" && this.src[this.i] !== ")") {
      const c = this.src[this.i];
      if (c === "^") { this.i++; items.push({ k: "start" }); continue; }
      if (c === "$") { this.i++; items.push({ k: "end" }); continue; }
      let atom: Re;
      if (c === "(") {
        this.i++;
        if (this.src[this.i] === "?") {
          if (this.src.startsWith("?:", this.i)) this.i += 2;
          else if (this.src[this.i + 1] === "<" && /[A-Za-z_$]/.test(this.src[this.i + 2] ?? "")) {
            const end = this.src.indexOf(">", this.i);
            if (end < 0) this.fail("unterminated group name");
            this.i = end + 1; // a named group matches like a plain group; names only matter to backreferences
          } else this.fail(`lookaround "(${this.src.slice(this.i, this.i + 3)}" has no grammar equivalent`);
        }
        atom = this.alternation();
        if (this.src[this.i] !== ")") this.fail("unbalanced parenthesis");
        this.i++;
      } else if (c === ")") {
        this.fail("unbalanced parenthesis");
      } else if (c === "[") {
        atom = { k: "set", ranges: this.charClass() };
      } else if (c === ".") {
        this.i++;
        atom = { k: "set", ranges: DOT };
      } else if (c === "\\") {
        atom = { k: "set", ranges: this.escape(false) };
      } else if (c === "*" || c === "+" || c === "?" || (c === "{" && this.quantifierAhead())) {
        this.fail(`nothing to repeat at offset ${this.i}`);
      } else {
        const cp = this.src.codePointAt(this.i)!;
        this.i += cp > 0xffff ? 2 : 1;
        atom = { k: "set", ranges: [[cp, cp]] };
      }
      items.push(this.quantified(atom));
    }
    return items;
  }
  private quantifierAhead() {
    return /^\{\d+(,\d*)?\}/.test(this.src.slice(this.i));
  }
  private quantified(atom: Re): Re {
    const c = this.src[this.i];
    let min: number, max: number;
    if (c === "*") [min, max] = [0, Infinity];
    else if (c === "+") [min, max] = [1, Infinity];
    else if (c === "?") [min, max] = [0, 1];
    else if (c === "{" && this.quantifierAhead()) {
      const m = /^\{(\d+)(,(\d*))?\}/.exec(this.src.slice(this.i))!;
      min = Number(m[1]);
      max = m[2] === undefined ? min : m[3] === "" ? Infinity : Number(m[3]);
      if (max < min) this.fail(`quantifier {${min},${max}} is out of order`);
      this.i += m[0].length - 1;
    } else return atom;
    this.i++;
    if (this.src[this.i] === "?") this.i++; // lazy: the same set of strings
    return { k: "rep", item: atom, min, max };
  }
  private charClass(): Ranges {
    this.i++; // [
    let negated = false;
    if (this.src[this.i] === "^") {
      negated = true;
      this.i++;
    }
    const ranges: Ranges = [];
    let first = true;
    while (this.src[this.i] !== "]" || (first && false)) {
      if (this.i >= this.src.length) this.fail("unterminated character class");
      first = false;
      const lo = this.classAtom();
      if (this.src[this.i] === "-" && this.src[this.i + 1] !== "]" && this.i + 1 < this.src.length) {
        this.i++;
        const hi = this.classAtom();
        if (lo.length !== 1 || hi.length !== 1 || lo[0][0] !== lo[0][1] || hi[0][0] !== hi[0][1]) this.fail("a class escape cannot bound a range");
        if (hi[0][0] < lo[0][0]) this.fail("character class range out of order");
        ranges.push([lo[0][0], hi[0][0]]);
      } else ranges.push(...lo);
    }
    this.i++;
    return negated ? complement(ranges) : normalize(ranges);
  }
  private classAtom(): Ranges {
    if (this.src[this.i] === "\\") return this.escape(true);
    const cp = this.src.codePointAt(this.i)!;
    this.i += cp > 0xffff ? 2 : 1;
    return [[cp, cp]];
  }
  private escape(inClass: boolean): Ranges {
    const e = this.src[this.i + 1];
    if (e === undefined) this.fail("pattern ends with a backslash");
    this.i += 2;
    const one = (cp: number): Ranges => [[cp, cp]];
    switch (e) {
      case "d": return DIGIT;
      case "D": return complement(DIGIT);
      case "w": return WORD;
      case "W": return complement(WORD);
      case "s": return SPACE;
      case "S": return complement(SPACE);
      case "n": return one(10);
      case "r": return one(13);
      case "t": return one(9);
      case "f": return one(12);
      case "v": return one(11);
      case "0": return one(0);
      case "b":
        if (inClass) return one(8);
        return this.fail("word boundary \\b has no grammar equivalent");
      case "x": {
        const h = /^[0-9a-fA-F]{2}/.exec(this.src.slice(this.i));
        if (!h) this.fail("\\x needs two hex digits");
        this.i += 2;
        return one(parseInt(h[0], 16));
      }
      case "u": {
        const braced = /^\{([0-9a-fA-F]{1,6})\}/.exec(this.src.slice(this.i));
        if (braced) {
          this.i += braced[0].length;
          return one(parseInt(braced[1], 16));
        }
        const h = /^[0-9a-fA-F]{4}/.exec(this.src.slice(this.i));
        if (!h) this.fail("\\u needs four hex digits");
        this.i += 4;
        return one(parseInt(h[0], 16));
      }
      default:
        if (/[1-9]/.test(e) || e === "k") this.fail(`backreference \\${e} has no grammar equivalent`);
        if (e === "p" || e === "P") this.fail(`Unicode property escape \\${e} is not supported`);
        if (e === "B") this.fail("\\B has no grammar equivalent");
        if (e === "c") this.fail("control escape \\c is not supported");
        if (/[A-Za-z0-9]/.test(e)) this.fail(`unknown escape \\${e}`);
        return one(e.codePointAt(0)!);
    }
  }
}

function regexLengths(re: Re): [number, number] {
  switch (re.k) {
    case "set": return [1, 1];
    case "start": case "end": return [0, 0];
    case "rep": {
      const [a, b] = regexLengths(re.item);
      return [a * re.min, b === 0 ? 0 : b * re.max];
    }
    case "alt": {
      let lo = Infinity, hi = 0;
      for (const seq of re.alts) {
        let a = 0, b = 0;
        for (const item of seq) {
          const [x, y] = regexLengths(item);
          a += x;
          b += y;
        }
        lo = Math.min(lo, a);
        hi = Math.max(hi, b);
      }
      return [lo, hi];
    }
  }
}

/** Short JSON escapes; other control characters as \u00XX. */
const JSON_ESCAPES: Record<number, string> = { 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r", 34: "\\\"", 92: "\\\\" };
const NEEDS_ESCAPE: Ranges = [[0, 0x1f], [34, 34], [92, 92]];
const SURROGATES: Ranges = [[0xd800, 0xdfff]];

/** A set of characters as GBNF over their JSON encoding: plain ones in a class, the rest as escape literals. */
function setToGbnf(ranges: Ranges): string {
  const usable = subtract(ranges, SURROGATES);
  const plain = subtract(usable, NEEDS_ESCAPE);
  const alts: string[] = [];
  if (plain.length) {
    const body = plain.map(([a, b]) => (a === b ? gbnfChar(a, true) : `${gbnfChar(a, true)}-${gbnfChar(b, true)}`)).join("");
    alts.push(`[${body}]`);
  }
  for (const [a, b] of intersect(usable, NEEDS_ESCAPE)) {
    for (let cp = a; cp <= b; cp++) alts.push(gbnfLiteral(JSON_ESCAPES[cp] ?? `\\u${cp.toString(16).padStart(4, "0")}`));
  }
  if (!alts.length) throw new QwenError("ERR_SCHEMA_UNSUPPORTED", "a character class matches no character");
  return alts.length > 1 ? `(${alts.join(" | ")})` : alts[0];
}

// ---------- the converter ----------

export interface ConvertOptions {
  /** Prefix of the rule names this schema adds (several schemas can share one converter). */
  prefix?: string;
}

/** Converts schemas into the rules of one grammar; `grammar(rootExpr)` writes it out. */
export class SchemaConverter {
  private readonly rules = new Map<string, string>();
  private doc: Schema = true;
  private depth = 0;
  private docKey = "";
  private readonly refRules = new Map<string, string>();

  /** Adds the rules for `schema`; returns the name of the rule that matches one instance (followed by whitespace). */
  convert(schema: unknown, options: ConvertOptions = {}): string {
    this.doc = schema as Schema;
    this.docKey = options.prefix ?? "root";
    return this.visit(schema, options.prefix ?? "", "");
  }

  /** The grammar text: `root ::= rootExpr`, then every rule. Checked with our GBNF reader before it is returned. */
  grammar(rootExpr: string): string {
    const lines = [`root ::= ${rootExpr}`];
    for (const [name, body] of [...this.rules].sort(([a], [b]) => a.localeCompare(b))) lines.push(`${name} ::= ${body}`);
    const text = `${lines.join("\n")}\n`;
    parseGbnf(text); // a bug here would otherwise surface as a native error at generation time
    return text;
  }

  /** Adds (or reuses) a rule; returns its name. */
  addRule(name: string, body: string): string {
    const base = name.replace(/[^a-zA-Z0-9-]+/g, "-").replace(/^-+|-+$/g, "") || "r";
    const key = base === "root" ? "root-0" : base;
    if (!this.rules.has(key) || this.rules.get(key) === body) {
      this.rules.set(key, body);
      return key;
    }
    for (let i = 1; ; i++) {
      const k = `${key}${i}`;
      if (!this.rules.has(k) || this.rules.get(k) === body) {
        this.rules.set(k, body);
        return k;
      }
    }
  }

  primitive(name: string): string {
    const p = PRIMITIVES[name];
    if (!this.rules.has(name)) {
      this.rules.set(name, p.body);
      for (const d of p.deps) this.primitive(d);
    }
    return name;
  }

  private visit(schema: unknown, name: string, pointer: string): string {
    // A schema from a request is untrusted: nesting deep enough to exhaust the stack must be a clear error
    if (++this.depth > MAX_SCHEMA_DEPTH) {
      throw new QwenError("ERR_SCHEMA_UNSUPPORTED", `JSON Schema nested deeper than ${MAX_SCHEMA_DEPTH} levels (at ${at(pointer).slice(0, 120)}…)`);
    }
    try {
      return this.visitNode(schema, name, pointer);
    } finally {
      this.depth--;
    }
  }

  private visitNode(schema: unknown, name: string, pointer: string): string {
    if (schema === true) return this.primitive("value");
    if (schema === false) unsupported("false", pointer, "a false schema admits no value to generate");
    if (!isObject(schema)) invalid(pointer, `a schema must be an object or a boolean, got ${JSON.stringify(schema)}`);
    for (const key of Object.keys(schema)) if (!KNOWN.has(key)) unsupported(key, `${pointer}/${pointerPart(key)}`);
    const constraints = Object.keys(schema).filter((k) => !ANNOTATIONS.has(k) && !STRUCTURE.has(k));
    const ruleName = name || "root";

    if ("$ref" in schema) {
      const others = constraints.filter((k) => k !== "$ref");
      if (others.length) unsupported(others[0], `${pointer}/${pointerPart(others[0])}`, "keywords beside $ref are not supported");
      return this.ref(schema.$ref, pointer);
    }
    const combiner = (["anyOf", "oneOf", "allOf"] as const).find((k) => k in schema);
    if (combiner) {
      const others = constraints.filter((k) => k !== combiner);
      if (others.length) unsupported(others[0], `${pointer}/${pointerPart(others[0])}`, `keywords beside ${combiner} are not supported (move them into each alternative)`);
      const list = schema[combiner];
      if (!Array.isArray(list) || list.length === 0) invalid(`${pointer}/${combiner}`, `${combiner} must be a non-empty array`);
      if (combiner === "allOf") return this.visit(this.mergeAllOf(list, `${pointer}/allOf`), name, pointer);
      // oneOf is generated like anyOf: exclusivity cannot be enforced by a grammar, so keep its alternatives disjoint
      const alts = list.map((s, i) => this.visit(s, `${ruleName}-${i}`, `${pointer}/${combiner}/${i}`));
      return this.addRule(ruleName, alts.join(" | "));
    }
    if ("const" in schema) return this.addRule(ruleName, `${this.jsonLiteral(schema.const as Json)} ${this.primitive("space")}`);
    if ("enum" in schema) {
      const values = schema.enum;
      if (!Array.isArray(values) || values.length === 0) invalid(`${pointer}/enum`, "enum must be a non-empty array");
      const types = this.types(schema, pointer);
      const kept = values.filter((v) => !types || types.includes(jsonType(v as Json)) || (types.includes("number") && jsonType(v as Json) === "integer"));
      if (!kept.length) invalid(`${pointer}/enum`, `no enum value has the type ${types!.join(" or ")}`);
      return this.addRule(ruleName, `(${kept.map((v) => this.jsonLiteral(v as Json)).join(" | ")}) ${this.primitive("space")}`);
    }

    let types = this.types(schema, pointer);
    if (!types) {
      // no type: the keywords present imply it (JSON Schema applies them only to instances of their type, so a
      // value of any other type would be valid too; we generate the implied type, a sound subset)
      const implied = new Set<string>();
      for (const k of constraints) {
        if (OBJECT_KEYWORDS.includes(k)) implied.add("object");
        else if (ARRAY_KEYWORDS.includes(k)) implied.add("array");
        else if (STRING_KEYWORDS.includes(k)) implied.add("string");
        else if (NUMBER_KEYWORDS.includes(k)) implied.add("number");
      }
      if (!implied.size) return this.primitive("value");
      types = [...implied];
    }
    const alts = types.map((t) => this.typed(schema, t, types!.length > 1 ? `${ruleName}-${t}` : ruleName, pointer));
    return alts.length === 1 ? alts[0] : this.addRule(ruleName, alts.join(" | "));
  }

  private types(schema: Record<string, unknown>, pointer: string): string[] | undefined {
    if (!("type" in schema)) return undefined;
    const t = schema.type;
    const list = Array.isArray(t) ? t : [t];
    if (!list.length) invalid(`${pointer}/type`, "type must not be an empty array");
    for (const x of list) if (typeof x !== "string" || !TYPES.includes(x)) invalid(`${pointer}/type`, `unknown type ${JSON.stringify(x)}`);
    return list as string[];
  }

  private typed(schema: Record<string, unknown>, type: string, name: string, pointer: string): string {
    switch (type) {
      case "object": return this.object(schema, name, pointer);
      case "array": return this.array(schema, name, pointer);
      case "string": return this.string(schema, name, pointer);
      case "number": case "integer": return this.number(schema, name, pointer, type === "integer");
      case "boolean": return this.primitive("boolean");
      default: return this.primitive("null");
    }
  }

  private ref(ref: unknown, pointer: string): string {
    if (typeof ref !== "string") invalid(`${pointer}/$ref`, "$ref must be a string");
    if (ref !== "#" && !ref.startsWith("#/")) unsupported("$ref", pointer, `only local references (#/$defs/…, #/definitions/…) are supported, got ${JSON.stringify(ref)}`);
    const key = `${this.docKey}\0${ref}`;
    const known = this.refRules.get(key);
    if (known) return known;
    const parts = ref === "#" ? [] : ref.slice(2).split("/").map((p) => decodeURIComponent(p).replace(/~1/g, "/").replace(/~0/g, "~"));
    let target: unknown = this.doc;
    for (const p of parts) {
      if (!isObject(target) && !Array.isArray(target)) invalid(pointer, `$ref ${ref} does not resolve`);
      target = (target as Record<string, unknown>)[p];
      if (target === undefined) invalid(pointer, `$ref ${ref} does not resolve`);
    }
    // reserve the rule's name first: a recursive reference then refers to it by name
    const base = `${this.docKey === "root" ? "" : `${this.docKey}-`}${parts.length ? parts[parts.length - 1] : "root-ref"}`;
    const ruleName = this.addRule(base, `\0${key}`); // a placeholder body, unique to this reference
    this.refRules.set(key, ruleName);
    if (isObject(target) && typeof target.$ref === "string" && target.$ref === ref) invalid(pointer, `$ref ${ref} refers to itself`);
    const inner = this.visit(target, `${ruleName}-body`, ref.slice(1));
    this.rules.set(ruleName, inner);
    return ruleName;
  }

  /** allOf of object schemas: one object with every property and requirement; anything else is unsupported. */
  private mergeAllOf(list: unknown[], pointer: string): Record<string, unknown> {
    const properties: Record<string, unknown> = {};
    const required = new Set<string>();
    let additional: unknown;
    list.forEach((raw, i) => {
      let s = raw;
      for (let depth = 0; isObject(s) && typeof s.$ref === "string"; depth++) {
        if (depth > 32) invalid(`${pointer}/${i}`, "$ref chain too long");
        s = this.resolve(s.$ref as string, `${pointer}/${i}`);
      }
      if (!isObject(s)) unsupported("allOf", pointer, "only objects can be combined with allOf");
      const one: Record<string, unknown> = s;
      s = "allOf" in one ? this.mergeAllOf(one.allOf as unknown[], `${pointer}/${i}/allOf`) : one;
      const obj = s as Record<string, unknown>;
      const keys = Object.keys(obj).filter((k) => !ANNOTATIONS.has(k) && !STRUCTURE.has(k));
      const other = keys.find((k) => !OBJECT_KEYWORDS.includes(k) && !(k === "type" && obj.type === "object"));
      if (other) unsupported("allOf", `${pointer}/${i}`, `only object schemas (type, properties, required, additionalProperties) can be combined, found "${other}"`);
      for (const [k, v] of Object.entries((obj.properties as Record<string, unknown>) ?? {})) {
        if (k in properties && JSON.stringify(properties[k]) !== JSON.stringify(v)) unsupported("allOf", pointer, `property ${JSON.stringify(k)} is defined differently in two branches`);
        properties[k] = v;
      }
      for (const r of (obj.required as string[]) ?? []) required.add(r);
      if (obj.additionalProperties === false) additional = false;
      else if (obj.additionalProperties !== undefined && obj.additionalProperties !== true) unsupported("additionalProperties", `${pointer}/${i}`, "an additionalProperties schema cannot be combined with allOf");
    });
    return { type: "object", properties, required: [...required], ...(additional === false ? { additionalProperties: false } : {}) };
  }

  private resolve(ref: string, pointer: string): unknown {
    if (ref !== "#" && !ref.startsWith("#/")) unsupported("$ref", pointer, `only local references are supported, got ${JSON.stringify(ref)}`);
    let target: unknown = this.doc;
    for (const p of ref === "#" ? [] : ref.slice(2).split("/")) {
      target = isObject(target) ? target[p.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined;
      if (target === undefined) invalid(pointer, `$ref ${ref} does not resolve`);
    }
    return target;
  }

  private jsonLiteral(value: Json): string {
    return gbnfLiteral(JSON.stringify(value));
  }

  private object(schema: Record<string, unknown>, name: string, pointer: string): string {
    const props = schema.properties ?? {};
    if (!isObject(props)) invalid(`${pointer}/properties`, "properties must be an object");
    const required = schema.required ?? [];
    if (!Array.isArray(required) || required.some((r) => typeof r !== "string")) invalid(`${pointer}/required`, "required must be an array of strings");
    const entries: Array<[string, unknown, boolean]> = Object.entries(props).map(([k, v]) => [k, v, required.includes(k)]);
    // a required name without a schema: any value
    for (const r of required as string[]) if (!(r in props)) entries.push([r, true, true]);
    const additional = schema.additionalProperties;
    const sp = this.primitive("space");
    // absent additionalProperties with listed properties: we generate only the listed ones (valid, and what a
    // caller of structured output wants); with no properties listed, any object
    let extraValue: string | undefined;
    if (additional === undefined) extraValue = entries.length ? undefined : this.primitive("value");
    else if (additional === true) extraValue = this.primitive("value");
    else if (additional !== false) extraValue = this.visit(additional, `${name}-additional`, `${pointer}/additionalProperties`);
    if (!entries.length && (additional === undefined || additional === true)) return this.primitive("object");

    const kv = entries.map(([key, sub]) => {
      const value = this.visit(sub, `${name}-${key}`, `${pointer}/properties/${pointerPart(key)}`);
      return this.addRule(`${name}-${key}-kv`, `${gbnfLiteral(JSON.stringify(key))} ${sp} ":" ${sp} ${value}`);
    });
    let extraKv: string | undefined;
    if (extraValue) {
      const key = entries.length ? this.notStrings(entries.map(([k]) => k), `${name}-additional-key`) : this.primitive("string");
      extraKv = this.addRule(`${name}-additional-kv`, `${key} ":" ${sp} ${extraValue}`);
    }
    // properties in declared order, optional ones optional; the comma goes before every property but the first
    // one present, so `first(i)` (nothing written yet) and `after(i)` (something written) are told apart
    const after = (i: number): string => {
      const parts: string[] = [];
      for (let j = i; j < entries.length; j++) parts.push(entries[j][2] ? `"," ${sp} ${kv[j]}` : `("," ${sp} ${kv[j]})?`);
      if (extraKv) parts.push(`("," ${sp} ${extraKv})*`);
      return parts.join(" ");
    };
    const firstRules = new Map<number, string>();
    const first = (i: number): string => {
      if (i === entries.length) return extraKv ? `(${extraKv} ("," ${sp} ${extraKv})*)?` : "";
      const here = `${kv[i]}${after(i + 1) ? ` ${after(i + 1)}` : ""}`;
      if (entries[i][2]) return here;
      const rest = first(i + 1);
      if (!rest) return `(${here})?`;
      if (!firstRules.has(i + 1)) firstRules.set(i + 1, this.addRule(`${name}-rest-${i + 1}`, rest));
      return `(${here} | ${firstRules.get(i + 1)})`;
    };
    const body = first(0);
    return this.addRule(name, `"{" ${sp} ${body ? `${body} ` : ""}"}" ${sp}`);
  }

  /** A JSON string that is none of `names` (keys of additional properties must not repeat a listed one). */
  private notStrings(names: string[], ruleName: string): string {
    interface Node { children: Map<number, Node>; end: boolean }
    const root: Node = { children: new Map(), end: false };
    for (const n of names) {
      let node = root;
      for (const ch of JSON.stringify(n).slice(1, -1)) {
        const cp = ch.codePointAt(0)!;
        if (!node.children.has(cp)) node.children.set(cp, { children: new Map(), end: false });
        node = node.children.get(cp)!;
      }
      node.end = true;
    }
    const char = this.primitive("char");
    const plainChar = complement([[0, 0x1f], [34, 34], [92, 92], [0x7f, 0x7f], ...SURROGATES]);
    // strings that leave the trie (or end at a node that is not a listed name); escapes only after the first
    // character that differs, so the walk over the trie stays exact
    const visit = (node: Node, depth: number): string => {
      const alts: string[] = [];
      if (!node.end && depth > 0) alts.push(`""`);
      for (const [cp, child] of [...node.children].sort(([a], [b]) => a - b)) {
        if (cp === 92) continue; // a listed name with an escape: never generated as a prefix (sound)
        alts.push(`${gbnfLiteral(String.fromCodePoint(cp))} (${visit(child, depth + 1)})`);
      }
      const others = subtract(plainChar, [...node.children.keys()].map((c) => [c, c] as [number, number]));
      if (others.length) alts.push(`${setToGbnf(others)} ${char}*`);
      return alts.join(" | ");
    };
    return this.addRule(ruleName, `"\\"" (${visit(root, 0)}) "\\"" ${this.primitive("space")}`);
  }

  private array(schema: Record<string, unknown>, name: string, pointer: string): string {
    const sp = this.primitive("space");
    const minItems = this.count(schema, "minItems", pointer) ?? 0;
    const maxItems = this.count(schema, "maxItems", pointer) ?? Infinity;
    if (minItems > maxItems) invalid(pointer, `minItems ${minItems} > maxItems ${maxItems}`);
    const prefix = schema.prefixItems ?? [];
    if (!Array.isArray(prefix)) invalid(`${pointer}/prefixItems`, "prefixItems must be an array");
    const items = schema.items;
    if (Array.isArray(items)) unsupported("items", `${pointer}/items`, "the array form of items (draft 4–2019) is not supported; use prefixItems");
    const itemRule = items === false ? undefined : items === undefined || items === true ? this.primitive("value") : this.visit(items, `${name}-item`, `${pointer}/items`);
    // prefix items are all written (when maxItems allows): a shorter array would be valid too, but a caller who
    // lists prefixItems wants them
    const fixed = prefix.slice(0, Math.min(prefix.length, maxItems)).map((s, i) => this.visit(s, `${name}-${i}`, `${pointer}/prefixItems/${i}`));
    const restMin = Math.max(0, minItems - fixed.length);
    const restMax = itemRule ? maxItems - fixed.length : 0;
    if (restMin > restMax) unsupported("minItems", `${pointer}/minItems`, `minItems ${minItems} cannot be met with items: false after ${fixed.length} prefixItems`);
    const chunkOf = (item: string) => () => this.addRule(`${name}-chunk`, `${item}{1000}`);
    let body: string;
    if (fixed.length) {
      const sep = fixed.map((r, i) => (i === 0 ? r : `"," ${sp} ${r}`)).join(" ");
      const more = itemRule && restMax > 0 ? repetition(this.addRule(`${name}-more`, `"," ${sp} ${itemRule}`), restMin, restMax, chunkOf(`${name}-more`)) : "";
      body = more ? `${sep} ${more}` : sep;
    } else if (!itemRule || maxItems === 0) {
      body = "";
    } else {
      const more = this.addRule(`${name}-more`, `"," ${sp} ${itemRule}`);
      const tail = repetition(more, Math.max(0, minItems - 1), maxItems - 1, chunkOf(more));
      body = `${itemRule}${tail ? ` ${tail}` : ""}`;
      if (minItems === 0) body = `(${body})?`;
    }
    return this.addRule(name, `"[" ${sp} ${body ? `${body} ` : ""}"]" ${sp}`);
  }

  private count(schema: Record<string, unknown>, key: string, pointer: string): number | undefined {
    const v = schema[key];
    if (v === undefined) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) invalid(`${pointer}/${key}`, `${key} must be a non-negative integer`);
    return v;
  }

  private string(schema: Record<string, unknown>, name: string, pointer: string): string {
    const sp = this.primitive("space");
    const minLength = this.count(schema, "minLength", pointer);
    const maxLength = this.count(schema, "maxLength", pointer);
    if (minLength !== undefined && maxLength !== undefined && minLength > maxLength) invalid(pointer, `minLength ${minLength} > maxLength ${maxLength}`);
    const format = schema.format;
    const pattern = schema.pattern;
    if (format !== undefined) {
      if (typeof format !== "string" || !FORMATS.includes(format)) unsupported("format", `${pointer}/format`, `format ${JSON.stringify(format)} is not supported (supported: ${FORMATS.join(", ")})`);
      if (pattern !== undefined || minLength !== undefined || maxLength !== undefined) unsupported("format", `${pointer}/format`, "format together with pattern, minLength or maxLength is not supported");
      return this.addRule(name, `"\\"" ${this.primitive(format)} "\\"" ${sp}`);
    }
    if (pattern !== undefined) {
      if (typeof pattern !== "string") invalid(`${pointer}/pattern`, "pattern must be a string");
      try {
        new RegExp(pattern, "u");
      } catch (err) {
        invalid(`${pointer}/pattern`, `not a regular expression: ${(err as Error).message}`);
      }
      const re = new RegexParser(pattern, (why) => unsupported("pattern", `${pointer}/pattern`, `${JSON.stringify(pattern)}: ${why}`)).parse();
      // minLength/maxLength with a pattern: fine only when the pattern's own lengths already satisfy them
      const [lo, hi] = regexLengths(re);
      if ((minLength !== undefined && lo < minLength) || (maxLength !== undefined && hi > maxLength)) {
        unsupported("pattern", `${pointer}/pattern`, "a pattern together with minLength/maxLength is supported only when the pattern's lengths lie within them");
      }
      return this.addRule(name, `"\\"" ${this.pattern(re, name, pointer)} "\\"" ${sp}`);
    }
    const char = this.primitive("char");
    if (minLength === undefined && maxLength === undefined) return this.primitive("string");
    const chars = repetition(char, minLength ?? 0, maxLength ?? Infinity, () => this.addRule("char-chunk", `${char}{1000}`));
    return this.addRule(name, `"\\"" ${chars ? `${chars} ` : ""}"\\"" ${sp}`);
  }

  private pattern(re: Re, name: string, pointer: string): string {
    const fail = (why: string): never => unsupported("pattern", `${pointer}/pattern`, why);
    const char = this.primitive("char");
    let groups = 0;
    const expr = (node: Re, top: boolean): string => {
      switch (node.k) {
        case "set": return setToGbnf(node.ranges);
        case "start": case "end": return fail("^ and $ are supported only at the start and the end of the pattern (or of its top-level alternatives)");
        case "rep": {
          let item = expr(node.item, false);
          if (/\s/.test(item) && !/^\([^()]*\)$/.test(item)) item = `(${item})`;
          if (node.max > 1000 || node.min > 1000) item = this.addRule(`${name}-pattern-${groups++}`, item);
          return repetition(item, node.min, node.max, () => this.addRule(`${name}-pattern-chunk-${groups++}`, `${item}{1000}`)) || `""`;
        }
        case "alt": {
          const alts = node.alts.map((seq) => {
            let items = seq;
            let prefix = "", suffix = "";
            if (top) {
              // JSON Schema patterns are unanchored: without ^ (or $) any text may come before (or after)
              if (items[0]?.k === "start") items = items.slice(1);
              else prefix = `${char}*`;
              if (items[items.length - 1]?.k === "end") items = items.slice(0, -1);
              else suffix = `${char}*`;
            }
            const body = items.map((x) => expr(x, false)).filter(Boolean).join(" ");
            return [prefix, body, suffix].filter(Boolean).join(" ") || `""`;
          });
          return alts.length > 1 || !top ? `(${alts.join(" | ")})` : alts[0];
        }
      }
    };
    return expr(re, true);
  }

  private number(schema: Record<string, unknown>, name: string, pointer: string, integer: boolean): string {
    const num = (key: string): number | undefined => {
      const v = schema[key];
      if (v === undefined || typeof v === "boolean") return undefined;
      if (typeof v !== "number" || !Number.isFinite(v)) invalid(`${pointer}/${key}`, `${key} must be a finite number`);
      return v;
    };
    // draft 4 wrote exclusiveMinimum/exclusiveMaximum as booleans beside minimum/maximum
    let lo = num("minimum"), hi = num("maximum");
    let loExclusive = schema.exclusiveMinimum === true, hiExclusive = schema.exclusiveMaximum === true;
    const exMin = num("exclusiveMinimum"), exMax = num("exclusiveMaximum");
    if (exMin !== undefined && (lo === undefined || exMin >= lo)) [lo, loExclusive] = [exMin, true];
    if (exMax !== undefined && (hi === undefined || exMax <= hi)) [hi, hiExclusive] = [exMax, true];
    const sp = this.primitive("space");
    if (lo === undefined && hi === undefined) return this.primitive(integer ? "integer" : "number");

    // past 16 digits a side is open (every generated value is below 10^16 in magnitude, so still in range)
    const LIMIT = 1e16;
    if ((lo !== undefined && lo >= LIMIT) || (hi !== undefined && hi <= -LIMIT)) unsupported(lo !== undefined && lo >= LIMIT ? "minimum" : "maximum", pointer, "bounds beyond 16 digits are not supported");
    const big = (x: number) => BigInt(x);
    const intLo = lo === undefined || lo <= -LIMIT ? null : big(loExclusive ? Math.floor(lo) + 1 : Math.ceil(lo));
    const intHi = hi === undefined || hi >= LIMIT ? null : big(hiExclusive ? Math.ceil(hi) - 1 : Math.floor(hi));
    const alts: string[] = [];
    if (intLo === null || intHi === null || intLo <= intHi) alts.push(integerRange(intLo, intHi));
    if (!integer) {
      // k.f with a non-zero fraction lies strictly between k and k+1 (−k.f between −k−1 and −k): a whole unit
      // interval inside [lo, hi] is needed. Near a non-integer bound the partial unit interval is left out.
      const frac = `"." [0-9]{0,${MAX_DIGITS - 2}} [1-9]`;
      const ceilLo = lo === undefined || lo <= -LIMIT ? null : big(Math.ceil(lo));
      const floorHi = hi === undefined || hi >= LIMIT ? null : big(Math.floor(hi));
      const posLo = ceilLo !== null && ceilLo > 0n ? ceilLo : 0n;
      const posHi = floorHi === null ? null : floorHi - 1n;
      if (posHi === null || posLo <= posHi) alts.push(`${nonNegativeRange(posLo, posHi)} ${frac}`);
      const negLo = floorHi !== null && -floorHi > 0n ? -floorHi : 0n;
      const negHi = ceilLo === null ? null : -ceilLo - 1n;
      if (negHi === null || negLo <= negHi) alts.push(`"-" ${nonNegativeRange(negLo, negHi)} ${frac}`);
    }
    if (!alts.length) unsupported("minimum", pointer, `no ${integer ? "integer" : "number"} lies in the range`);
    return this.addRule(name, `(${alts.join(" | ")}) ${sp}`);
  }
}

function jsonType(v: Json): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;
}

/**
 * JSON Schema → GBNF (root rule `root`) for llama.cpp's grammar sampler. Output is compact JSON with bounded
 * optional whitespace (`space ::= | " " | "\n"{1,2} [ \t]{0,20}`) after every token.
 *
 * Supported: type (one or a list), enum/const of any JSON value, anyOf/oneOf (oneOf as anyOf: keep alternatives
 * disjoint), allOf of object schemas (merged), $ref to local pointers (#/$defs/…, #/definitions/…, recursion
 * allowed); objects: properties in declared order (optional ones may be left out), required, additionalProperties
 * false / true / a schema — when absent and properties are listed, only listed properties are generated; with no
 * properties, any object; arrays: items, prefixItems, minItems, maxItems; strings: minLength, maxLength, pattern
 * (literals, classes, `. \d \w \s` and negations, groups, alternation, quantifiers; anchors only at the ends;
 * unanchored ends allow any text, as JSON Schema patterns are searches), format date/time/date-time/uuid;
 * integers: exact digit-range grammars for minimum/maximum/exclusive*, at most 16 digits on an open side;
 * numbers: integers in range plus decimals with a non-zero fraction inside whole unit intervals of the range (no
 * exponent when bounded); annotations (description, title, $schema, $id, default, examples, …) are ignored.
 * Anything else throws QwenError ERR_SCHEMA_UNSUPPORTED naming the keyword and its JSON pointer.
 */
export function jsonSchemaToGbnf(schema: unknown): string {
  const c = new SchemaConverter();
  return c.grammar(c.convert(schema));
}

/** Any JSON object, for `response_format: { type: "json_object" }`. */
export const JSON_VALUE_GBNF: string = (() => {
  const c = new SchemaConverter();
  return c.grammar(c.primitive("object"));
})();
