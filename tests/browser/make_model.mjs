// Writes the chat model the browser test serves: a GPT-2 with random weights (seeded, so every
// run makes the same file), the tokenizer of the GPT-2 fixture and the ChatML template of the
// chat-template fixture. Why not the fixture model itself: its 128 positions and 32 widths
// generate a whole reply in milliseconds, before a browser can click Stop; this one has room
// for 4000 tokens and takes seconds for them (2 ms a token or more), so the test can stop it
// early. The scales are ones whose greedy replies differ from prompt to prompt (with larger
// embeddings every reply was the same two tokens over and over).
//
// usage: node make_model.mjs OUT_DIR   (run from anywhere; paths are relative to this file)

import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const fixtures = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures");
const out = process.argv[2];
if (!out) {
  console.error("usage: node make_model.mjs OUT_DIR");
  process.exit(2);
}

const config = JSON.parse(readFileSync(join(fixtures, "gpt2/lm-head/config.json"), "utf8"));
const VOCAB = config.vocab_size;
const EOS = config.eos_token_id;
const POSITIONS = 4096;
const WIDTH = 192;
const LAYERS = 6;
Object.assign(config, { n_positions: POSITIONS, n_embd: WIDTH, n_head: 4, n_layer: LAYERS });

// mulberry32: a small seeded generator, uniform in [-scale, scale).
let state = 0x5eed;
function random(scale) {
  state = (state + 0x6d2b79f5) | 0;
  let t = Math.imul(state ^ (state >>> 15), 1 | state);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return (((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1) * scale;
}

const tensors = [];
function add(name, shape, fill) {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = fill(i);
  tensors.push({ name, shape, data });
}
const uniform = (scale) => () => random(scale);
const ones = () => 1;
const zeros = () => 0;

// The output layer is the embedding (GPT-2 ties them). A zero row for the end-of-text token
// gives it logit 0 while some other token's is positive, so greedy decoding never ends early:
// a reply runs to max_tokens.
add("transformer.wte.weight", [VOCAB, WIDTH], (i) => (Math.floor(i / WIDTH) === EOS ? 0 : random(0.1)));
add("transformer.wpe.weight", [POSITIONS, WIDTH], uniform(0.1));
for (let layer = 0; layer < LAYERS; layer++) {
  const p = `transformer.h.${layer}`;
  add(`${p}.ln_1.weight`, [WIDTH], ones);
  add(`${p}.ln_1.bias`, [WIDTH], zeros);
  add(`${p}.attn.c_attn.weight`, [WIDTH, 3 * WIDTH], uniform(0.3));
  add(`${p}.attn.c_attn.bias`, [3 * WIDTH], uniform(0.05));
  add(`${p}.attn.c_proj.weight`, [WIDTH, WIDTH], uniform(0.3));
  add(`${p}.attn.c_proj.bias`, [WIDTH], uniform(0.05));
  add(`${p}.ln_2.weight`, [WIDTH], ones);
  add(`${p}.ln_2.bias`, [WIDTH], zeros);
  add(`${p}.mlp.c_fc.weight`, [WIDTH, 4 * WIDTH], uniform(0.3));
  add(`${p}.mlp.c_fc.bias`, [4 * WIDTH], uniform(0.05));
  add(`${p}.mlp.c_proj.weight`, [4 * WIDTH, WIDTH], uniform(0.1));
  add(`${p}.mlp.c_proj.bias`, [WIDTH], uniform(0.05));
}
add("transformer.ln_f.weight", [WIDTH], ones);
add("transformer.ln_f.bias", [WIDTH], zeros);

// safetensors: an 8-byte little-endian header length, the JSON header, then the raw data.
const header = { __metadata__: { format: "pt" } };
let offset = 0;
for (const t of tensors) {
  header[t.name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
  offset += t.data.byteLength;
}
let headerText = JSON.stringify(header);
headerText += " ".repeat((8 - (headerText.length % 8)) % 8);
const length = Buffer.alloc(8);
length.writeBigUInt64LE(BigInt(headerText.length));
const parts = [length, Buffer.from(headerText)];
for (const t of tensors) parts.push(Buffer.from(t.data.buffer));

mkdirSync(out, { recursive: true });
writeFileSync(join(out, "model.safetensors"), Buffer.concat(parts));
writeFileSync(join(out, "config.json"), JSON.stringify(config, null, 2));
for (const file of ["tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json", "generation_config.json"]) {
  copyFileSync(join(fixtures, "gpt2/lm-head", file), join(out, file));
}
const tokenizerConfig = JSON.parse(
  readFileSync(join(fixtures, "chat_templates/chatml_generation/tokenizer_config.json"), "utf8"));
tokenizerConfig.model_max_length = POSITIONS;
writeFileSync(join(out, "tokenizer_config.json"), JSON.stringify(tokenizerConfig, null, 2));
console.log(`wrote ${out}: GPT-2, ${LAYERS} layers of ${WIDTH}, ${POSITIONS} positions, ChatML template`);
