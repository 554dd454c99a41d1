import assert from "node:assert/strict";
import { Logger } from "../observability/mod.ts";
import type { LeaderAddress } from "../distribution/mod.ts";
import { leaseHolderOf, type RawObject } from "../kube/mod.ts";
import { LeaderLookup, LEASE_ADDRESS_ANNOTATION, LEASE_CERT_ANNOTATION } from "./leader_lookup.ts";

function lease(holder: string, annotations: Record<string, string>): RawObject {
  return {
    apiVersion: "coordination.k8s.io/v1",
    kind: "Lease",
    metadata: { name: "meshd-controller", namespace: "meshd", annotations },
    spec: { holderIdentity: holder },
  };
}

const at = (address: string, certPem = "CERT") => ({
  [LEASE_ADDRESS_ANNOTATION]: address,
  [LEASE_CERT_ANNOTATION]: certPem,
});

function setup() {
  let current: RawObject | undefined;
  const told: (LeaderAddress | null)[] = [];
  const lines: Record<string, unknown>[] = [];
  const lookup = new LeaderLookup({
    lease: () => current,
    holderOf: leaseHolderOf,
    onChange: (now) => told.push(now),
    logger: new Logger({ level: "info", format: "json", write: (l) => lines.push(JSON.parse(l)) }),
  });
  return { lookup, told, lines, set: (l: RawObject | undefined) => current = l };
}

Deno.test("LeaderLookup.address() is null until the holder wrote both its address and certificate", () => {
  const { lookup, set } = setup();
  assert.equal(lookup.address(), null);
  set(lease("meshd-a", { [LEASE_ADDRESS_ANNOTATION]: "127.0.66.1:9443" }));
  assert.equal(lookup.holder()?.identity, "meshd-a");
  assert.equal(lookup.address(), null, "no certificate yet");
  set(lease("meshd-a", at("127.0.66.1:9443")));
  assert.deepEqual(lookup.address(), { address: "127.0.66.1:9443", certPem: "CERT" });
});

Deno.test("LeaderLookup.changed() tells of a new leader once, and of a new address or certificate", () => {
  const { lookup, told, lines, set } = setup();
  set(lease("meshd-a", at("127.0.66.1:9443")));
  lookup.changed();
  lookup.changed(); // a renewal: same holder, same annotations
  set(lease("meshd-a", at("127.0.66.1:9443", "CERT2"))); // restarted: a new key
  lookup.changed();
  set(lease("meshd-b", at("127.0.66.2:9443")));
  lookup.changed();
  set(undefined); // the Lease is gone
  lookup.changed();
  assert.deepEqual(told.map((t) => t && `${t.address} ${t.certPem}`), [
    "127.0.66.1:9443 CERT",
    "127.0.66.1:9443 CERT2",
    "127.0.66.2:9443 CERT",
    null,
  ]);
  const found = lines.filter((l) => l["msg"] === "leader found");
  assert.deepEqual(found.map((l) => [l["room"], l["leader"], l["address"]]), [
    ["node", "meshd-a", "127.0.66.1:9443"],
    ["node", "meshd-a", "127.0.66.1:9443"],
    ["node", "meshd-b", "127.0.66.2:9443"],
    ["node", null, null],
  ]);
});
