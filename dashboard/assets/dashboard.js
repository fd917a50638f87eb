// The dashboard page: renders each ClusterSnapshot pushed over /dashboard/live (see live-feed.ts).
// No framework: every message re-renders the sections from the snapshot, which keeps the page a pure view.
// Everything from the cluster goes in through textContent/attributes, never innerHTML.

const NODE_COLORS = ["#5b8cff", "#37c9a7", "#f0a94b", "#c77dff", "#ff7a90", "#4cc9f0", "#a3d977", "#ffd166"];
const HEALTH_CLASS = { ok: "ok", loading: "info", degraded: "warn", lost: "bad" };
const STATE_CLASS = { ready: "ok", loading: "info", planning: "info", not_ready: "bad" };
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_WINDOW_MS = 15 * 60_000;

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

/** Creates an element: h("div", { class: "x", "data-testid": "y" }, child, "text", ...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// ---- formatting ----

function fmtBytes(bytes) {
  if (!Number.isFinite(bytes)) return "—";
  const gib = bytes / 1024 ** 3;
  if (gib >= 1000) return `${(gib / 1024).toFixed(2)} TiB`;
  if (gib >= 100) return `${gib.toFixed(0)} GiB`;
  if (gib >= 1) return `${gib.toFixed(1)} GiB`;
  return `${(bytes / 1024 ** 2).toFixed(0)} MiB`;
}

function fmtRate(v) {
  if (!Number.isFinite(v)) return "—";
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

function fmtMs(ms) {
  if (!Number.isFinite(ms)) return "—";
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms.toFixed(0)} ms`;
}

function fmtLatency(us) {
  if (!Number.isFinite(us)) return "—";
  return us >= 1000 ? `${(us / 1000).toFixed(1)} ms` : `${us.toFixed(0)} µs`;
}

function fmtCount(n) {
  if (!Number.isFinite(n)) return "—";
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return n.toLocaleString("en-US");
}

function fmtAge(ms) {
  if (!Number.isFinite(ms)) return "—";
  // Nodes' clocks differ a little; a start "in the future" is just now.
  const sec = Math.max(0, Math.round(ms / 1000));
  if (sec < 60) return `${sec}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m ${sec % 60}s`;
  return `${Math.floor(sec / 3600)}h ${Math.floor((sec % 3600) / 60)}m`;
}

const pct = (f) => `${Math.round(Math.max(0, Math.min(1, f)) * 100)}%`;

function median(values) {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function hasLayers(n) {
  return Number.isInteger(n.layerStart) && Number.isInteger(n.layerEnd) && n.layerEnd > n.layerStart;
}

/** Node colours follow the pipeline order (the stage holding layer 0 first), so the layer bar reads left to right. */
function nodeColors(nodes) {
  const order = [...nodes].sort((a, b) => (a.layerStart ?? Infinity) - (b.layerStart ?? Infinity));
  return new Map(order.map((n, i) => [n.id, NODE_COLORS[i % NODE_COLORS.length]]));
}

// ---- sections ----

function renderHeader(snap) {
  $("model-id").textContent = snap.modelId;
  $("cluster-id").textContent = `cluster ${snap.clusterId}`;
  const state = $("cluster-state");
  state.textContent = snap.state.replace("_", " ");
  state.className = `pill ${STATE_CLASS[snap.state] ?? ""}`;
  const banner = $("banner");
  banner.hidden = !snap.message;
  banner.textContent = snap.message ?? "";
}

function renderKpis(snap) {
  const last = snap.throughput.at(-1);
  $("kpi-throughput").textContent = last ? fmtRate(last.v) : "—";
  const recentTtft = snap.recent.map((r) => r.ttftMs).filter(Number.isFinite);
  const ttft = recentTtft.length ? median(recentTtft) : median(snap.ttftMs.slice(-20).map((p) => p.v));
  $("kpi-ttft").textContent = fmtMs(ttft);
  $("kpi-inflight").textContent = String(snap.inFlight.length);
  const healthy = snap.nodes.filter((n) => n.health === "ok").length;
  $("kpi-nodes").textContent = `${healthy}/${snap.nodes.length}`;
  const used = snap.nodes.reduce((a, n) => a + n.memoryUsedBytes, 0);
  const total = snap.nodes.reduce((a, n) => a + n.memoryTotalBytes, 0);
  $("kpi-memory").textContent = fmtBytes(used);
  $("kpi-memory-unit").textContent = `of ${fmtBytes(total)}`;
  const prompt = snap.recent.reduce((a, r) => a + r.promptTokens, 0);
  const cached = snap.recent.reduce((a, r) => a + r.cachedTokens, 0);
  $("kpi-cache").textContent = prompt > 0 ? pct(cached / prompt) : "—";
}

