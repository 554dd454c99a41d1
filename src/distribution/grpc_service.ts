import * as grpc from "@grpc/grpc-js";
import { fromJSON } from "@grpc/proto-loader";
import protobuf from "protobufjs";
import protoText from "./distribution.proto" with { type: "text" };

/** `NodeReport`, as grpc-js decodes it (oneof field names kept as in the .proto). */
export interface NodeReportMessage {
  report?: "hello" | "ack";
  hello?: {
    node: string;
    applied_version: number;
    applied_epoch: string;
    token: string;
    accepts_parts?: boolean;
  };
  ack?: { version: number; applied: boolean; error: string; parts?: number };
}

/** `ConfigUpdate`, as grpc-js decodes it. */
export interface ConfigUpdateMessage {
  version: number;
  epoch: string;
  body?: "snapshot" | "delta" | "part";
  snapshot?: Uint8Array;
  delta?: Uint8Array;
  /** A leading part of a large update (only to nodes that accept parts). */
  part?: Uint8Array;
}

/** The `ConfigDistribution` service, defined by `distribution.proto` (the one source). */
export interface DistributionPackage {
  service: grpc.ServiceDefinition;
  client: grpc.ServiceClientConstructor;
}

let cached: DistributionPackage | null = null;

/** Loads the service from the .proto text bundled with meshd. */
export function distributionPackage(): DistributionPackage {
  if (cached) return cached;
  const root = protobuf.parse(protoText, { keepCase: true }).root;
  const def = fromJSON(root.toJSON(), { longs: Number, oneofs: true, defaults: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    meshd: { distribution: { v1: { ConfigDistribution: grpc.ServiceClientConstructor } } };
  };
  const client = pkg.meshd.distribution.v1.ConfigDistribution;
  cached = { service: client.service, client };
  return cached;
}
