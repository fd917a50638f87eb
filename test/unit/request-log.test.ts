// The API's request log: in-flight and recent requests with their figures, and the per-second throughput and
// TTFT series, on a clock the test moves.
import { describe, expect, it } from "vitest";
import { RequestLog } from "../../api/request-log.js";

function clock(start: number) {
  const c = { t: start, now: () => c.t };
  return c;
}

describe("RequestLog", () => {
  it("follows a request from prefill through decoding to its end, with TTFT and tokens/s", () => {
    const c = clock(1_000_000);
    const log = new RequestLog({ now: c.now });
    const r = log.begin("responses", 12);
    expect(log.figures().inFlight).toMatchObject([
      { api: "responses", status: "prefill", promptTokens: 12, outputTokens: 0 },
    ]);
    r.admitted(12, 8);
    c.t += 250;
    r.token();
    c.t += 500;
    r.token();
    r.token();
    const live = log.figures().inFlight[0];
    expect(live).toMatchObject({ status: "decoding", cachedTokens: 8, outputTokens: 3, ttftMs: 250 });
    expect(live.tokensPerSecond).toBeCloseTo(2 / 0.5);
    c.t += 500;
    r.finish("incomplete");
    r.finish("cancelled"); // the first end counts
    r.token(); // nothing after the end
    const figures = log.figures();
    expect(figures.inFlight).toEqual([]);
    expect(figures.recent).toMatchObject([{ status: "incomplete", outputTokens: 3, ttftMs: 250 }]);
    expect(figures.recent[0].tokensPerSecond).toBeCloseTo(2 / 1.0);
    expect(figures.ttftMs).toEqual([{ t: 1_000_250, v: 250 }]);
  });

  it("counts output tokens per completed second, with zeros for idle seconds, over a bounded window", () => {
    const c = clock(5_000_000);
    const log = new RequestLog({ now: c.now, seriesSeconds: 10 });
    const r = log.begin("chat.completions", 3);
    for (let i = 0; i < 4; i++) r.token();
    c.t += 2000;
    r.token();
    // The current second is still filling: not shown yet.
    expect(log.figures().throughput.map((p) => p.v)).toEqual([4, 0]);
    c.t += 1000;
    expect(log.figures().throughput.map((p) => p.v)).toEqual([4, 0, 1]);
    expect(log.figures().throughput.at(-1)?.t).toBe(5_003_000);
    c.t += 60_000;
    const later = log.figures();
    expect(later.throughput).toHaveLength(10);
    expect(later.throughput.every((p) => p.v === 0)).toBe(true);
    // The TTFT point is older than the window now.
    expect(later.ttftMs).toEqual([]);
  });

  it("keeps the newest finished requests only", () => {
    const log = new RequestLog({ recentLimit: 3 });
    for (let i = 0; i < 5; i++) log.begin("completions", i + 1).finish(i === 4 ? "failed" : "completed");
    const recent = log.figures().recent;
    expect(recent.map((r) => r.promptTokens)).toEqual([5, 4, 3]);
    expect(recent[0].status).toBe("failed");
    expect(new Set(recent.map((r) => r.id)).size).toBe(3);
  });
});

describe("a failed request's reason", () => {
  it("is kept with it in the recent list (the dashboard shows it), and only for failures", () => {
    const log = new RequestLog();
    const failed = log.begin("chat.completions", 10);
    failed.finish("failed", "stage-1 at 10.0.0.2:7100 stopped responding (no heartbeat for 3012 ms)");
    failed.finish("completed"); // a later finish changes nothing
    const done = log.begin("responses", 5);
    done.finish("completed", "ignored");
    const [second, first] = log.figures().recent;
    expect(first.status).toBe("failed");
    expect(first.error).toMatch(/stopped responding/);
    expect(second.status).toBe("completed");
    expect(second.error).toBeUndefined();
  });
});
