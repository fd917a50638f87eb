// Seeded mutations of a small generated checkpoint, for test/engine/checkpoint-fuzz.test.ts: truncated shards, header
// lengths that lie, corrupted header bytes, wrong dtypes, shapes and offsets, missing tensors, broken
// index / config.json / tokenizer files. Each case is a folder in which only the mutated file is a real copy
// (the rest are symlinks to the pristine model), and each mutation is one the loader must refuse.
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Rng } from "./seeded-rng.js";

export interface FuzzCase {
  id: number;
  dir: string;
  /** The file that was mutated (its base name): a good error names it, or the tensor. */
  file: string;
  what: string;
  /** Who must refuse it: the engine (shards, index, config.json) or the chat formatter (tokenizer, template). */
  target: "engine" | "formatter";
}

type HeaderJson = Record<string, { dtype: unknown; shape: unknown; data_offsets: unknown }>;

interface Shard {
  name: string;
  bytes: Buffer;
  headerLength: number;
  header: HeaderJson;
}

function readShard(dir: string, name: string): Shard {
  const bytes = readFileSync(join(dir, name));
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString("utf8")) as HeaderJson;
  return { name, bytes, headerLength, header };
}

function withHeader(header: unknown, data: Buffer): Buffer {
  const text = Buffer.from(JSON.stringify(header), "utf8");
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([length, text, data]);
}

const dataOf = (s: Shard): Buffer => s.bytes.subarray(8 + s.headerLength);
const tensorsOf = (s: Shard): string[] => Object.keys(s.header).filter((k) => k !== "__metadata__");

type Mutation = { file: string; what: string; bytes: Buffer; target: FuzzCase["target"] };

/** Shard mutations: every one leaves a header or a tensor the loader must refuse. */
function shardMutation(rng: Rng, shards: Shard[]): Mutation {
  const shard = rng.pick(shards);
  const h = structuredClone(shard.header);
  const tensor = rng.pick(tensorsOf(shard));
  const t = h[tensor];
  const [begin, end] = t.data_offsets as [number, number];
  const shape = t.shape as number[];
  const out = (what: string, bytes: Buffer): Mutation => ({
    file: shard.name,
    what: `${shard.name}: ${what}`,
    bytes,
    target: "engine",
  });
  switch (rng.int(7)) {
    case 0: {
      // Cut anywhere: inside the length word, the header, or the tensor data.
      const at = rng.pick([
        0,
        3,
        7,
        8 + rng.int(shard.headerLength),
        8 + shard.headerLength + rng.int(dataOf(shard).length),
      ]);
      return out(`truncated at byte ${at} of ${shard.bytes.length}`, shard.bytes.subarray(0, at));
    }
    case 1: {
      const lies = [
        0n,
        1n,
        2n ** 40n,
        2n ** 63n,
        2n ** 64n - 1n,
        BigInt(shard.bytes.length),
        BigInt(shard.headerLength - 1 - rng.int(40)),
      ];
      const lie = rng.pick(lies);
      const bytes = Buffer.from(shard.bytes);
      bytes.writeBigUInt64LE(lie, 0);
      return out(`header length ${lie} instead of ${shard.headerLength}`, bytes);
    }
    case 2: {
      // JSON-breaking bytes written over the header's structure.
      const bytes = Buffer.from(shard.bytes);
      const at = 8 + rng.int(shard.headerLength);
      const junk = rng.pick([0x00, 0x7b, 0x7d, 0x5b, 0x5d, 0x3a, 0x2c, 0x22, 0x5c, 0xff, 0xc3]);
      bytes[at] = junk;
      bytes[8] = rng.pick([0x5b, 0x22, 0x00, 0x7d]); // the opening brace too, so the header is never valid JSON
      return out(`header byte ${at - 8} = 0x${junk.toString(16)} and no opening brace`, bytes);
    }
    case 3: {
      const wrong = rng.pick<unknown>(
        ["Q7", "", "U8", "I64", "BOOL", "F64", 7, null, "u32"].filter((d) => d !== t.dtype),
      );
      t.dtype = wrong;
      return out(`tensor ${tensor} dtype ${JSON.stringify(wrong)}`, withHeader(h, dataOf(shard)));
    }
    case 4: {
      const n = shape.reduce((a, b) => a * b, 1);
      const shapes: unknown[] = [
        [],
        [0],
        [-1, n],
        [2 ** 53],
        ["a"],
        [n * 2],
        [n + 1],
        "1,2",
        [1.5, n],
        [2 ** 31, 2 ** 31],
      ];
      if (shape.length === 2 && shape[0] !== shape[1]) shapes.push([shape[1], shape[0]]);
      t.shape = rng.pick(shapes);
      return out(`tensor ${tensor} shape ${JSON.stringify(t.shape)}`, withHeader(h, dataOf(shard)));
    }
    case 5: {
      const size = dataOf(shard).length;
      const offsets: unknown[] = [
        [end, begin],
        [begin, end + 8],
        [-8, end],
        [begin, 2 ** 60],
        ["0", end],
        [begin],
        "0-8",
        null,
        [begin + size, end + size],
        [begin, end - 4],
      ];
      t.data_offsets = rng.pick(offsets);
      return out(
        `tensor ${tensor} data_offsets ${JSON.stringify(t.data_offsets)}`,
        withHeader(h, dataOf(shard)),
      );
    }
    default:
      delete h[tensor];
      return out(`tensor ${tensor} missing from the header`, withHeader(h, dataOf(shard)));
  }
}

