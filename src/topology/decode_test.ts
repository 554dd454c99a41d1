import assert from "node:assert/strict";
import { decodeObject, SUPPORTED_KINDS } from "./decode.ts";

const src = { file: "a.yaml", doc: 2 };

Deno.test("decodeObject() decodes one object of every supported kind", () => {
  const objects: Record<string, unknown> = {
    Service: { spec: { ports: [{ port: 80 }] } },
    EndpointSlice: { addressType: "IPv4", endpoints: [], ports: [] },
    Pod: { spec: {}, status: {} },
    TrafficTarget: {
      spec: {
        destination: { kind: "ServiceAccount", name: "a" },
        sources: [{ kind: "ServiceAccount", name: "b" }],
        rules: [],
      },
    },
    HTTPRouteGroup: { spec: { matches: [{ name: "all", pathRegex: ".*" }] } },
    TCPRoute: { spec: {} },
    TrafficSplit: { spec: { service: "a", backends: [{ service: "b", weight: 1 }] } },
  };
  assert.deepEqual(Object.keys(objects).sort(), Object.keys(SUPPORTED_KINDS).sort());
  for (const [kind, body] of Object.entries(objects)) {
    const r = decodeObject({
      apiVersion: SUPPORTED_KINDS[kind],
      kind,
      metadata: { name: "x", namespace: "ns" },
      ...(body as object),
    }, src);
    assert.equal(r.status, "ok", `${kind}: ${r.status === "invalid" ? r.error.message : ""}`);
    if (r.status === "ok") {
      assert.equal(r.object.kind, kind);
      assert.deepEqual(r.object.meta.namespace, "ns");
    }
  }
});

Deno.test("decodeObject() puts a missing namespace in default and reads EndpointSlice conditions", () => {
  const r = decodeObject({
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: { name: "s", labels: { "kubernetes.io/service-name": "web" } },
    addressType: "IPv4",
    ports: [{ name: "http", port: 8080 }],
    endpoints: [
      { addresses: ["10.0.0.1"] },
      { addresses: ["10.0.0.2"], conditions: { ready: false, serving: true, terminating: true } },
    ],
  });
  assert.equal(r.status, "ok");
  if (r.status !== "ok" || r.object.kind !== "EndpointSlice") return;
  assert.equal(r.object.meta.namespace, "default");
  assert.equal(r.object.serviceName, "web");
  // A slice port without protocol is TCP; an endpoint without conditions is ready (the API
  // says consumers should treat unknown as ready).
  assert.equal(r.object.ports[0]!.protocol, "TCP");
  assert.deepEqual(
    r.object.endpoints.map((e) => [e.ready, e.serving, e.terminating]),
    [[true, true, false], [false, true, true]],
  );
});

Deno.test("decodeObject() skips kinds and versions meshd does not read", () => {
  const cm = decodeObject({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "c" } }, src);
  assert.equal(cm.status, "skipped");
  const old = decodeObject({
    apiVersion: "split.smi-spec.io/v1alpha2",
    kind: "TrafficSplit",
    metadata: { name: "s" },
  });
  assert.equal(old.status, "skipped");
  if (old.status === "skipped") {
    assert.match(old.reason, /expected "split\.smi-spec\.io\/v1alpha3"/);
  }
});

