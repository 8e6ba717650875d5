/**
 * Generations under grammars chosen to reach every path of the sampler's grammar masks (native/sampler.cc): JSON
 * whitespace and strings, negated and positive character sets, code point ranges beyond ASCII, `.`, and a token
 * element. Run with QWEN_GGUF_VERIFY_GRAMMAR_MASKS set, every mask is compared with the grammar's verdict on the
 * whole vocabulary. Prints one JSON line: { finished, failures } (failure texts with their codes).
 */
import { loadModel } from "../../src/index.js";
import { jsonSchemaToGbnf, JSON_VALUE_GBNF } from "../../src/grammar/json-schema.js";
import { converted, TINY_QWEN3 } from "./models.js";

export const MASK_GRAMMARS: Record<string, string> = {
  "JSON Schema": jsonSchemaToGbnf({ type: "object", properties: { summary: { type: "string" }, score: { type: "integer", minimum: 1, maximum: 5 } }, required: ["summary", "score"], additionalProperties: false }),
  "any JSON": JSON_VALUE_GBNF,
  "character sets": 'root ::= [^a-m\\x00-\\x1f]{0,4} ([一-龥] | [\\u0400-\\u04FF] | "é")+ . [0-9a-fA-F]+ " "? [^"\\\\]*',
  "token element": 'root ::= [a-z ]{1,6} <think> ([A-Z] | "\\n")+',
};

const { out } = await converted("qwen3-tied-gqa", TINY_QWEN3, "f32");
const model = await loadModel(out, { contextSize: 512, threads: 2 });
const seeds = Number(process.argv[2] ?? 3);
let finished = 0;
const failures: string[] = [];
for (const [name, grammar] of Object.entries(MASK_GRAMMARS)) {
  for (let seed = 0; seed < seeds; seed++) {
    try {
      await model.generate("Go:", { grammar, seed, temperature: 1.5, topK: 0, topP: 1, minP: 0, maxTokens: 40 });
      finished++;
    } catch (err) {
      failures.push(`${name}, seed ${seed}: ${(err as { code?: string }).code} ${(err as Error).message}`);
    }
  }
}
await model.dispose();
console.log(JSON.stringify({ finished, failures }));
