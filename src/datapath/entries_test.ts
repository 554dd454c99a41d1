import assert from "node:assert/strict";
import { endpoint, meshConfig } from "../topology/_testing.ts";
import { clusterIPAddresses, datapathEntries } from "./entries.ts";

const proxy = { ipv4: "10.0.0.5", httpPort: 5000 };

const config = meshConfig([
  {
    name: "db",
    clusterIP: "10.96.0.10",
    ports: [{
      port: 5432,
      protocol: "tcp",
      listenPort: 10000,
      endpoints: [
        endpoint("10.1.0.1", 5432),
        endpoint("10.1.0.2", 5432, { ready: false }),
        endpoint("fd00::1", 5432),
      ],
    }],
  },
  {
    name: "dns",
    clusterIP: "10.96.0.11",
    ports: [{
      port: 53,
      protocol: "udp",
      listenPort: 15000,
      endpoints: [endpoint("10.1.0.3", 53)],
    }],
  },
  {
    name: "web",
    clusterIP: "10.96.0.12",
    ports: [{ port: 80, protocol: "http", endpoints: [endpoint("10.1.0.4", 8080)] }],
  },
  {
    name: "split",
    clusterIP: "10.96.0.13",
    ports: [{
      port: 7000,
      protocol: "tcp",
      listenPort: 10001,
      endpoints: [endpoint("10.1.0.5", 7000)],
      split: { name: "default/s", matches: [], backends: [{ service: "db", weight: 1 }] },
    }],
  },
  {
    name: "down",
    clusterIP: "10.96.0.14",
    ports: [{
      port: 9,
      protocol: "tcp",
      listenPort: 10002,
      endpoints: [endpoint("10.1.0.6", 9, { ready: false })],
    }],
  },
  { name: "headless", clusterIP: "None", ports: [{ port: 1, protocol: "tcp", listenPort: 10003 }] },
]);

Deno.test("datapathEntries(): plain L4 ports go to ready endpoints of their family, the rest to meshd", () => {
  const out = datapathEntries(config, clusterIPAddresses(config), proxy);
  assert.deepEqual(
    out.map((e) =>
      `${e.service} ${e.protocol} ${e.address}:${e.port} -> ${
        e.backends.map((b) => `${b.address}:${b.port}`)
      }${e.redirect ? " (proxy)" : ""}`
    ),
    [
      // Not ready, and another family: left out.
      "default/db:5432 tcp 10.96.0.10:5432 -> 10.1.0.1:5432",
      "default/dns:53 udp 10.96.0.11:53 -> 10.1.0.3:53",
      // HTTP is routed by Host on the shared entrypoint.
      "default/web:80 tcp 10.96.0.12:80 -> 10.0.0.5:5000 (proxy)",
      // A split needs the proxy: its own listener.
      "default/split:7000 tcp 10.96.0.13:7000 -> 10.0.0.5:10001 (proxy)",
      // No ready endpoint (down) and no ClusterIP (headless): no entry, the userspace path decides.
    ],
  );
});

Deno.test("datapathEntries(): with ACL every port needs the proxy; no listener address of the family, no entry", () => {
  const acl = meshConfig([
    {
      name: "db",
      ports: [{
        port: 5432,
        protocol: "tcp",
        listenPort: 10000,
        endpoints: [endpoint("10.1.0.1", 5432)],
        access: [],
      }],
    },
  ]);
  const addresses = new Map([["default/db", { ipv4: ["10.96.0.10"], ipv6: ["fd00:96::10"] }]]);
  const out = datapathEntries(acl, addresses, proxy);
  assert.deepEqual(out.map((e) => [e.family, e.address, e.redirect, e.backends]), [
    [4, "10.96.0.10", true, [{ address: "10.0.0.5", port: 10000 }]],
  ]);
  const v6 = datapathEntries(acl, addresses, { ipv6: "fd00::5", httpPort: 5000 });
  assert.deepEqual(v6.map((e) => [e.family, e.address, e.backends]), [
    [6, "fd00:96::10", [{ address: "fd00::5", port: 10000 }]],
  ]);
});
