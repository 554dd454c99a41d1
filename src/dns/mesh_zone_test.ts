import assert from "node:assert/strict";
import { type DnsQuery, nameFromString, RCODE, RR_TYPE } from "./dns_message.ts";
import { MeshZone } from "./mesh_zone.ts";

function q(name: string, type: number, o: Partial<DnsQuery> & { cls?: number } = {}): DnsQuery {
  return {
    id: 9,
    opcode: 0,
    rd: true,
    cd: false,
    questions: [{ name: nameFromString(name), type, class: o.cls ?? 1 }],
    ...o,
  };
}

function zone(): MeshZone {
  const z = new MeshZone({ domain: "mesh", ttlSeconds: 7 });
  z.replace([
    { namespace: "shop", name: "web", ipv4: ["10.96.0.10"], ipv6: ["fd00::a"] },
    { namespace: "shop", name: "v4only", ipv4: ["10.96.0.11"], ipv6: [] },
  ]);
  return z;
}

const cases: {
  name: string;
  query: DnsQuery;
  rcode: number;
  aa: boolean;
  answers: string[];
  soa: boolean;
}[] = [
  {
    name: "answers A from the table",
    query: q("web.shop.mesh", RR_TYPE.A),
    rcode: RCODE.NOERROR,
    aa: true,
    answers: ["A 10.96.0.10"],
    soa: false,
  },
  {
    name: "answers AAAA from the table",
    query: q("web.shop.mesh", RR_TYPE.AAAA),
    rcode: RCODE.NOERROR,
    aa: true,
    answers: ["AAAA fd00::a"],
    soa: false,
  },
  {
    name: "answers ANY with both families",
    query: q("web.shop.mesh", RR_TYPE.ANY),
    rcode: RCODE.NOERROR,
    aa: true,
    answers: ["A 10.96.0.10", "AAAA fd00::a"],
    soa: false,
  },
  {
    // RFC 4343: names compare without regard to ASCII case
    name: "matches names in any case",
    query: q("WEB.Shop.MESH", RR_TYPE.A),
    rcode: RCODE.NOERROR,
    aa: true,
    answers: ["A 10.96.0.10"],
    soa: false,
  },
  {
    // RFC 2308 2.2: the name exists, the type does not: NODATA with the SOA
    name: "answers NODATA for AAAA of a service with IPv4 only",
    query: q("v4only.shop.mesh", RR_TYPE.AAAA),
    rcode: RCODE.NOERROR,
    aa: true,
    answers: [],
    soa: true,
  },
  {
    name: "answers NODATA for a type it does not serve",
    query: q("web.shop.mesh", 16 /* TXT */),
    rcode: RCODE.NOERROR,
    aa: true,
    answers: [],
    soa: true,
  },
  {
    name: "answers NXDOMAIN with the SOA for an unknown service",
    query: q("nope.shop.mesh", RR_TYPE.A),
    rcode: RCODE.NXDOMAIN,
    aa: true,
    answers: [],
    soa: true,
  },
  {
    name: "answers NXDOMAIN for a name below a service",
    query: q("x.web.shop.mesh", RR_TYPE.A),
    rcode: RCODE.NXDOMAIN,
    aa: true,
    answers: [],
    soa: true,
  },
  {
    // RFC 8020: NXDOMAIN means nothing exists below; a namespace with services is a non-terminal
    name: "answers NODATA for a namespace that has services",
    query: q("shop.mesh", RR_TYPE.A),
    rcode: RCODE.NOERROR,
    aa: true,
    answers: [],
    soa: true,
  },
  {
    name: "answers NXDOMAIN for a namespace without services",
    query: q("other.mesh", RR_TYPE.A),
    rcode: RCODE.NXDOMAIN,
    aa: true,
    answers: [],
    soa: true,
  },
  {
    name: "answers the SOA at the apex",
    query: q("mesh", RR_TYPE.SOA),
    rcode: RCODE.NOERROR,
    aa: true,
    answers: ["SOA"],
    soa: false,
  },
  {
    name: "refuses names outside the domain (it does not recurse)",
    query: q("example.com", RR_TYPE.A),
    rcode: RCODE.REFUSED,
    aa: false,
    answers: [],
    soa: false,
  },
  {
    name: "refuses a name that only ends like the domain",
    query: q("web.shop.notmesh", RR_TYPE.A),
    rcode: RCODE.REFUSED,
    aa: false,
    answers: [],
    soa: false,
  },
  {
    name: "refuses zone transfers",
    query: q("mesh", RR_TYPE.AXFR),
    rcode: RCODE.REFUSED,
    aa: false,
    answers: [],
    soa: false,
  },
  {
    name: "refuses classes other than IN",
    query: q("web.shop.mesh", RR_TYPE.A, { cls: 3 /* CH */ }),
    rcode: RCODE.REFUSED,
    aa: false,
    answers: [],
    soa: false,
  },
  {
    name: "answers NOTIMP to opcodes other than QUERY",
    query: q("web.shop.mesh", RR_TYPE.A, { opcode: 4 /* NOTIFY */ }),
    rcode: RCODE.NOTIMP,
    aa: false,
    answers: [],
    soa: false,
  },
  {
    // RFC 6891 6.1.3: an EDNS version it does not implement is BADVERS
    name: "answers BADVERS to EDNS version 1",
    query: q("web.shop.mesh", RR_TYPE.A, { edns: { udpSize: 1232, version: 1 } }),
    rcode: RCODE.BADVERS,
    aa: false,
    answers: [],
    soa: false,
  },
  {
    name: "answers FORMERR to two questions",
    query: {
      ...q("web.shop.mesh", RR_TYPE.A),
      questions: [...q("a.mesh", 1).questions, ...q("b.mesh", 1).questions],
    },
    rcode: RCODE.FORMERR,
    aa: false,
    answers: [],
    soa: false,
  },
];
for (const c of cases) {
  Deno.test(`MeshZone.answer() ${c.name}`, () => {
    const r = zone().answer(c.query);
    assert.equal(r.rcode, c.rcode);
    assert.equal(r.aa, c.aa);
    assert.equal(r.id, 9);
    assert.deepEqual(
      r.answers.map((a) =>
        "a" in a.data ? `A ${a.data.a}` : "aaaa" in a.data ? `AAAA ${a.data.aaaa}` : "SOA"
      ),
      c.answers,
    );
    for (const a of r.answers) if (a.type !== RR_TYPE.SOA) assert.equal(a.ttl, 7);
    assert.equal(r.authority.length === 1 && r.authority[0]!.type === RR_TYPE.SOA, c.soa);
  });
}

