// Loads the synq-model-wasm module in Node and prints one JSON line.
//   node run.mjs FILE.wasm hash SEED EVENTS VIEWS   -> {"hash": "..."}
//   node run.mjs FILE.wasm bench EVENTS             -> {"target":"wasm32", "steps_per_s": ...}
import { readFileSync } from "node:fs";

const [file, mode, ...rest] = process.argv.slice(2);
const { instance } = await WebAssembly.instantiate(readFileSync(file), {});
const x = instance.exports;
if (mode === "hash") {
  const [seed, events, views] = rest.map(Number);
  const ptr = x.demo_hash(BigInt(seed), events, views);
  if (ptr === 0) throw new Error("snapshot failed");
  const bytes = new Uint8Array(x.memory.buffer, ptr, 32);
  const hash = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  console.log(JSON.stringify({ hash }));
} else if (mode === "bench") {
  const events = Number(rest[0] ?? 100000);
  x.demo_steps(1n, 1000, 4); // warm up
  const t0 = process.hrtime.bigint();
  const accepted = x.demo_steps(1n, events, 8);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ target: "wasm32", model: "demo Room", events, accepted, seconds: s, steps_per_s: Math.round(events / s) }));
} else {
  throw new Error("mode must be hash or bench");
}
