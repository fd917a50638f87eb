// Shard-loading progress on stderr: one bar per node on a terminal, one line per finished node otherwise
// (logs and test output stay readable).
import cliProgress from "cli-progress";

export interface LoadProgressView {
  /** bytesRead of bytesTotal for one node; the first call for a node creates its bar. */
  update(node: string, bytesRead: number, bytesTotal: number): void;
  done(node: string, summary: string): void;
  stop(): void;
}

function gb(bytes: number): string {
  return `${(bytes / 1e9).toFixed(2)} GB`;
}

export function createLoadProgress(stream: NodeJS.WriteStream = process.stderr): LoadProgressView {
  const interactive = stream.isTTY === true;
  const multi = interactive
    ? new cliProgress.MultiBar(
        {
          stream,
          format: "{node} [{bar}] {percentage}% | {read} / {size} | ETA {eta_formatted}",
          hideCursor: true,
          clearOnComplete: false,
          stopOnComplete: false,
          barsize: 30,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  const bars = new Map<string, cliProgress.SingleBar>();
  const width = { node: 12 };

  return {
    update(node, bytesRead, bytesTotal) {
      if (!multi) return;
      const label = node.padEnd(width.node);
      const payload = { node: label, read: gb(bytesRead), size: gb(bytesTotal) };
      const bar = bars.get(node);
      if (!bar) bars.set(node, multi.create(Math.max(1, bytesTotal), bytesRead, payload));
      else {
        bar.setTotal(Math.max(1, bytesTotal));
        bar.update(bytesRead, payload);
      }
    },
    done(node, summary) {
      if (multi) {
        const bar = bars.get(node);
        bar?.update(bar.getTotal(), {});
        multi.log(`${node}: ${summary}\n`);
        return;
      }
      stream.write(`${node}: ${summary}\n`);
    },
    stop() {
      multi?.stop();
      bars.clear();
    },
  };
}

export interface TransferView {
  update(done: number, total: number, file?: string): void;
  stop(): void;
}

function sizeText(bytes: number): string {
  return bytes >= 1e9 ? gb(bytes) : `${(bytes / 1e6).toFixed(1)} MB`;
}

function rateText(bytesPerSecond: number): string {
  return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
}

function etaText(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s % 60).padStart(2, "0")}s`;
}

/**
 * One download's progress: a bar with bytes, rate and time left on a terminal; otherwise a line every 5 s (and
 * at the end), so logs show it too. The rate is over the last few seconds, so a resumed download's ETA is honest.
 */
export function createTransferBar(label: string, stream: NodeJS.WriteStream = process.stderr): TransferView {
  const interactive = stream.isTTY === true;
  const bar = interactive
    ? new cliProgress.SingleBar(
        {
          stream,
          format: `${label} [{bar}] {percentage}% | {doneText} / {totalText} | {rate} | {left} left`,
          hideCursor: true,
          barsize: 30,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  const samples: Array<{ t: number; done: number }> = [];
  let started = false;
  let lastLine = 0;
  return {
    update(done, total) {
      const now = Date.now();
      samples.push({ t: now, done });
      while (samples.length > 2 && now - samples[0].t > 5000) samples.shift();
      const first = samples[0];
      const rate = now > first.t ? ((done - first.done) * 1000) / (now - first.t) : 0;
      const payload = {
        doneText: sizeText(done),
        totalText: sizeText(total),
        rate: rateText(rate),
        left: etaText(rate > 0 ? (total - done) / rate : Number.NaN),
      };
      if (bar) {
        if (!started) bar.start(Math.max(1, total), done, payload);
        else {
          bar.setTotal(Math.max(1, total));
          bar.update(done, payload);
        }
        started = true;
        return;
      }
      if (now - lastLine < 5000 && done < total) return;
      lastLine = now;
      stream.write(
        `${label}: ${payload.doneText} / ${payload.totalText}, ${payload.rate}, ${payload.left} left\n`,
      );
    },
    stop() {
      bar?.stop();
    },
  };
}
