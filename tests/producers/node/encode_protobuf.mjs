// Encode one protobuf message per stdin line as Pub/Sub's Node.js sample for protobuf schema
// topics does: the .proto loaded with protobufjs, each object made a message with fromObject,
// then BINARY (Type.encode) or JSON (toJSON: int64 as strings, default values left out).
// `node encode_protobuf.mjs SCHEMA.proto MESSAGE_TYPE BINARY|JSON < objects.jsonl`; prints each
// payload in base64, one per line (the tests publish nothing: the Pub/Sub emulator has no
// protobuf schemas).
import protobuf from "protobufjs";
import { createInterface } from "node:readline";

const [file, typeName, encoding] = process.argv.slice(2);
const type = (await protobuf.load(file)).lookupType(typeName);
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const message = type.fromObject(JSON.parse(line));
  const data =
    encoding === "BINARY"
      ? Buffer.from(type.encode(message).finish())
      : Buffer.from(JSON.stringify(message.toJSON()));
  console.log(data.toString("base64"));
}
