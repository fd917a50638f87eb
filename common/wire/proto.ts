// Loads proto/cluster.proto once (from the package root, so it works from sources and from dist/) and hands out
// the StudioNode service definition for servers and the client constructor for callers.
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { packageRoot } from "../paths.js";

/** How every process decodes the proto: the shapes in common/wire/types.ts depend on these options. */
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
  // TLS: the name a client asks for (SNI). Nodes are dialled by IP, which SNI may not carry (Node warns), and
  // no certificate between nodes is checked by name (tls.ts): a fixed name, ignored by the server.
  "grpc.ssl_target_name_override": "studio-cluster",
};

let loaded: protoLoader.PackageDefinition | undefined;

export function protoPath(): string {
  return join(packageRoot(), "proto", "cluster.proto");
}

function packageDefinition(): protoLoader.PackageDefinition {
  loaded ??= protoLoader.loadSync(protoPath(), protoLoaderOptions);
  return loaded;
}

/** The StudioNode service, for grpc.Server.addService. */
export function studioNodeService(): grpc.ServiceDefinition {
  return packageDefinition()["studio.cluster.v1.StudioNode"] as grpc.ServiceDefinition;
}

/** Constructor of an untyped StudioNode client; common/wire/client.ts wraps it with types and the key. */
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
