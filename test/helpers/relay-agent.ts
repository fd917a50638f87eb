// A real node agent in this process that relays to an API server of this process (RelayHttp, as `cluster up`
// wires them), and the CoordinatorRelay a follower's API uses to reach it: for the API tests of a node that is
// not the coordinator.
import { randomBytes } from "node:crypto";
import { clusterIdOf } from "../../common/cluster-key.js";
import { NodeClient } from "../../common/wire/client.js";
import { type CoordinatorRelay, nodeRelay } from "../../common/wire/http-relay.js";
import { startNodeAgent } from "../../node-agent/server.js";

export interface RelayAgent {
  relay: CoordinatorRelay;
  close(): Promise<void>;
}

/** `apiUrl` was started with `relayToken` (ApiServerOptions.relayToken). */
export async function startRelayAgent(opts: {
  apiUrl: string;
  relayToken: string;
  clusterKey: string;
  modelDir: string;
}): Promise<RelayAgent> {
  const nodeId = `relay-${randomBytes(4).toString("hex")}`;
  const agent = await startNodeAgent({
    modelDir: opts.modelDir,
    clusterKey: opts.clusterKey,
    clusterId: clusterIdOf(opts.clusterKey),
    nodeId,
    name: nodeId,
    // A figure given: no bandwidth probe on the test machine's busy cores.
    memoryBandwidthBps: 50e9,
    httpRelay: { url: opts.apiUrl, token: opts.relayToken },
    log: () => {},
  });
  const address = `127.0.0.1:${agent.port}`;
  const client = new NodeClient(address, opts.clusterKey);
  return {
    relay: nodeRelay(client, { nodeId, name: nodeId, address }),
    close: async () => {
      client.close();
      await agent.close();
    },
  };
}
