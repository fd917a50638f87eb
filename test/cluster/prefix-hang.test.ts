// A request that hits the prefix cache while a stage hangs (SIGSTOP: connection open, no answers) must end as
// fast as a stream in decode does: node_lost within 5 s of the freeze, not after the block call's one-minute
// deadline. Real node-agent processes, a real pipeline and the scheduler with its prefix cache in this process.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ClusterError } from "../../common/errors.js";
import { CacheCluster } from "../helpers/cache-cluster.js";

let cluster: CacheCluster | undefined;

function promptOf(length: number, salt: number): number[] {
  return Array.from({ length }, (_, i) => 3 + ((i * 37 + salt * 101) % 1000));
}

beforeAll(async () => {
  cluster = await CacheCluster.start({ name: "hang", stages: 2 });
});

afterAll(async () => {
  for (const a of cluster?.agents ?? []) a.child.kill("SIGCONT");
  await cluster?.close();
});

describe("a prefix-cache hit on a hung stage", () => {
  it("fails with node_lost within 5 s of the freeze", async () => {
    const c = cluster!;
    const first = promptOf(300, 1);
    const one = await c.run(first, 4);
    expect(one.cachedTokens).toBe(0);
    const second = [...first, ...one.tokens, ...promptOf(20, 2)];
    c.agents[1].child.kill("SIGSTOP");
    const frozenAt = Date.now();
    const outcome = await c.run(second, 4).then(
      () => undefined,
      (err: unknown) => err,
    );
    const tookMs = Date.now() - frozenAt;
    c.agents[1].child.kill("SIGCONT");
    expect(outcome).toBeInstanceOf(ClusterError);
    expect((outcome as ClusterError).code, String(outcome)).toBe("node_lost");
    expect(tookMs).toBeLessThan(5000);
  });
});
