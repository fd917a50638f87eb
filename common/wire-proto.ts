// Loads proto/cluster.proto once (from the package root, so it works from sources and from dist/) and hands out
// the StudioNode service definition for servers and the client constructor for callers.
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { packageRoot } from "./paths.js";
import { decodeDataFrame, encodeDataFrame } from "./wire-codec.js";
import type { DataFrameOut } from "./wire-types.js";

/** How every process decodes the proto: the shapes in common/wire-types.ts depend on these options. */
export const protoLoaderOptions: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: Number,
  defaults: true,
  oneofs: true,
};

/** Frames and replies stay far below this; it only has to exceed the largest data chunk plus its header. */
export const maxMessageBytes = 16 * 1024 * 1024;

export const channelOptions: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": maxMessageBytes,
  "grpc.max_send_message_length": maxMessageBytes,
  // Pings keep idle data streams open through NATs and reveal a dead peer on an otherwise silent link.
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.http2.min_time_between_pings_ms": 10_000,
};

let loaded: protoLoader.PackageDefinition | undefined;

export function protoPath(): string {
  return join(packageRoot(), "proto", "cluster.proto");
}

function packageDefinition(): protoLoader.PackageDefinition {
  loaded ??= withDataFrameCodec(protoLoader.loadSync(protoPath(), protoLoaderOptions));
  return loaded;
}

const serviceName = "studio.cluster.v1.StudioNode";

/**
 * The DataFrame messages (Data both ways, Results replies) use common/wire-codec.ts instead of proto-loader's
 * generic codec: they are written once per hop per token, where the generic path's cost shows in the hop
 * latency. Same bytes on the wire, same objects out; the generic decoder still takes what the fast one does not
 * expect.
 */
function withDataFrameCodec(pkg: protoLoader.PackageDefinition): protoLoader.PackageDefinition {
  const service = pkg[serviceName] as protoLoader.ServiceDefinition;
  const { Data, Results } = service;
  const generic = Data.requestDeserialize;
  const decode = (buf: Buffer) => decodeDataFrame(buf, generic);
  // grpc-js hands over whatever the caller wrote; the encoder checks the shape it needs.
  const codec = { serialize: (frame: object) => encodeDataFrame(frame as DataFrameOut), deserialize: decode };
  return {
    ...pkg,
    [serviceName]: {
      ...service,
      Data: {
        ...Data,
        requestSerialize: codec.serialize,
        requestDeserialize: codec.deserialize,
        responseSerialize: codec.serialize,
        responseDeserialize: codec.deserialize,
      },
      Results: { ...Results, responseSerialize: codec.serialize, responseDeserialize: codec.deserialize },
    },
  };
}

/** The StudioNode service, for grpc.Server.addService. */
export function studioNodeService(): grpc.ServiceDefinition {
  return packageDefinition()[serviceName] as grpc.ServiceDefinition;
}

/** Constructor of an untyped StudioNode client; common/wire-client.ts wraps it with types and the key. */
export function studioNodeClientConstructor(): grpc.ServiceClientConstructor {
  const pkg = grpc.loadPackageDefinition(packageDefinition()) as unknown as {
    studio: { cluster: { v1: { StudioNode: grpc.ServiceClientConstructor } } };
  };
  return pkg.studio.cluster.v1.StudioNode;
}

/** Server options matching channelOptions (message sizes, ping tolerance). */
export const serverOptions: grpc.ServerOptions = {
  "grpc.max_receive_message_length": maxMessageBytes,
  "grpc.max_send_message_length": maxMessageBytes,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.http2.min_ping_interval_without_data_ms": 5_000,
};
