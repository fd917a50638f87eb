// Responses kept in memory for GET / DELETE /v1/responses/{id} and previous_response_id (store: true, OpenAI's
// default). Bounded by count and by size, oldest out first: a server that runs for weeks must not grow. The
// coordinator holds them; a new coordinator starts empty, and a lost id is answered as not found.

export interface StoredResponse {
  /** The response object as GET returns it. */
  response: Record<string, unknown>;
  /** Everything the reply answered, as Responses input items: previous turns, then this request's input. */
  input: unknown[];
}

export interface ResponseStoreLimits {
  maxResponses: number;
  /** Sum of the stored responses' JSON sizes, in bytes. */
  maxBytes: number;
}

export const DEFAULT_STORE_LIMITS: ResponseStoreLimits = { maxResponses: 512, maxBytes: 64 * 1024 * 1024 };

export class ResponseStore {
  /** Insertion order is age: a Map iterates oldest first. */
  private readonly entries = new Map<string, { stored: StoredResponse; bytes: number }>();
  private bytes = 0;

  constructor(private readonly limits: ResponseStoreLimits = DEFAULT_STORE_LIMITS) {}

  get size(): number {
    return this.entries.size;
  }

  put(id: string, stored: StoredResponse): void {
    this.delete(id);
    const bytes = JSON.stringify(stored).length;
    // One response bigger than the whole budget is not kept: GET answers not found, as after eviction.
    if (bytes > this.limits.maxBytes) return;
    this.entries.set(id, { stored, bytes });
    this.bytes += bytes;
    for (const [oldest, entry] of this.entries) {
      if (this.entries.size <= this.limits.maxResponses && this.bytes <= this.limits.maxBytes) break;
      this.entries.delete(oldest);
      this.bytes -= entry.bytes;
    }
  }

  get(id: string): StoredResponse | undefined {
    return this.entries.get(id)?.stored;
  }

  delete(id: string): boolean {
    const entry = this.entries.get(id);
    if (!entry) return false;
    this.entries.delete(id);
    this.bytes -= entry.bytes;
    return true;
  }
}
