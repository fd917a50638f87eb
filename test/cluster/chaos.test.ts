// Chaos (issue 13, "Proof"): three `cluster up` processes in network namespaces, a short seeded sequence of
// kills, hangs (SIGSTOP) and partitions, each healed before the next, with two streams running through a node
// the fault spares. After each step: every stream ended with its terminal event within 5 s of the fault, at
// most one coordinator per component, the cluster served again within 10 s of the heal, and no KV is held once
// the streams are over (test/helpers/chaos.ts has the generator and the checks; `npm run bench:chaos` runs a
// longer sequence). Needs root and iproute2; skips with the reason otherwise.
import { afterAll, describe, expect, it } from "vitest";
import { ChatFormatter } from "../../chat/chat-formatter.js";
import { ChaosCluster, chaosSequence, chaosSkipReason } from "../helpers/chaos.js";
import { ensureModel } from "../helpers/pipeline-cluster.js";

const SEED = Number(process.env.CHAOS_SEED ?? 8);
// Seed 8: kill n2, kill n3, hang n2, partition n1 (the coordinator), hang n1; the coordinator's faults go
// through a follower's relay, which must end its streams once it has lost the coordinator.
const COORDINATOR_FAULTS = ["kill", "hang", "partition"] as const;
const reason = chaosSkipReason();
if (reason) console.warn(`skipping chaos test: ${reason}`);

describe.skipIf(reason !== undefined)("chaos: seeded faults and heals on three nodes", () => {
  let cluster: ChaosCluster | undefined;

  afterAll(async () => {
    await cluster?.stop();
  });

  it(`keeps every promise after each step of seed ${SEED}`, async () => {
    const modelDir = await ensureModel("tiny", "tiny");
    cluster = new ChaosCluster(3, modelDir, (l) => console.log(`chaos: ${l}`));
    await cluster.start(ChatFormatter.forModelDir(modelDir).stopTokenIds);
    await cluster.waitWhole(120_000);
    for (const step of chaosSequence(SEED, 5, 3, COORDINATOR_FAULTS)) {
      const result = await cluster.runStep(step);
      console.log(`chaos: ${JSON.stringify(result)}`);
      expect(result.failures, `${JSON.stringify(result)}\n${cluster.outputs()}`).toEqual([]);
      const leak = await cluster.settle(120_000);
      expect(leak, cluster.outputs()).toBeUndefined();
    }
  }, 600_000);
});
