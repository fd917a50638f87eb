// The stage's link to the next stage: one long-lived Data stream, opened by this stage (the plan named the
// address in LoadShard). A broken stream is reopened on the next write; frames written while it is down are
// lost, and the coordinator learns of the dead neighbour from that node's Status heartbeat.
import { errorMessage } from "../common/errors.js";
import { type DataStream, NodeClient } from "../common/wire/client.js";
import type { DataFrame, DataFrameOut } from "../common/wire/types.js";
import type { FrameSink } from "./stage.js";

export class DownstreamLink implements FrameSink {
  readonly address: string;
  private readonly client: NodeClient;
  private readonly log: (line: string) => void;
  private stream: DataStream | undefined;
  private closed = false;

  constructor(address: string, clusterKey: string, log: (line: string) => void) {
    this.address = address;
    this.client = new NodeClient(address, clusterKey);
    this.log = log;
  }

  /** Opens the stream now, so the first frame does not pay for connection setup. */
  open(): void {
    this.ensure();
  }

  private ensure(): DataStream | undefined {
    if (this.closed) return undefined;
    if (this.stream) return this.stream;
    const stream = this.client.data();
    stream.on("data", (frame: DataFrame) => {
      // The receiver answers only about frames it could not use at all.
      this.log(`downstream ${this.address} refused a frame of seq ${frame.seq}: ${frame.error}`);
    });
    stream.on("error", (err) => {
      if (!this.closed) this.log(`data stream to ${this.address} failed: ${errorMessage(err)}`);
      if (this.stream === stream) this.stream = undefined;
    });
    stream.on("end", () => {
      if (this.stream === stream) this.stream = undefined;
    });
    this.stream = stream;
    return stream;
  }

  write(frames: DataFrameOut[]): void {
    const stream = this.ensure();
    if (!stream) return;
    for (const frame of frames) stream.write(frame);
  }

  close(): void {
    this.closed = true;
    this.stream?.end();
    this.stream = undefined;
    this.client.close();
  }
}
