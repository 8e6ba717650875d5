/**
 * A reader and a reference matcher for GBNF, llama.cpp's grammar format, written to mirror `llama-grammar.cpp`'s
 * parser: the same syntax (literals, `[…]`/`[^…]` classes, `.`, groups, `* + ? {m} {m,} {m,n}`, `#` comments,
 * newlines ending a rule outside parentheses, `<token>` references), the same checks (every referenced rule
 * defined, a `root` rule, no left recursion, repetition limits). It lets us reject a bad grammar with a message
 * before it reaches the native sampler (which only logs to stderr), and test generated grammars without it.
 */
import { QwenError } from "../errors.js";

export type GbnfExpr =
  | { k: "seq"; items: GbnfExpr[] }
  | { k: "alt"; alts: GbnfExpr[] }
  | { k: "lit"; cps: number[] }
  | { k: "class"; negated: boolean; ranges: Array<[number, number]> }
  | { k: "any" }
  | { k: "ref"; name: string }
  | { k: "token"; text: string; negated: boolean }
  | { k: "rep"; expr: GbnfExpr; min: number; max: number };

export interface GbnfGrammar {
  rules: Map<string, GbnfExpr>;
}

/** llama.cpp's MAX_REPETITION_THRESHOLD. */
const MAX_REPETITION = 2000;

function fail(message: string): never {
  throw new QwenError("ERR_INVALID_ARG_VALUE", `invalid GBNF grammar: ${message}`);
}

const isWordChar = (c: string | undefined) => c !== undefined && /[a-zA-Z0-9-]/.test(c);

