// A TCP proxy for fault tests: forwards connections to a target and, once, damages the answer stream of the
// first connection: flips one byte at a given offset, or cuts both sides after a given number of bytes (a node
// lost mid-transfer). Later connections pass untouched.
import { type AddressInfo, connect, createServer, type Socket } from "node:net";

export interface FaultProxy {
  address: string;
  /** Bytes forwarded from the target to the client, over all connections. */
  forwarded(): number;
  close(): Promise<void>;
}

export async function startFaultProxy(
  target: { host: string; port: number },
  fault: { flipAt?: number; cutAfter?: number },
): Promise<FaultProxy> {
  const sockets = new Set<Socket>();
  let connections = 0;
  let total = 0;
  const server = createServer((client) => {
    const faulty = connections++ === 0;
    const upstream = connect(target.port, target.host);
    sockets.add(client).add(upstream);
    let seen = 0;
    client.pipe(upstream);
    upstream.on("data", (chunk: Buffer) => {
      let out = chunk;
      if (
        faulty &&
        fault.flipAt !== undefined &&
        fault.flipAt >= seen &&
        fault.flipAt < seen + chunk.length
      ) {
        out = Buffer.from(chunk);
        out[fault.flipAt - seen] ^= 0x5a;
      }
      if (faulty && fault.cutAfter !== undefined && seen + chunk.length > fault.cutAfter) {
        client.write(out.subarray(0, fault.cutAfter - seen));
        client.destroy();
        upstream.destroy();
        return;
      }
      seen += chunk.length;
      total += chunk.length;
      client.write(out);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    forwarded: () => total,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