Deno.test("decodeObject() names the source, object and field of a bad object", () => {
  const cases: [unknown, RegExp, string | undefined][] = [
    [
      {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: "w", namespace: "n" },
        spec: { ports: [{ port: "x" }] },
      },
      /^Cannot read Service "n\/w" in file "a\.yaml", document 3: field "spec\.ports\[0\]\.port" expected an integer from 1 to 65535, found string "x"$/,
      "Service/n/w",
    ],
    [
      { apiVersion: "v1", kind: "Service", metadata: {}, spec: {} },
      /field "metadata\.name" is required/,
      undefined,
    ],
    [
      // Read but not a DNS label: the object's error (Kubernetes refuses it alone), so the
      // file's other objects apply. Characters that would mislead a reader are escaped.
      {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: "Web", namespace: "t\u202e" },
        spec: { ports: [{ port: 80 }] },
      },
      /^Cannot read Service "t\\u202e\/Web" in .*field "metadata\.name" expected a DNS-1035 label/,
      "Service/t\u202e/Web",
    ],
    [
      {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: "w" },
        spec: { ports: [{ port: 1, protocol: "ICMP" }] },
      },
      /field "spec\.ports\[0\]\.protocol"/,
      "Service/default/w",
    ],
    [
      // Kubernetes: "spec.ports[1]: Duplicate value". Both were HTTP ports 80 of one Host, and
      // the second was listed as served but never reached.
      {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: "w" },
        spec: { ports: [{ name: "a", port: 80 }, { name: "b", port: 80 }] },
      },
      /field "spec\.ports\[1\]\.port" repeats port 80 \(TCP\)/,
      "Service/default/w",
    ],
    [
      {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: "w" },
        spec: { ports: [{ name: "a", port: 80 }, { name: "a", port: 81 }] },
      },
      /field "spec\.ports\[1\]\.name" repeats name "a"/,
      "Service/default/w",
    ],
    [
      // YAML's `.nan`: said as NaN, not as JSON's null.
      {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: "w" },
        spec: { ports: [{ port: NaN }] },
      },
      /field "spec\.ports\[0\]\.port" expected an integer from 1 to 65535, found number NaN$/,
      "Service/default/w",
    ],
    [
      // A targetPort string is a port in range or an IANA service name, as in Kubernetes.
      {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: "w" },
        spec: { ports: [{ port: 80, targetPort: "99999" }] },
      },
      /field "spec\.ports\[0\]\.targetPort" expected a port from 1 to 65535 or a port name/,
      "Service/default/w",
    ],
    [
      {
        apiVersion: "specs.smi-spec.io/v1alpha3",
        kind: "HTTPRouteGroup",
        metadata: { name: "g" },
        spec: { matches: [{ name: "a", pathRegex: "([" }] },
      },
      /field "spec\.matches\[0\]\.pathRegex"/,
      "HTTPRouteGroup/default/g",
    ],
    [
      // Valid alone, but matched as `^/(?:*)`: the prefix Traefik Mesh's PathPrefix(`/{path:*}`)
      // stands for, which Go's regexp refuses too. Accepted, it failed every reload.
      {
        apiVersion: "specs.smi-spec.io/v1alpha3",
        kind: "HTTPRouteGroup",
        metadata: { name: "g" },
        spec: { matches: [{ name: "a", pathRegex: "/*" }] },
      },
      /field "spec\.matches\[0\]\.pathRegex" is not a valid regular expression "\/\*"/,
      "HTTPRouteGroup/default/g",
    ],
    ["text", /expected a map, found string "text"/, undefined],
    [{ kind: "Service" }, /apiVersion/, undefined],
  ];
  for (const [raw, re, key] of cases) {
    const r = decodeObject(raw, src);
    assert.equal(r.status, "invalid", JSON.stringify(raw));
    if (r.status === "invalid") {
      assert.match(r.error.message, re);
      assert.equal(r.key, key);
      assert.equal(r.error.name, "ConfigError");
    }
  }
});

Deno.test("decodeObject() rejects endpoint addresses that are not addresses of the slice's type", () => {
  const slice = (addressType: string, address: string) => ({
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: { name: "s" },
    addressType,
    endpoints: [{ addresses: [address] }],
  });
  const bads: [string, string][] = [["IPv4", "999.1.1.1"], ["IPv4", "10.0.0"], [
    "IPv6",
    "fd00::1::2",
  ]];
  for (const [type, bad] of bads) {
    const r = decodeObject(slice(type, bad), src);
    assert.equal(r.status, "invalid", bad);
    if (r.status === "invalid") {
      assert.equal(r.error.field, "endpoints[0].addresses[0]");
      assert.match(r.error.message, new RegExp(`found "${bad}"`));
    }
  }
  const goods: [string, string][] = [["IPv4", "10.0.0.1"], ["IPv6", "fd00::1"], [
    "FQDN",
    "a.example",
  ]];
  for (const [type, good] of goods) {
    assert.equal(decodeObject(slice(type, good), src).status, "ok", good);
  }
});

Deno.test("decodeObject() reads HTTPRouteGroup headers as a map or as a list of maps", () => {
  const group = (headers: unknown) =>
    decodeObject({
      apiVersion: "specs.smi-spec.io/v1alpha3",
      kind: "HTTPRouteGroup",
      metadata: { name: "g", namespace: "test" },
      spec: { matches: [{ name: "m", headers }] },
    }, src);
  const headersOf = (r: ReturnType<typeof decodeObject>): unknown => {
    if (r.status === "invalid") return r.error.message;
    if (r.status === "ok" && r.object.kind === "HTTPRouteGroup") {
      return r.object.matches[0]!.headers;
    }
    return r;
  };
  // The SMI text's form, and the form of Traefik Mesh's CRD (one key per item, usually).
  assert.deepEqual(headersOf(group({ a: "1", b: "2" })), { a: "1", b: "2" });
  assert.deepEqual(headersOf(group([{ a: "1" }, { b: "2" }])), { a: "1", b: "2" });
  assert.deepEqual(headersOf(group([{ a: "1", b: "2" }])), { a: "1", b: "2" });
  assert.deepEqual(headersOf(group([])), {});
  assert.match(
    String(headersOf(group([{ a: "1" }, { A: "2" }]))),
    /field "spec\.matches\[0\]\.headers\[1\]\["A"\]" names header "A" a second time/,
  );
  assert.match(
    String(headersOf(group([{ a: true }]))),
    /field "spec\.matches\[0\]\.headers\[0\]\["a"\]" expected a string, found boolean true/,
  );
  assert.match(
    String(headersOf(group(["a: 1"]))),
    /field "spec\.matches\[0\]\.headers\[0\]" expected a map, found string/,
  );
});
