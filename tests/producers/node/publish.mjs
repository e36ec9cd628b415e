// Publish one message per stdin line to a Pub/Sub topic with the official Node.js client, as
// a Node service would: `node publish.mjs PROJECT TOPIC < messages.jsonl`. Each line is
// {"data": <any JSON value, sent as its JSON text>, "attributes": {...}} ; prints the ids.
// The client reads PUBSUB_EMULATOR_HOST itself (the tests point it at the emulator).
import { PubSub } from "@google-cloud/pubsub";
import { createInterface } from "node:readline";

const [project, topicName] = process.argv.slice(2);
const topic = new PubSub({ projectId: project }).topic(topicName);
const ids = [];
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { data, attributes } = JSON.parse(line);
  const text = typeof data === "string" ? data : JSON.stringify(data);
  ids.push(await topic.publishMessage({ data: Buffer.from(text), attributes: attributes ?? {} }));
}
await topic.flush();
console.log(JSON.stringify(ids));
