#!/usr/bin/env node
// The `cluster` command. Each subcommand lives in cli/commands/<name>.ts and registers itself here.
import { Command } from "commander";
import { packageVersion } from "../common/paths.js";
import { register as registerBench } from "./commands/bench.js";
import { register as registerDoctor } from "./commands/doctor.js";
import { register as registerMakeModel } from "./commands/make-model.js";
import { register as registerOpenClawConfig } from "./commands/openclaw-config.js";
import { register as registerPull } from "./commands/pull.js";
import { register as registerService } from "./commands/service.js";
import { register as registerStatus } from "./commands/status.js";
import { register as registerUp } from "./commands/up.js";

const program = new Command()
  .name("cluster")
  .description("Serve one large MiniMax-M2 model across several machines as one OpenAI-compatible endpoint")
  .version(packageVersion());

// Subcommands: one import + one register call each, in cli/commands/<name>.ts.
registerMakeModel(program);
registerOpenClawConfig(program);
registerUp(program);
registerPull(program);
registerStatus(program);
registerService(program);
registerDoctor(program);
registerBench(program);

await program.parseAsync(process.argv);