function indexMutation(rng: Rng, dir: string): Mutation {
  const file = "model.safetensors.index.json";
  const text = readFileSync(join(dir, file), "utf8");
  const index = JSON.parse(text) as { weight_map: Record<string, string> };
  const names = Object.keys(index.weight_map);
  const tensor = rng.pick(names);
  const shards = [...new Set(Object.values(index.weight_map))];
  const out = (what: string, body: string): Mutation => ({
    file,
    what: `${file}: ${what}`,
    bytes: Buffer.from(body),
    target: "engine",
  });
  switch (rng.int(5)) {
    case 0:
      return out("truncated", text.slice(0, rng.int(text.length - 1)));
    case 1:
      delete index.weight_map[tensor];
      return out(`${tensor} missing`, JSON.stringify(index));
    case 2:
      index.weight_map[tensor] = rng.pick([
        "model-00009-of-00009.safetensors",
        "../config.json",
        "/etc/passwd",
        "",
      ]);
      return out(`${tensor} in a shard that does not hold it`, JSON.stringify(index));
    case 3: {
      const other = shards.find((s) => s !== index.weight_map[tensor]) ?? "nowhere.safetensors";
      index.weight_map[tensor] = other;
      return out(`${tensor} mapped to ${other}`, JSON.stringify(index));
    }
    default:
      return out(
        "weight_map of the wrong type",
        JSON.stringify({ ...index, weight_map: rng.pick([[], "x", 3, null]) }),
      );
  }
}

function configMutation(rng: Rng, dir: string): Mutation {
  const file = "config.json";
  const text = readFileSync(join(dir, file), "utf8");
  const config = JSON.parse(text) as Record<string, unknown>;
  const out = (what: string, body: string): Mutation => ({
    file,
    what: `${file}: ${what}`,
    bytes: Buffer.from(body),
    target: "engine",
  });
  if (rng.int(6) === 0) return out("truncated", text.slice(0, rng.int(text.length - 1)));
  const edits: Array<[string, unknown]> = [
    ["hidden_size", "128"],
    ["hidden_size", -128],
    ["hidden_size", 0],
    ["hidden_size", 1.5],
    ["hidden_size", 2 ** 40],
    ["hidden_size", 256],
    ["num_hidden_layers", (config.num_hidden_layers as number) + 1],
    ["num_hidden_layers", null],
    ["vocab_size", (config.vocab_size as number) + 1],
    ["vocab_size", 2 ** 31],
    ["num_local_experts", (config.num_local_experts as number) * 2],
    ["num_experts_per_tok", (config.num_local_experts as number) + 1],
    ["intermediate_size", (config.intermediate_size as number) * 2],
    ["head_dim", 32],
    ["num_key_value_heads", 3],
    ["num_attention_heads", 2 ** 31],
    ["model_type", "llama"],
    ["quantization", { group_size: 48, bits: 4 }],
    ["quantization", { group_size: 64, bits: 5 }],
    ["quantization", { group_size: 64, bits: 8 }],
    ["rotary_dim", 33],
  ];
  const [key, value] = rng.pick(edits);
  config[key] = value;
  return out(`${key} = ${JSON.stringify(value)}`, JSON.stringify(config, null, 2));
}

function tokenizerMutation(rng: Rng, dir: string): Mutation {
  const file = "tokenizer.json";
  const text = readFileSync(join(dir, file), "utf8");
  const tokenizer = JSON.parse(text) as Record<string, unknown>;
  const out = (what: string, body: string): Mutation => ({
    file,
    what: `${file}: ${what}`,
    bytes: Buffer.from(body),
    target: "formatter",
  });
  switch (rng.int(4)) {
    case 0:
      return out("truncated", text.slice(0, rng.int(text.length - 1)));
    case 1:
      return out("not an object", rng.pick(["[]", "3", "null", '"x"']));
    case 2:
      return out("model missing", JSON.stringify({ ...tokenizer, model: undefined }));
    default:
      return out(
        "model of the wrong type",
        JSON.stringify({ ...tokenizer, model: rng.pick([[], 7, "bpe"]) }),
      );
  }
}

/** Writes `count` mutated copies of `modelDir` under `root`, seeded. */
export function makeFuzzCases(modelDir: string, root: string, count: number, seed: number): FuzzCase[] {
  const rng = new Rng(seed);
  const shardNames = readdirSync(modelDir).filter((f) => f.endsWith(".safetensors"));
  const shards = shardNames.map((name) => readShard(modelDir, name));
  const cases: FuzzCase[] = [];
  for (let id = 0; id < count; id++) {
    const roll = rng.next();
    const mutation =
      roll < 0.6
        ? shardMutation(rng, shards)
        : roll < 0.75
          ? indexMutation(rng, modelDir)
          : roll < 0.9
            ? configMutation(rng, modelDir)
            : tokenizerMutation(rng, modelDir);
    const dir = join(root, `case-${String(id).padStart(3, "0")}`);
    mkdirSync(dir, { recursive: true });
    for (const f of readdirSync(modelDir))
      if (f !== mutation.file) symlinkSync(join(modelDir, f), join(dir, f));
    writeFileSync(join(dir, mutation.file), mutation.bytes);
    cases.push({ id, dir, file: mutation.file, what: mutation.what, target: mutation.target });
  }
  return cases;
}