/** Parses GBNF text; throws QwenError ERR_INVALID_ARG_VALUE naming the problem and where (line:column). */
export function parseGbnf(text: string): GbnfGrammar {
  if (typeof text !== "string") throw new QwenError("ERR_INVALID_ARG_TYPE", "grammar must be a string");
  const src = text;
  let pos = 0;
  const where = (p = pos) => {
    const before = src.slice(0, p);
    const line = before.split("\n").length;
    const col = p - before.lastIndexOf("\n");
    return `line ${line}, column ${col} (near ${JSON.stringify(src.slice(p, p + 20))})`;
  };
  const space = (newlineOk: boolean) => {
    while (pos < src.length) {
      const c = src[pos];
      if (c === "#") {
        while (pos < src.length && src[pos] !== "\n" && src[pos] !== "\r") pos++;
      } else if (c === " " || c === "\t" || (newlineOk && (c === "\n" || c === "\r"))) {
        pos++;
      } else break;
    }
  };
  const name = () => {
    const start = pos;
    while (isWordChar(src[pos])) pos++;
    if (pos === start) fail(`expecting a rule name at ${where()}`);
    return src.slice(start, pos);
  };
  const int = () => {
    const start = pos;
    while (/[0-9]/.test(src[pos] ?? "")) pos++;
    if (pos === start) fail(`expecting an integer at ${where()}`);
    return Number(src.slice(start, pos));
  };
  const hex = (size: number) => {
    const h = src.slice(pos, pos + size);
    if (!new RegExp(`^[0-9a-fA-F]{${size}}$`).test(h)) fail(`expecting ${size} hex digits at ${where()}`);
    pos += size;
    return parseInt(h, 16);
  };
  const char = (): number => {
    if (pos >= src.length) fail("unexpected end of input");
    if (src[pos] === "\\") {
      const e = src[pos + 1];
      pos += 2;
      switch (e) {
        case "x": return hex(2);
        case "u": return hex(4);
        case "U": return hex(8);
        case "t": return 9;
        case "r": return 13;
        case "n": return 10;
        case "\\": case "\"": case "[": case "]": case "-": return e.charCodeAt(0);
        default: pos -= 2; return fail(`unknown escape at ${where()}`);
      }
    }
    const cp = src.codePointAt(pos)!;
    pos += cp > 0xffff ? 2 : 1;
    return cp;
  };

  const rules = new Map<string, GbnfExpr>();
  const referenced = new Map<string, number>();
  // llama.cpp's symbol table grows with each new name, group and rule a repetition generates; the size a group
  // adds is what its repetition multiplies (the limit check below)
  const names = new Set<string>();
  let symbols = 0;
  const symbol = (n: string) => {
    if (!names.has(n)) {
      names.add(n);
      symbols++;
    }
  };

  const alternates = (nested: boolean): GbnfExpr => {
    const alts = [sequence(nested)];
    while (src[pos] === "|") {
      pos++;
      space(true);
      alts.push(sequence(nested));
    }
    return alts.length === 1 ? alts[0] : { k: "alt", alts };
  };

  const sequence = (nested: boolean): GbnfExpr => {
    const items: GbnfExpr[] = [];
    // llama.cpp counts the rules a repetition would copy; past 2000 it refuses the grammar
    let copies = 1;
    const repeat = (min: number, max: number) => {
      const last = items.pop();
      if (!last) fail(`expecting an item before a repetition operator at ${where()}`);
      const total = max !== Infinity && max > 0 ? max : Math.max(min, 1);
      if (copies * total > MAX_REPETITION) fail(`a repetition of ${total} at ${where()} exceeds llama.cpp's limit of ${MAX_REPETITION} copied rules`);
      copies *= total;
      symbols += max === Infinity ? 1 : max - min;
      items.push({ k: "rep", expr: last, min, max });
    };
    while (pos < src.length) {
      const c = src[pos];
      if (c === "\"") {
        pos++;
        const cps: number[] = [];
        while (src[pos] !== "\"") cps.push(char());
        pos++;
        items.push({ k: "lit", cps });
        copies = 1;
      } else if (c === "[") {
        pos++;
        let negated = false;
        if (src[pos] === "^") {
          negated = true;
          pos++;
        }
        const ranges: Array<[number, number]> = [];
        while (src[pos] !== "]") {
          const lo = char();
          if (src[pos] === "-" && src[pos + 1] !== "]") {
            pos++;
            if (pos >= src.length) fail("unexpected end of input");
            ranges.push([lo, char()]);
          } else ranges.push([lo, lo]);
        }
        pos++;
        items.push({ k: "class", negated, ranges });
        copies = 1;
      } else if (c === "<" || (c === "!" && src[pos + 1] === "<")) {
        const negated = c === "!";
        if (negated) pos++;
        const end = src.indexOf(">", pos);
        if (end < 0) fail(`expecting '>' after ${where()}`);
        items.push({ k: "token", text: src.slice(pos, end + 1), negated });
        pos = end + 1;
        copies = 1;
      } else if (isWordChar(c)) {
        const at = pos;
        const n = name();
        if (!referenced.has(n)) referenced.set(n, at);
        symbol(n);
        items.push({ k: "ref", name: n });
        copies = 1;
      } else if (c === "(") {
        pos++;
        space(true);
        const before = symbols++;
        const inner = alternates(true);
        if (src[pos] !== ")") fail(`expecting ')' at ${where()}`);
        pos++;
        items.push(inner);
        copies = Math.max(1, symbols - before);
      } else if (c === ".") {
        pos++;
        items.push({ k: "any" });
        copies = 1;
      } else if (c === "*" || c === "+" || c === "?") {
        pos++;
        space(nested);
        repeat(c === "+" ? 1 : 0, c === "?" ? 1 : Infinity);
        continue;
      } else if (c === "{") {
        pos++;
        space(nested);
        const min = int();
        space(nested);
        let max = min;
        if (src[pos] === ",") {
          pos++;
          space(nested);
          max = /[0-9]/.test(src[pos] ?? "") ? int() : Infinity;
          space(nested);
        }
        if (src[pos] !== "}") fail(`expecting '}' at ${where()}`);
        pos++;
        if (min > MAX_REPETITION) fail(`a repetition of at least ${min} exceeds llama.cpp's limit of ${MAX_REPETITION}`);
        if (max > MAX_REPETITION) max = Infinity; // what llama.cpp does
        space(nested);
        repeat(min, max);
        continue;
      } else break;
      space(nested);
    }
    return items.length === 1 ? items[0] : { k: "seq", items };
  };

  space(true);
  while (pos < src.length) {
    const n = name();
    symbol(n);
    space(false);
    if (src.slice(pos, pos + 3) !== "::=") fail(`expecting ::= at ${where()}`);
    pos += 3;
    space(true);
    const body = alternates(false);
    if (rules.has(n)) {
      // llama.cpp replaces a rule defined twice; we refuse, as it is almost always a mistake
      fail(`rule ${n} is defined twice`);
    }
    rules.set(n, body);
    if (src[pos] === "\r") pos += src[pos + 1] === "\n" ? 2 : 1;
    else if (src[pos] === "\n") pos++;
    else if (pos < src.length) fail(`expecting a newline or the end at ${where()}`);
    space(true);
  }
  for (const [n, at] of referenced) if (!rules.has(n)) fail(`rule ${n} is used at ${where(at)} but never defined`);
  if (!rules.has("root")) fail("there is no root rule");
  checkLeftRecursion(rules);
  return { rules };
}

