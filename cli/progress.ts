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
