// Each API's fields for the shape of a reply parse into one ReplyConstraints, and bad values are refused with
// a 400 naming the parameter (chat/constraints.ts).
import { describe, expect, it } from "vitest";
import { openAiResponseFormat, openAiToolChoice } from "../../chat/constraints.js";
import { RequestError } from "../../chat/request-error.js";

describe("OpenAI tool_choice", () => {
  it("reads the modes and both spellings of a named function", () => {
    expect(openAiToolChoice(undefined, [])).toEqual({ mode: "auto" });
    expect(openAiToolChoice("none", ["ls"])).toEqual({ mode: "none" });
    expect(openAiToolChoice("required", ["ls"])).toEqual({ mode: "required" });
    expect(openAiToolChoice({ type: "function", function: { name: "ls" } }, ["ls"])).toEqual({
      mode: "function",
      name: "ls",
    });
    expect(openAiToolChoice({ type: "function", name: "ls" }, ["ls"])).toEqual({
      mode: "function",
      name: "ls",
    });
  });

  it("refuses an undeclared function and unknown values, naming the parameter", () => {
    const undeclared = () => openAiToolChoice({ type: "function", name: "rm" }, ["ls"]);
    expect(undeclared).toThrow(RequestError);
    expect(undeclared).toThrow(/'rm', which is not among the request's tools/);
    expect(() => openAiToolChoice("sometimes", [])).toThrow(/tool_choice must be/);
    try {
      openAiToolChoice({ type: "function" }, ["ls"]);
    } catch (err) {
      expect((err as RequestError).param).toBe("tool_choice");
    }
  });
});

describe("OpenAI response formats", () => {
  const schema = { type: "object", properties: { a: { type: "integer" } } };

  it("reads Chat Completions' and Responses' json_schema spellings", () => {
    expect(
      openAiResponseFormat({ type: "json_schema", json_schema: { name: "r", schema, strict: true } }, "f"),
    ).toEqual({ type: "json_schema", name: "r", schema, strict: true, param: "f.json_schema.schema" });
    expect(openAiResponseFormat({ type: "json_schema", name: "r", schema }, "f")).toEqual({
      type: "json_schema",
      name: "r",
      schema,
      strict: false,
      param: "f.schema",
    });
    expect(openAiResponseFormat({ type: "json_object" }, "f")).toEqual({ type: "json_object" });
    expect(openAiResponseFormat(undefined, "f")).toEqual({ type: "text" });
  });

  it("refuses a json_schema without a schema and unknown types", () => {
    expect(() => openAiResponseFormat({ type: "json_schema" }, "text.format")).toThrow(/needs a schema/);
    expect(() => openAiResponseFormat({ type: "xml" }, "response_format")).toThrow(/response_format.type/);
  });
});
