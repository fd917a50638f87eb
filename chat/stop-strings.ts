// Client stop strings on the visible text: text is held back while it could still be the start of one.

export class StopStringMatcher {
  private held = "";
  private stopped = false;
  /** The stop string that ended the text (Anthropic's stop_sequence). */
  matched: string | undefined;

  constructor(private readonly stops: string[]) {}

  get hasStopped(): boolean {
    return this.stopped;
  }

  /** Returns the text safe to emit; after a stop string matched, the text before it and nothing more. */
  push(text: string): string {
    if (this.stopped) return "";
    if (this.stops.length === 0) return text;
    const combined = this.held + text;
    let cut = -1;
    for (const stop of this.stops) {
      const at = combined.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) {
        cut = at;
        this.matched = stop;
      }
    }
    if (cut >= 0) {
      this.stopped = true;
      this.held = "";
      return combined.slice(0, cut);
    }
    const keep = Math.max(...this.stops.map((stop) => longestPrefixTail(combined, stop)));
    this.held = combined.slice(combined.length - keep);
    return combined.slice(0, combined.length - keep);
  }

  /** The reply ended without a stop string: what was held back is ordinary text. */
  flush(): string {
    const rest = this.stopped ? "" : this.held;
    this.held = "";
    return rest;
  }
}

function longestPrefixTail(text: string, stop: string): number {
  for (let n = Math.min(text.length, stop.length - 1); n > 0; n--)
    if (text.endsWith(stop.slice(0, n))) return n;
  return 0;
}

/** `stop` as sent: a string, a list, or nothing; empty strings are ignored. */
export function stopStrings(raw: unknown): string[] {
  if (typeof raw === "string") return raw === "" ? [] : [raw];
  if (Array.isArray(raw)) return raw.filter((s): s is string => typeof s === "string" && s !== "");
  return [];
}
