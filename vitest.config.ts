import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    // Multi-process cluster tests start real processes; two cores run them best one file at a time.
    fileParallelism: false,
    reporters: ["default"],
  },
});
