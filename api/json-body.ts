// Request bodies are JSON whatever the content type says (some clients send text/plain), and must be valid
// UTF-8: a lenient decode would turn broken bytes into U+FFFD and feed the model text the client never sent.
import type { FastifyInstance } from "fastify";

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** A request body → its JSON value; a 400 (statusCode on the error) when it is not UTF-8 or not JSON. */
export function parseJsonBody(body: Buffer): unknown {
  const refuse = (message: string) => Object.assign(new Error(message), { statusCode: 400 });
  let text: string;
  try {
    text = strictUtf8.decode(body);
  } catch {
    throw refuse("the request body is not valid UTF-8");
  }
  if (text.trim() === "") return {};
  try {
    return JSON.parse(text);
  } catch (err) {
    throw refuse(`the request body is not valid JSON (${(err as Error).message})`);
  }
}

/** Replaces fastify's JSON and text parsers with the strict one above. */
export function useStrictJsonBodies(app: FastifyInstance): void {
  app.removeContentTypeParser(["application/json", "text/plain"]);
  app.addContentTypeParser(
    ["application/json", "text/plain", "application/octet-stream"],
    { parseAs: "buffer" },
    (_req, body, done) => {
      try {
        done(null, parseJsonBody(body as Buffer));
      } catch (err) {
        done(err as Error, undefined);
      }
    },
  );
}
