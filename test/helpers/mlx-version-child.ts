// Child process of test/engine/mlx-version-check.test.ts: loads the addon named by STUDIO_ENGINE_ADDON (through
// native/index.ts, as the server does), asks for an mlx engine on the model in argv[2] and prints one JSON line:
// mlxInfo() and the message the engine was refused with ("" when it opened).
import { mlxInfo, openEngine } from "../../native/index.js";

async function main(): Promise<void> {
  const modelDir = process.argv[2];
  const info = mlxInfo();
  let error = "";
  try {
    const engine = await openEngine({
      modelDir,
      layerStart: 0,
      layerEnd: 1,
      embed: true,
      head: false,
      backend: "mlx",
    });
    await engine.close();
  } catch (err) {
    error = err instanceof Error ? err.message : String(err);
  }
  console.log(JSON.stringify({ info, error }));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
