// The baseline of bench:transfer: a plain TCP server in its own process (as a node agent is) that sends, on each
// connection, the bytes of the tensors named in bench/transfer.ts's request line, read from the checkpoint's
// files in 1 MiB pieces with backpressure: the same bytes the push sends, without gRPC, checks or framing.
import { open } from "node:fs/promises";
import { createServer } from "node:net";
import { createInterface } from "node:readline";

interface Range {
  file: string;
  start: number;
  length: number;
}

const chunk = 1024 * 1024;
const server = createServer((socket) => {
  createInterface({ input: socket }).once("line", async (line) => {
    const ranges = JSON.parse(line) as Range[];
    for (const r of ranges) {
      const fh = await open(r.file, "r");
      for (let pos = 0; pos < r.length; pos += chunk) {
        const n = Math.min(chunk, r.length - pos);
        const buf = Buffer.allocUnsafe(n);
        await fh.read(buf, 0, n, r.start + pos);
        if (!socket.write(buf)) await new Promise((resolve) => socket.once("drain", resolve));
      }
      await fh.close();
    }
    socket.end();
  });
});
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  console.log(JSON.stringify({ port: typeof address === "object" && address ? address.port : 0 }));
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
