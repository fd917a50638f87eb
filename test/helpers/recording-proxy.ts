// A TCP proxy that records every byte it carries, for test/cluster/netns-wire-tls.test.ts: the only path between
// two nodes in separate network namespaces, so what it saw is what an eavesdropper on the link would see.
// Each direction of each connection goes to its own file under OUTDIR (c<n>-<listen port>-up.bin: client to
// server, -down.bin: server to client); one JSON line per connection on stdout.
//
// usage: node recording-proxy.js OUTDIR LISTEN_HOST:PORT=TARGET_HOST:PORT...
import { appendFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";

const [outDir, ...routes] = process.argv.slice(2);
let connections = 0;

function hostPort(value: string): { host: string; port: number } {
  const at = value.lastIndexOf(":");
  return { host: value.slice(0, at), port: Number(value.slice(at + 1)) };
}

for (const route of routes) {
  const [from, to] = route.split("=").map(hostPort);
  const server = createServer((client) => {
    const n = ++connections;
    const base = join(outDir, `c${n}-${from.port}`);
    const upstream = connect(to.port, to.host);
    process.stdout.write(
      `${JSON.stringify({ event: "connection", n, from: client.remoteAddress, to: route })}\n`,
    );
    client.on("data", (chunk) => {
      // Written at once (synchronously): the test reads the files while the proxy still runs.
      appendFileSync(`${base}-up.bin`, chunk);
      upstream.write(chunk);
    });
    upstream.on("data", (chunk) => {
      appendFileSync(`${base}-down.bin`, chunk);
      client.write(chunk);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("close", close);
    upstream.on("close", close);
    client.on("error", close);
    upstream.on("error", close);
  });
  server.listen(from.port, from.host, () =>
    process.stdout.write(`${JSON.stringify({ event: "listening", route })}\n`),
  );
}
