// Publish one Avro record per stdin line to a topic with an Avro Pub/Sub schema, as Pub/Sub's
// Node.js sample does: the topic's schema and encoding from Pub/Sub, the record encoded with
// avsc (BINARY: Avro bytes; JSON: Avro's JSON encoding). `node publish_avro.mjs PROJECT TOPIC
// < records.jsonl`; each line is {"record": {...}, "attributes": {...}}; prints the ids.
import { PubSub } from "@google-cloud/pubsub";
import avro from "avsc";
import { createInterface } from "node:readline";

const [project, topicName] = process.argv.slice(2);
const pubsub = new PubSub({ projectId: project });
const topic = pubsub.topic(topicName);
const [metadata] = await topic.getMetadata();
const { schema: schemaName, encoding } = metadata.schemaSettings;
const definition = await pubsub.schema(schemaName).get();
const type = avro.Type.forSchema(JSON.parse(definition.definition));
const ids = [];
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { record, attributes } = JSON.parse(line);
  const data = encoding === "BINARY" ? type.toBuffer(record) : Buffer.from(type.toString(record));
  ids.push(await topic.publishMessage({ data, attributes: attributes ?? {} }));
}
await topic.flush();
console.log(JSON.stringify(ids));
