import assert from "node:assert/strict";
import {
  addMeshBlock,
  COREFILE_BEGIN,
  COREFILE_END,
  CorefileError,
  corefileZones,
  currentMeshBlock,
  meshZones,
  removeMeshBlock,
  serverBlockKeys,
} from "./corefile.ts";

const FIXTURES = new URL("../../tests/fixtures/corefile/", import.meta.url);
const fixtures = [...Deno.readDirSync(FIXTURES)]
  .filter((e) => e.name.endsWith(".Corefile"))
  .map((e) => e.name)
  .sort();
const opts = { domain: "mesh", upstreams: ["198.51.100.53"], cacheSeconds: 5 };
// what meshd prepare passes by default
const withAliases = { ...opts, aliases: ["traefik.mesh", "maesh"] };
const add = (corefile: string, o = opts) => addMeshBlock(corefile, o).corefile;

Deno.test("Corefile fixtures: there are several CoreDNS releases", () => {
  assert.ok(fixtures.length >= 4, fixtures.join(", "));
});

for (const f of fixtures) {
  const original = Deno.readTextFileSync(new URL(f, FIXTURES));
  Deno.test(`addMeshBlock() and removeMeshBlock() round-trip ${f}`, () => {
    const added = add(original);
    assert.ok(added.startsWith(original), "the original text is kept as it was");
    assert.equal(added.split(COREFILE_BEGIN).length, 2);
    assert.match(
      added,
      /\nmesh:53 \{\n {4}errors\n {4}cache 5\n {4}forward \. 198\.51\.100\.53:53\n\}\n# END meshd\n$/,
    );
    // what CoreDNS will see: the old blocks and the mesh one
    assert.deepEqual(
      serverBlockKeys(added).map((k) => `${k.zone}:${k.port}`),
      [...serverBlockKeys(original).map((k) => `${k.zone}:${k.port}`), "mesh:53"],
    );
    assert.equal(add(added), added, "a second prepare changes nothing");
    assert.equal(removeMeshBlock(added), original, "cleanup gives back the very same text");
    assert.equal(removeMeshBlock(original), original);
    const moved = add(added, { ...opts, upstreams: ["198.51.100.54", "fd00::35"] });
    assert.equal(moved.split(COREFILE_BEGIN).length, 2, "replaced in place, not added twice");
    assert.match(currentMeshBlock(moved)!, /forward \. 198\.51\.100\.54:53 \[fd00::35\]:53\n/);
    assert.equal(removeMeshBlock(moved), original);
  });

  Deno.test(`addMeshBlock() with the default aliases keeps ${f} loadable by CoreDNS`, () => {
    const edit = addMeshBlock(original, withAliases);
    const keys = serverBlockKeys(edit.corefile).map((k) => `${k.zone}:${k.port}`);
    // CoreDNS refuses to start when one zone and port is a key twice
    assert.equal(new Set(keys).size, keys.length, keys.join(" "));
    const before = serverBlockKeys(original).map((k) => k.zone);
    assert.deepEqual(edit.leftOut, ["traefik.mesh", "maesh"].filter((a) => before.includes(a)));
    assert.deepEqual(edit.zones, [
      "mesh",
      ...["traefik.mesh", "maesh"].filter((a) => !before.includes(a)),
    ]);
    assert.equal(removeMeshBlock(edit.corefile), original, "cleanup gives back the very same text");
  });
}

Deno.test("serverBlockKeys() reads the zones of each layout", () => {
  const read = (f: string) =>
    serverBlockKeys(Deno.readTextFileSync(new URL(f, FIXTURES))).map((k) => `${k.zone}:${k.port}`);
  assert.deepEqual(read("coredns-1.11-kubeadm-1.30.Corefile"), [".:53"]);
  assert.deepEqual(read("coredns-1.10-k3s-1.27.Corefile"), [".:53"]);
  assert.deepEqual(read("coredns-1.11-with-traefik-mesh.Corefile"), [".:53", "traefik.mesh:53"]);
  assert.deepEqual(read("coredns-1.8-with-traefik-mesh-1.4.Corefile"), [
    ".:53",
    "traefik.mesh:53",
  ]);
  assert.deepEqual(read("coredns-1.6-with-maesh.Corefile"), [".:53", "maesh:53"]);
  assert.deepEqual(
    serverBlockKeys("example.org:5300, dns://Mesh.:53,\n  other {\n}\n(snip) {\n}\nimport x\n"),
    [{ zone: "example.org", port: 5300 }, { zone: "mesh", port: 53 }, { zone: "other", port: 53 }],
  );
});

