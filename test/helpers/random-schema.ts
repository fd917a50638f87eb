// Seeded random JSON schemas for the constrained-decoding tests: objects of strings, integers, booleans, enums,
// nulls, arrays and nested objects, every value bounded so that a reply that follows the schema ends.

export function rng(seed: number): () => number {
  let x = (seed * 2654435761 + 7) % 2147483648;
  return () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648;
  };
}

/** A random schema: objects of strings, integers, numbers, booleans, enums, arrays and nested objects. */
export function randomSchema(rand: () => number, depth = 0): Record<string, unknown> {
  const pick = Math.floor(rand() * (depth >= 2 ? 5 : 7));
  switch (pick) {
    case 0:
      return { type: "string", maxLength: 1 + Math.floor(rand() * 6) };
    case 1:
      return { type: "integer", minimum: 0, maximum: 10 + Math.floor(rand() * 1000) };
    case 2:
      return { type: "boolean" };
    case 3:
      return { enum: ["red", "green", "blue"].slice(0, 1 + Math.floor(rand() * 3)) };
    case 4:
      return { type: "null" };
    case 5:
      return { type: "array", items: randomSchema(rand, depth + 1), maxItems: 1 + Math.floor(rand() * 2) };
    default:
      return objectSchema(rand, depth + 1);
  }
}

export function objectSchema(rand: () => number, depth = 0): Record<string, unknown> {
  const properties: Record<string, unknown> = {};
  const count = 1 + Math.floor(rand() * 3);
  for (let i = 0; i < count; i++) properties[`k${i}`] = randomSchema(rand, depth);
  const keys = Object.keys(properties);
  return { type: "object", properties, required: keys, additionalProperties: false };
}