function renderLayerMap(snap, colors) {
  const owner = new Array(snap.numLayers).fill(undefined);
  for (const n of snap.nodes) {
    if (!hasLayers(n)) continue;
    for (let l = n.layerStart; l < Math.min(n.layerEnd, snap.numLayers); l++) owner[l] = n;
  }
  const cells = owner.map((n, l) =>
    h("div", {
      class: `layer${n?.health === "lost" ? " lost" : ""}`,
      "data-layer": l,
      "data-node": n?.id,
      title: n ? `layer ${l} · ${n.name}` : `layer ${l} · unassigned`,
      style: n ? `background:${colors.get(n.id)}` : undefined,
    }),
  );
  $("layer-map").replaceChildren(...cells);
  const ticks = [0, ...new Set(snap.nodes.filter(hasLayers).map((n) => n.layerStart)), snap.numLayers];
  $("layer-axis").replaceChildren(
    ...[...new Set(ticks)].map((t) =>
      h("span", { style: `left:${(100 * t) / Math.max(1, snap.numLayers)}%` }, t),
    ),
  );
  const assigned = owner.filter(Boolean).length;
  $("layer-note").textContent =
    assigned === snap.numLayers
      ? `${snap.numLayers} layers`
      : `${assigned} of ${snap.numLayers} layers placed`;
  const pipeline = snap.nodes.filter(hasLayers).sort((a, b) => a.layerStart - b.layerStart);
  $("layer-legend").replaceChildren(
    ...pipeline.map((n) =>
      h(
        "span",
        { class: "legend-item" },
        h("span", { class: "swatch", style: `background:${colors.get(n.id)}` }),
        `${n.name} · ${n.layerStart}–${n.layerEnd - 1}${n.embed ? " + embed" : ""}${n.head ? " + head" : ""}`,
      ),
    ),
  );
}

function figure(label, value, unit, testid) {
  return h(
    "div",
    {},
    h("div", { class: "figure-label" }, label),
    h("div", { class: "figure", "data-testid": testid }, value, unit ? h("small", {}, unit) : null),
  );
}

