// Where a stage's weights can come from (docs/weights.md): the nodes that hold every tensor the stage needs,
// those with the whole checkpoint first. A node that lacks some of its stage's tensors asks them in this order,
// then falls back to the hub, so a cluster downloads each byte from the internet at most once.
import type { ModelInfo } from "../common/wire/types.js";
import type { PlanStage } from "./planner.js";

export interface WeightHolder {
  nodeId: string;
  address: string;
  model: ModelInfo | null;
}

type StageParts = Pick<PlanStage, "nodeId" | "layerStart" | "layerEnd" | "embed" | "head">;

/** Does the node hold every tensor of the stage? */
export function holdsStage(model: ModelInfo | null, stage: StageParts): boolean {
  if (!model) return false;
  if (!model.partial) return true;
  if (stage.embed && !model.held_embed) return false;
  if (stage.head && !model.held_head) return false;
  const held = new Set(model.held_layers ?? []);
  for (let layer = stage.layerStart; layer < stage.layerEnd; layer++) if (!held.has(layer)) return false;
  return true;
}

/** Addresses of the other nodes holding the stage's tensors: whole checkpoints first, then partial ones. */
export function weightSources(stage: StageParts, holders: WeightHolder[]): string[] {
  const others = holders.filter((h) => h.nodeId !== stage.nodeId && holdsStage(h.model, stage));
  const whole = others.filter((h) => !h.model?.partial);
  const partial = others.filter((h) => h.model?.partial);
  return [...whole, ...partial].map((h) => h.address);
}