Deno.test("addMeshBlock() refuses a Corefile that serves the domain outside its markers", () => {
  const traefik = Deno.readTextFileSync(
    new URL("coredns-1.11-with-traefik-mesh.Corefile", FIXTURES),
  );
  // Traefik Mesh's own domain: CoreDNS would refuse two blocks for one zone
  assert.throws(
    () => add(traefik, { ...opts, domain: "traefik.mesh" }),
    (e: unknown) => e instanceof CorefileError && /traefik\.mesh:53/.test(e.message),
  );
  // the default domain lives beside it
  assert.ok(add(traefik).includes("#### End Traefik Mesh Block\n"));
  assert.throws(() => add(".:53 {\n}\nmesh {\n}\n"), /already has a server block/);
  // another port of the same zone is a different server
  assert.ok(add(".:53 {\n}\nmesh:5300 {\n}\n").includes("mesh:53 {"));
});

Deno.test("addMeshBlock() puts the domain and every alias into one server block", () => {
  const cases: { name: string; aliases: string[]; keys: string }[] = [
    // CoreDNS: "[SCHEME://]ZONE [[SCHEME://]ZONE]...[:PORT] {": several zones, one server
    {
      name: "the default aliases",
      aliases: ["traefik.mesh", "maesh"],
      keys: "mesh:53 traefik.mesh:53 maesh:53",
    },
    // --domain-aliases "" turns them off
    { name: "no aliases", aliases: [], keys: "mesh:53" },
    // a zone twice in one block is a duplicate key CoreDNS refuses; names are case-insensitive
    {
      name: "duplicates once",
      aliases: ["Traefik.Mesh.", "traefik.mesh", "MESH"],
      keys: "mesh:53 traefik.mesh:53",
    },
  ];
  for (const c of cases) {
    const edit = addMeshBlock(".:53 {\n}\n", { ...opts, aliases: c.aliases });
    assert.match(edit.corefile, new RegExp(`\\n${c.keys.replace(/\./g, "\\.")} \\{\\n`), c.name);
    assert.equal(edit.corefile.match(/^\s*forward /gm)?.length, 1, `${c.name}: one forward`);
    assert.deepEqual(edit.leftOut, [], c.name);
    assert.deepEqual(corefileZones(edit.corefile).forwarded, c.keys.replace(/:53/g, "").split(" "));
  }
});