function nodeCard(n, snap, color) {
  const layers = hasLayers(n) ? `${n.layerStart}–${n.layerEnd - 1}` : "none";
  const layerCount = hasLayers(n) ? n.layerEnd - n.layerStart : 0;
  const total = Math.max(1, n.memoryTotalBytes);
  const other = Math.max(0, n.memoryUsedBytes - n.weightBytes - n.kvBytes);
  const width = (b) => `width:${Math.max(0, Math.min(100, (100 * b) / total)).toFixed(2)}%`;
  const extras = [n.embed ? "embed" : null, n.head ? "head" : null].filter(Boolean).join(" + ");
  return h(
    "article",
    {
      class: `node${n.health === "lost" ? " lost" : ""}`,
      "data-testid": "node-card",
      "data-node-id": n.id,
      style: `--node-color:${color ?? "var(--faint)"}`,
    },
    h(
      "div",
      { class: "node-head" },
      h("span", { class: "node-name", "data-testid": "node-name" }, n.name),
      n.id === snap.coordinatorId || n.role === "coordinator"
        ? h("span", { class: "role" }, "coordinator")
        : null,
      h("span", { class: `pill ${HEALTH_CLASS[n.health] ?? ""}`, "data-testid": "node-health" }, n.health),
    ),
    h(
      "div",
      { class: "node-sub" },
      `${n.chip} · ${n.backend} · ${n.cores} cores · `,
      h("span", { class: "addr" }, n.address),
    ),
    // A lost node stays on the page, saying since when and why, until it returns.
    n.health === "lost" && n.lostAt
      ? h(
          "div",
          { class: "node-sub lost-reason", "data-testid": "node-lost" },
          `lost ${fmtAge(Date.now() - n.lostAt)} ago: ${n.lostReason ?? "no reason given"}`,
        )
      : null,
    h(
      "div",
      { class: "figures" },
      figure("Tokens/s", fmtRate(n.tokensPerSecond), "", "node-tps"),
      figure("Layers", layers, layerCount ? `(${layerCount})` : "", "node-layers"),
      figure("Queue", String(n.queueDepth), "", "node-queue"),
      figure("Link", fmtLatency(n.linkLatencyUs), "", "node-link"),
    ),
    h(
      "div",
      { class: "meter" },
      h(
        "div",
        { class: "meter-head" },
        h("span", {}, "Memory"),
        h(
          "span",
          { "data-testid": "node-memory" },
          `${fmtBytes(n.memoryUsedBytes)} / ${fmtBytes(n.memoryTotalBytes)}`,
        ),
      ),
      h(
        "div",
        { class: "bar" },
        h("span", { class: "w", style: width(n.weightBytes) }),
        h("span", { class: "kv", style: width(n.kvBytes) }),
        h("span", { class: "other", style: width(other) }),
      ),
      h(
        "div",
        { class: "meter-legend" },
        h("span", {}, h("i", { style: `background:${color}` }), `weights ${fmtBytes(n.weightBytes)}`),
        h(
          "span",
          {},
          h("i", { class: "kv-key", style: `background:${color};opacity:.6` }),
          `KV ${fmtBytes(n.kvBytes)}`,
        ),
        extras ? h("span", {}, extras) : null,
      ),
    ),
    h(
      "div",
      { class: "meter" },
      h(
        "div",
        { class: "meter-head" },
        h(
          "span",
          {},
          n.health !== "loading"
            ? "Busy"
            : n.fetch
              ? `Fetching weights from ${n.fetch.source} (${fmtBytes(n.fetch.doneBytes)} of ${fmtBytes(n.fetch.totalBytes)})`
              : "Loading shard",
        ),
        h(
          "span",
          { "data-testid": "node-busy" },
          n.health === "loading" ? pct(n.loadProgress ?? 0) : pct(n.busyFraction),
        ),
      ),
      h(
        "div",
        { class: "bar" },
        n.health === "loading"
          ? h("span", { class: "load", style: `width:${pct(n.loadProgress ?? 0)}` })
          : h("span", { class: "busy", style: `width:${pct(n.busyFraction)}` }),
      ),
    ),
    n.prefixCache ? prefixCacheLine(n.prefixCache) : null,
  );
}

/** The node's prefix cache: blocks in RAM and on disk, and the share of prompt positions each served. */
function prefixCacheLine(c) {
  const all = c.ramHitTokens + c.diskHitTokens + c.computedTokens;
  const share = (t) => (all > 0 ? pct(t / all) : "–");
  const disk = c.diskBudgetBytes > 0 ? `${fmtBytes(c.diskBytes)} / ${fmtBytes(c.diskBudgetBytes)}` : "off";
  return h(
    "div",
    { class: "meter-legend", "data-testid": "node-cache" },
    h("span", {}, `Prefix cache: RAM ${fmtBytes(c.ramBytes)} · SSD ${disk}`),
    h("span", {}, `hits RAM ${share(c.ramHitTokens)} · SSD ${share(c.diskHitTokens)}`),
  );
}

function renderNodes(snap, colors) {
  const ordered = [...snap.nodes].sort(
    (a, b) => (a.layerStart ?? Infinity) - (b.layerStart ?? Infinity) || a.name.localeCompare(b.name),
  );
  $("nodes").replaceChildren(...ordered.map((n) => nodeCard(n, snap, colors.get(n.id))));
}