function nullable(e: GbnfExpr, known: Map<string, boolean>): boolean {
  switch (e.k) {
    case "seq": return e.items.every((x) => nullable(x, known));
    case "alt": return e.alts.some((x) => nullable(x, known));
    case "lit": return e.cps.length === 0;
    case "rep": return e.min === 0 || nullable(e.expr, known);
    case "ref": return known.get(e.name) ?? false;
    default: return false;
  }
}

/** Rules that can be reached at the start of `e` without consuming input. */
function leftRefs(e: GbnfExpr, known: Map<string, boolean>, out: Set<string>): void {
  switch (e.k) {
    case "seq":
      for (const x of e.items) {
        leftRefs(x, known, out);
        if (!nullable(x, known)) return;
      }
      return;
    case "alt": for (const x of e.alts) leftRefs(x, known, out); return;
    case "rep": leftRefs(e.expr, known, out); return;
    case "ref": out.add(e.name); return;
  }
}

/** llama_grammar_init refuses left-recursive grammars: the sampler's stacks would grow forever. */
function checkLeftRecursion(rules: Map<string, GbnfExpr>) {
  const known = new Map<string, boolean>();
  for (let changed = true; changed;) {
    changed = false;
    for (const [n, e] of rules) {
      if (!known.get(n) && nullable(e, known)) {
        known.set(n, true);
        changed = true;
      }
    }
  }
  const edges = new Map<string, Set<string>>();
  for (const [n, e] of rules) {
    const s = new Set<string>();
    leftRefs(e, known, s);
    edges.set(n, s);
  }
  const state = new Map<string, 1 | 2>();
  const visit = (n: string, path: string[]) => {
    if (state.get(n) === 2) return;
    if (state.get(n) === 1) fail(`left recursion: ${[...path.slice(path.indexOf(n)), n].join(" → ")}`);
    state.set(n, 1);
    for (const m of edges.get(n) ?? []) visit(m, [...path, n]);
    state.set(n, 2);
  };
  for (const n of rules.keys()) visit(n, []);
}

/**
 * Whether `text` is a complete sentence of the grammar's `root` rule (the reference semantics of the native
 * sampler, for tests and debugging; `<token>` references are not supported here).
 */
export function matchGbnf(grammar: GbnfGrammar | string, text: string): boolean {
  const g = typeof grammar === "string" ? parseGbnf(grammar) : grammar;
  const cps = Array.from(text, (c) => c.codePointAt(0)!);
  const memo = new Map<string, Set<number>>();
  const inClass = (e: Extract<GbnfExpr, { k: "class" }>, cp: number) => e.ranges.some(([lo, hi]) => cp >= lo && cp <= hi) !== e.negated;
  const match = (e: GbnfExpr, i: number): Set<number> => {
    switch (e.k) {
      case "lit": {
        for (let j = 0; j < e.cps.length; j++) if (cps[i + j] !== e.cps[j]) return new Set();
        return new Set([i + e.cps.length]);
      }
      case "class": return i < cps.length && inClass(e, cps[i]) ? new Set([i + 1]) : new Set();
      case "any": return i < cps.length ? new Set([i + 1]) : new Set();
      case "token": throw new QwenError("ERR_INVALID_ARG_VALUE", `matchGbnf cannot match token references such as ${e.text}`);
      case "ref": {
        const key = `${e.name}@${i}`;
        let r = memo.get(key);
        if (!r) {
          memo.set(key, new Set()); // no left recursion, so a re-entry at the same position cannot add ends
          r = match(g.rules.get(e.name)!, i);
          memo.set(key, r);
        }
        return r;
      }
      case "seq": {
        let cur = new Set([i]);
        for (const x of e.items) {
          const next = new Set<number>();
          for (const p of cur) for (const q of match(x, p)) next.add(q);
          cur = next;
          if (!cur.size) break;
        }
        return cur;
      }
      case "alt": {
        const out = new Set<number>();
        for (const x of e.alts) for (const q of match(x, i)) out.add(q);
        return out;
      }
      case "rep": {
        const out = new Set<number>();
        let cur = new Set([i]);
        const seen = new Set<number>();
        for (let n = 0; cur.size; n++) {
          if (n >= e.min) for (const p of cur) out.add(p);
          if (n >= e.max) break;
          const next = new Set<number>();
          for (const p of cur) for (const q of match(e.expr, p)) if (n < e.min || !seen.has(q)) next.add(q);
          if (n >= e.min) for (const p of cur) seen.add(p);
          cur = next;
        }
        return out;
      }
    }
  };
  return match({ k: "ref", name: "root" }, 0).has(cps.length);
}

