// What a Node.js producer's own tools say of fraudstream's wire contract: the published JSON
// Schemas judged by Ajv (the JSON Schema validator most JavaScript services use, draft 2020-12,
// ECMAScript regular expressions), and the key of a text id computed with node:crypto from the
// rule the schema states (first 8 bytes of SHA-256 of the UTF-8, big-endian, top bit cleared).
//
// stdin: {"schemas": {"transaction": {...}, "label": {...}}, "cases": [{"kind", "doc"}],
//         "texts": ["tok_abc", ...]}
// stdout: {"valid": [true, ...], "keys": ["1234...", ...]}  (keys as decimal strings)
import { createHash } from "node:crypto";
import Ajv2020 from "ajv/dist/2020.js";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { schemas, cases, texts } = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const ajv = new Ajv2020({ strict: false });
for (const schema of Object.values(schemas)) ajv.addSchema(schema);
const valid = cases.map(({ kind, doc }) => ajv.validate(schemas[kind].$id, doc));

const TOP_BIT_CLEAR = (1n << 63n) - 1n;
const keys = texts.map((text) => {
  const digest = createHash("sha256").update(text, "utf8").digest();
  return (digest.readBigUInt64BE(0) & TOP_BIT_CLEAR).toString();
});
process.stdout.write(JSON.stringify({ valid, keys }));