Deno.test("addMeshBlock() leaves out an alias a block outside its markers serves", () => {
  const cases: { name: string; fixture: string; leftOut: string[]; keys: string }[] = [
    // Traefik Mesh 1.4+: "traefik.mesh:53 { forward . <its DNS Service> }" between its markers
    {
      name: "Traefik Mesh 1.4",
      fixture: "coredns-1.8-with-traefik-mesh-1.4.Corefile",
      leftOut: ["traefik.mesh"],
      keys: "mesh:53 maesh:53",
    },
    {
      name: "Traefik Mesh, rewrite",
      fixture: "coredns-1.11-with-traefik-mesh.Corefile",
      leftOut: ["traefik.mesh"],
      keys: "mesh:53 maesh:53",
    },
    // Maesh before 1.4 served "maesh:53"
    {
      name: "Maesh",
      fixture: "coredns-1.6-with-maesh.Corefile",
      leftOut: ["maesh"],
      keys: "mesh:53 traefik.mesh:53",
    },
  ];
  for (const c of cases) {
    const original = Deno.readTextFileSync(new URL(c.fixture, FIXTURES));
    const edit = addMeshBlock(original, withAliases);
    assert.deepEqual(edit.leftOut, c.leftOut, c.name);
    assert.match(currentMeshBlock(edit.corefile)!, new RegExp(`^${c.keys} \\{$`, "m"), c.name);
    assert.deepEqual(corefileZones(edit.corefile), {
      forwarded: c.keys.replace(/:53/g, "").split(" "),
      elsewhere: [".", ...c.leftOut],
    });
    assert.equal(
      addMeshBlock(edit.corefile, withAliases).corefile,
      edit.corefile,
      `${c.name}: again, no change`,
    );
    // Traefik Mesh's cleanup takes its block away; prepare then adds the alias in place
    const header = c.fixture.includes("maesh")
      ? "#### Begin Maesh Block"
      : "#### Begin Traefik Mesh Block";
    const theirs = edit.corefile.slice(
      edit.corefile.indexOf(header),
      edit.corefile.indexOf(COREFILE_BEGIN),
    );
    const gone = edit.corefile.replace(theirs, "");
    const later = addMeshBlock(gone, withAliases);
    assert.deepEqual(later.leftOut, [], c.name);
    assert.match(
      currentMeshBlock(later.corefile)!,
      /^mesh:53 traefik\.mesh:53 maesh:53 \{$/m,
      c.name,
    );
    assert.equal(later.corefile.split(COREFILE_BEGIN).length, 2, `${c.name}: replaced in place`);
    assert.equal(removeMeshBlock(later.corefile), removeMeshBlock(gone), `${c.name}: cleanup`);
  }
  // an alias served on another port does not clash
  assert.deepEqual(addMeshBlock(".:53 {\n}\ntraefik.mesh:5353 {\n}\n", withAliases).leftOut, []);
});

Deno.test("meshZones() refuses a name that is not a domain name", () => {
  const cases: { name: string; domain: string; aliases: string[]; error: RegExp }[] = [
    // the names become Corefile syntax: a brace or a space would change its meaning
    {
      name: "a brace",
      domain: "mesh",
      aliases: ["evil {"],
      error: /"evil \{" as a mesh domain alias/,
    },
    { name: "a space", domain: "mesh", aliases: ["a b"], error: /"a b" as a mesh domain alias/ },
    {
      name: "a scheme",
      domain: "tls://mesh",
      aliases: [],
      error: /"tls:\/\/mesh" as the mesh domain/,
    },
    { name: "empty", domain: "mesh", aliases: [""], error: /"" as a mesh domain alias/ },
  ];
  for (const c of cases) {
    assert.throws(
      () => meshZones(c),
      (e: unknown) => e instanceof CorefileError && c.error.test(e.message),
      c.name,
    );
  }
  assert.deepEqual(meshZones({ domain: "Mesh.", aliases: ["maesh"] }), ["mesh", "maesh"]);
});

Deno.test("corefileZones() reads what meshd's block forwards and what others serve", () => {
  assert.deepEqual(corefileZones(".:53 {\n}\n"), { forwarded: [], elsewhere: ["."] });
  const c = addMeshBlock(".:53 {\n}\nmaesh:53 {\n}\n", withAliases).corefile;
  assert.deepEqual(corefileZones(c), {
    forwarded: ["mesh", "traefik.mesh"],
    elsewhere: [".", "maesh"],
  });
});

Deno.test("addMeshBlock() and removeMeshBlock() refuse markers that do not pair up", () => {
  const base = ".:53 {\n}\n";
  for (
    const bad of [
      `${base}${COREFILE_BEGIN}\nmesh:53 {\n}\n`,
      `${base}mesh:53 {\n}\n${COREFILE_END}\n`,
      `${base}${COREFILE_END}\n${COREFILE_BEGIN}\n`,
      `${base}${COREFILE_BEGIN}\n${COREFILE_END}\n${COREFILE_BEGIN}\n${COREFILE_END}\n`,
    ]
  ) {
    assert.throws(() => add(bad), /not one pair/);
    assert.throws(() => removeMeshBlock(bad), /not one pair/);
  }
  // a marker's text inside another line is not a marker
  const quoted = `${base}# see "${COREFILE_END}" below\n`;
  assert.equal(removeMeshBlock(add(quoted)), quoted);
});