Deno.test("MeshZone.replace() bumps the SOA serial only when the table changes", () => {
  const z = zone();
  const s = z.serial;
  z.replace([
    { namespace: "shop", name: "v4only", ipv4: ["10.96.0.11"], ipv6: [] },
    { namespace: "shop", name: "web", ipv4: ["10.96.0.10"], ipv6: ["fd00::a"] },
  ]);
  assert.equal(z.serial, s);
  z.replace([{ namespace: "shop", name: "web", ipv4: ["10.96.0.12"], ipv6: [] }]);
  assert.equal(z.serial, s + 1);
  assert.equal(z.lookup("shop", "v4only"), undefined);
  assert.deepEqual(z.lookup("SHOP", "Web")?.ipv4, ["10.96.0.12"]);
});

Deno.test("MeshZone serves a multi-label domain and rejects a bad one", () => {
  const z = new MeshZone({ domain: "traefik.mesh." });
  z.replace([{ namespace: "a", name: "b", ipv4: ["10.0.0.1"], ipv6: [] }]);
  assert.equal(z.answer(q("b.a.traefik.mesh", RR_TYPE.A)).answers.length, 1);
  assert.equal(z.answer(q("b.a.mesh", RR_TYPE.A)).rcode, RCODE.REFUSED);
  for (const d of ["", "-x", "a..b", "a_b"]) {
    assert.throws(() => new MeshZone({ domain: d }), /mesh DNS domain/, d);
  }
});

Deno.test("MeshZone answers under each alias, with the alias's own SOA", () => {
  // Traefik Mesh clients ask for <svc>.<ns>.traefik.mesh, older ones <svc>.<ns>.maesh.
  const z = new MeshZone({ domain: "mesh", aliases: ["traefik.mesh", "maesh", "mesh"] });
  z.replace([{ namespace: "shop", name: "web", ipv4: ["10.96.0.10"], ipv6: [] }]);
  for (const name of ["web.shop.mesh", "web.shop.traefik.mesh", "WEB.shop.Maesh"]) {
    const r = z.answer(q(name, RR_TYPE.A));
    assert.equal(r.rcode, RCODE.NOERROR, name);
    assert.deepEqual(r.answers.map((a) => a.data), [{ a: "10.96.0.10" }], name);
  }
  // The longest zone wins: web.shop.traefik.mesh is not a name three labels below "mesh".
  const none = z.answer(q("nope.shop.traefik.mesh", RR_TYPE.A));
  assert.equal(none.rcode, RCODE.NXDOMAIN);
  assert.deepEqual(none.authority[0]!.name, ["traefik", "mesh"]);
  assert.equal(z.answer(q("web.shop.other", RR_TYPE.A)).rcode, RCODE.REFUSED);
  // Without aliases the names are outside the zone.
  const plain = new MeshZone({ domain: "mesh", aliases: [] });
  plain.replace([{ namespace: "shop", name: "web", ipv4: ["10.96.0.10"], ipv6: [] }]);
  assert.equal(plain.answer(q("web.shop.maesh", RR_TYPE.A)).rcode, RCODE.REFUSED);
  assert.throws(() => new MeshZone({ domain: "mesh", aliases: ["a_b"] }), /domain alias/);
});
