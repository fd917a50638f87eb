import { describe, expect, it } from "vitest";
import { ResponseStore } from "../../api/response-store.js";

const entry = (text: string) => ({ response: { id: text, output: [text] }, input: [text] });

describe("ResponseStore", () => {
  it("keeps, returns and deletes responses", () => {
    const store = new ResponseStore();
    store.put("a", entry("a"));
    expect(store.get("a")).toEqual(entry("a"));
    expect(store.delete("a")).toBe(true);
    expect(store.get("a")).toBeUndefined();
    expect(store.delete("a")).toBe(false);
  });

  it("evicts the oldest past the count limit", () => {
    const store = new ResponseStore({ maxResponses: 2, maxBytes: 1 << 20 });
    for (const id of ["a", "b", "c"]) store.put(id, entry(id));
    expect(store.size).toBe(2);
    expect(store.get("a")).toBeUndefined();
    expect(store.get("c")).toBeDefined();
  });

  it("evicts the oldest past the byte limit, and never keeps one larger than the limit", () => {
    const size = JSON.stringify(entry("x".repeat(100))).length;
    const store = new ResponseStore({ maxResponses: 100, maxBytes: size * 2 + 10 });
    for (const id of ["1", "2", "3"]) store.put(id, entry(id.repeat(100)));
    expect(store.size).toBe(2);
    expect(store.get("1")).toBeUndefined();
    store.put("big", entry("y".repeat(size * 3)));
    expect(store.get("big")).toBeUndefined();
    expect(store.size).toBe(2);
  });
});