/** A small time-series chart: area + line when `area`, dots otherwise; x is time, y starts at zero. */
function chart(container, series, { color, area, unitFormat, now }) {
  const width = Math.max(200, container.clientWidth);
  const height = Math.max(100, container.clientHeight);
  const pad = { l: 44, r: 8, t: 8, b: 20 };
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
  // At least the last minute, at most the last CHART_WINDOW_MS, ending at the coordinator's "now".
  const t1 = Math.max(now, series.at(-1)?.t ?? now);
  const points = series.filter((p) => p.t >= t1 - CHART_WINDOW_MS);
  if (points.length === 0) {
    svg.append(
      s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no data yet"),
    );
    container.replaceChildren(svg);
    return;
  }
  const t0 = Math.min(points[0].t, t1 - 60_000);
  const vmax = niceCeil(Math.max(...points.map((p) => p.v)) * 1.1);
  const x = (t) => pad.l + ((t - t0) / Math.max(1, t1 - t0)) * (width - pad.l - pad.r);
  const y = (v) => pad.t + (1 - v / vmax) * (height - pad.t - pad.b);

  const grid = s("g", { class: "grid" });
  for (let i = 0; i <= 4; i++) {
    const v = (vmax * i) / 4;
    grid.append(s("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v) }));
    grid.append(s("text", { x: pad.l - 6, y: y(v) + 3, "text-anchor": "end" }, unitFormat(v)));
  }
  // A label every 1, 2, 5 or 15 minutes, whichever gives at most five.
  const spanMin = (t1 - t0) / 60_000;
  const every = [1, 2, 5, 15].find((m) => spanMin / m <= 5) ?? 15;
  for (let k = 0; t1 - k * 60_000 >= t0; k += every) {
    const t = t1 - k * 60_000;
    grid.append(s("text", { x: x(t), y: height - 4, "text-anchor": "middle" }, k === 0 ? "now" : `−${k}m`));
  }
  svg.append(grid);

  const gradId = `g${Math.random().toString(36).slice(2)}`;
  svg.append(
    s(
      "defs",
      {},
      s(
        "linearGradient",
        { id: gradId, x1: 0, y1: 0, x2: 0, y2: 1 },
        s("stop", { offset: "0%", "stop-color": color, "stop-opacity": 0.35 }),
        s("stop", { offset: "100%", "stop-color": color, "stop-opacity": 0 }),
      ),
    ),
  );
  if (area) {
    const line = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
    const base = y(0).toFixed(1);
    const fill = `${line}L${x(points.at(-1).t).toFixed(1)},${base}L${x(points[0].t).toFixed(1)},${base}Z`;
    svg.append(s("path", { d: fill, fill: `url(#${gradId})` }));
    svg.append(
      s("path", { d: line, fill: "none", stroke: color, "stroke-width": 1.8, "stroke-linejoin": "round" }),
    );
  } else {
    const dots = s("g", {});
    for (const p of points)
      dots.append(s("circle", { cx: x(p.t), cy: y(p.v), r: 3, fill: color, "fill-opacity": 0.85 }));
    svg.append(dots);
  }
  container.replaceChildren(svg);
}

function niceCeil(v) {
  if (!(v > 0)) return 1;
  const mag = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * mag) return m * mag;
  return 10 * mag;
}

function renderCharts(snap, now) {
  chart($("chart-throughput"), snap.throughput, {
    color: "#5b8cff",
    area: true,
    unitFormat: (v) => fmtRate(v),
    now,
  });
  chart($("chart-ttft"), snap.ttftMs, { color: "#f0a94b", area: false, unitFormat: (v) => fmtMs(v), now });
  const last = snap.throughput.at(-1);
  const peak = Math.max(0, ...snap.throughput.map((p) => p.v));
  $("throughput-note").textContent = last
    ? `now ${fmtRate(last.v)} · peak ${fmtRate(peak)} tokens/s`
    : "tokens/s";
  const ttfts = snap.ttftMs.map((p) => p.v);
  $("ttft-note").textContent = ttfts.length
    ? `median ${fmtMs(median(ttfts))} · ${ttfts.length} requests`
    : "ms";
}

function requestRow(r, now) {
  const statusClass = {
    prefill: "info",
    decoding: "info",
    completed: "ok",
    incomplete: "warn",
    failed: "bad",
  };
  return h(
    "tr",
    { "data-testid": "request-row", "data-request-id": r.id },
    h("td", { class: "id" }, r.id),
    h("td", {}, r.api),
    // A failed request says why (hover for the whole message).
    h(
      "td",
      {},
      h("span", { class: `pill ${statusClass[r.status] ?? ""}`, title: r.error ?? "" }, r.status),
      r.error
        ? h("span", { class: "why", "data-testid": "request-error" }, ` ${r.error.slice(0, 60)}`)
        : null,
    ),
    h("td", { class: "num" }, fmtCount(r.promptTokens)),
    h("td", { class: "num" }, r.cachedTokens > 0 ? fmtCount(r.cachedTokens) : "—"),
    h("td", { class: "num", "data-testid": "request-output" }, fmtCount(r.outputTokens)),
    h("td", { class: "num" }, fmtMs(r.ttftMs)),
    h("td", { class: "num" }, fmtRate(r.tokensPerSecond)),
    h("td", { class: "num" }, fmtAge(now - r.startedAt)),
  );
}

function renderRequests(snap, now) {
  const empty = (text) => h("tr", { class: "none" }, h("td", { colspan: 9 }, text));
  const sep = (text) => h("tr", { class: "sep" }, h("td", { colspan: 9 }, text));
  const inflight = [...snap.inFlight].sort((a, b) => b.startedAt - a.startedAt);
  $("requests-inflight").replaceChildren(
    sep(`In flight · ${inflight.length}`),
    ...(inflight.length ? inflight.map((r) => requestRow(r, now)) : [empty("Idle")]),
  );
  const recent = [...snap.recent].sort((a, b) => b.startedAt - a.startedAt).slice(0, 12);
  $("requests-recent").replaceChildren(
    sep(`Recent · ${snap.recent.length}`),
    ...(recent.length ? recent.map((r) => requestRow(r, now)) : [empty("No finished requests yet")]),
  );
  $("requests-note").textContent = `${snap.inFlight.length} in flight · ${snap.recent.length} recent`;
}

function render(snap, serverTime) {
  const colors = nodeColors(snap.nodes);
  renderHeader(snap);
  renderKpis(snap);
  renderLayerMap(snap, colors);
  renderNodes(snap, colors);
  renderCharts(snap, serverTime);
  renderRequests(snap, serverTime);
  document.title = `${snap.state === "ready" ? "●" : "○"} studio-cluster · ${snap.modelId}`;
}

// ---- live connection ----

function setConnection(state, text) {
  const el = $("connection");
  el.className = `conn ${state}`;
  el.querySelector(".conn-text").textContent = text;
  document.body.dataset.connection = state;
}

let lastMessage;

// Opened with ?key= (a node with an API key): the footer's links to /metrics and the snapshot need it as well.
const pageKey = new URLSearchParams(location.search).get("key");
if (pageKey) {
  for (const link of document.querySelectorAll(".foot a")) {
    const target = new URL(link.getAttribute("href"), location.href);
    target.searchParams.set("key", pageKey);
    link.setAttribute("href", `${target.pathname}${target.search}`);
  }
}

function connect(attempt = 0) {
  const url = new URL("/dashboard/live", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  // A node with an API key lets the page in with ?key=; the WebSocket needs it too (browsers send no header).
  if (pageKey) url.searchParams.set("key", pageKey);
  const ws = new WebSocket(url);
  let opened = false;
  ws.onopen = () => {
    opened = true;
    setConnection("live", "live");
  };
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "error") {
      const banner = $("banner");
      banner.hidden = false;
      banner.textContent = `No live figures: ${msg.message}`;
      return;
    }
    lastMessage = msg;
    render(msg.snapshot, msg.serverTime);
    document.body.dataset.updates = String(Number(document.body.dataset.updates ?? 0) + 1);
  };
  ws.onclose = () => {
    // Back off up to 5 s; a coordinator restart or a change of coordinator heals without a reload.
    const next = opened ? 0 : attempt + 1;
    const delay = Math.min(5000, 250 * 2 ** Math.min(next, 5));
    setConnection("down", `reconnecting in ${Math.ceil(delay / 1000)}s`);
    setTimeout(() => connect(next), delay);
  };
}

// Charts are sized to their boxes; redraw them when the window changes size.
window.addEventListener("resize", () => {
  if (lastMessage) renderCharts(lastMessage.snapshot, lastMessage.serverTime);
});

connect();
