// Node clients through drover, doing what their users do. Usage: node clients.mjs DROVER_URL
// Prints one JSON line: each check's outcome. Exits non-zero when any failed.
import { Ollama } from "ollama";
import OpenAI from "openai";
import { ChatOllama } from "@langchain/ollama";

const url = process.argv[2];
const results = {};
const check = async (name, f) => {
  try {
    results[name] = Boolean(await f());
  } catch (e) {
    console.error(name, e);
    results[name] = false;
  }
};

const ollama = new Ollama({ host: url });
const msgs = [{ role: "user", content: "hi" }];
await check("ollama_chat", async () => (await ollama.chat({ model: "chat", messages: msgs })).message.content.endsWith("from mock"));
await check("ollama_stream", async () => {
  let text = "";
  let done = false;
  for await (const part of await ollama.chat({ model: "chat", messages: msgs, stream: true })) {
    text += part.message.content;
    done = part.done;
  }
  return done && text.startsWith("tok0");
});
await check("ollama_list", async () => (await ollama.list()).models.some((m) => m.name === "chat:latest"));
await check("ollama_embed", async () => (await ollama.embed({ model: "chat", input: ["a", "b"] })).embeddings.length === 2);
await check("ollama_smol", async () => {
  const r = await ollama.chat({ model: "smol", messages: msgs, options: { num_predict: 3 } });
  return r.done && r.message.content.length > 0;
});
const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 });
await check("openai_chat", async () => {
  const r = await openai.chat.completions.create({ model: "chat", messages: msgs });
  return r.choices[0].message.content.endsWith("from mock");
});
await check("langchain_chat", async () => {
  const chat = new ChatOllama({ model: "chat", baseUrl: url });
  const text = (await chat.invoke("hi")).content;
  return text.startsWith("tok0") || text.endsWith("from mock");
});
console.log(JSON.stringify(results));
process.exit(Object.values(results).every(Boolean) ? 0 : 1);