/**
 * A random sentence of the grammar (seeded): what a model with random weights writes under the grammar sampler,
 * minus the tokenizer. For tests and for seeing what a grammar allows. Repetitions take at most 4 extra items;
 * past a depth of 40 the walk takes the shortest way out, so recursive grammars end.
 */
export function sampleGbnf(grammar: GbnfGrammar | string, seed = 1): string {
  if (typeof grammar === "string") grammar = parseGbnf(grammar);
  const g = grammar;
  let state = seed >>> 0 || 1;
  const rand = () => {
    state ^= state << 13; state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5; state >>>= 0;
    return state / 0x100000000;
  };
  const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
  // shortest sentence length of each rule (fixpoint), to steer out of recursion
  const minLen = new Map<string, number>();
  const len = (e: GbnfExpr): number => {
    switch (e.k) {
      case "lit": return e.cps.length;
      case "class": case "any": case "token": return 1;
      case "ref": return minLen.get(e.name) ?? Infinity;
      case "seq": return e.items.reduce((s, x) => s + len(x), 0);
      case "alt": return Math.min(...e.alts.map(len));
      case "rep": return e.min === 0 ? 0 : e.min * len(e.expr);
    }
  };
  for (let changed = true; changed;) {
    changed = false;
    for (const [n, e] of g.rules) {
      const l = len(e);
      if (l < (minLen.get(n) ?? Infinity)) {
        minLen.set(n, l);
        changed = true;
      }
    }
  }
  const POOL = [..."abcXYZ019 _-.:,\"\\/{}[]\n\té中😀", "\u0001", "\u007f"].map((c) => c.codePointAt(0)!);
  const charIn = (e: Extract<GbnfExpr, { k: "class" }>) => {
    const ok = (cp: number) => e.ranges.some(([a, b]) => cp >= a && cp <= b) !== e.negated;
    if (!e.negated && rand() < 0.7) {
      const [a, b] = pick(e.ranges);
      for (let i = 0; i < 20; i++) {
        const cp = a + Math.floor(rand() * (Math.min(b, a + 500) - a + 1));
        if (!(cp >= 0xd800 && cp <= 0xdfff)) return cp;
      }
    }
    const options = POOL.filter(ok);
    if (options.length) return pick(options);
    return e.ranges[0][0];
  };
  const gen = (e: GbnfExpr, depth: number): string => {
    switch (e.k) {
      case "lit": return String.fromCodePoint(...e.cps);
      case "class": return String.fromCodePoint(charIn(e));
      case "any": return String.fromCodePoint(pick(POOL));
      case "token": throw new QwenError("ERR_INVALID_ARG_VALUE", `sampleGbnf cannot write token references such as ${e.text}`);
      case "ref": return gen(g.rules.get(e.name)!, depth + 1);
      case "seq": return e.items.map((x) => gen(x, depth)).join("");
      case "alt": {
        if (depth > 40) {
          const best = Math.min(...e.alts.map(len));
          return gen(e.alts.find((x) => len(x) === best)!, depth);
        }
        return gen(pick(e.alts), depth);
      }
      case "rep": {
        const hi = depth > 40 ? e.min : Math.min(e.max, e.min + 4);
        const n = e.min + Math.floor(rand() * (hi - e.min + 1));
        let s = "";
        for (let i = 0; i < n; i++) s += gen(e.expr, depth + 1);
        return s;
      }
    }
  };
  return gen({ k: "ref", name: "root" }, 0);
}
