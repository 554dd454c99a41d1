import assert from "node:assert/strict";
import {
  addMeshBlock,
  COREFILE_BEGIN,
  COREFILE_END,
  CorefileError,
  currentMeshBlock,
  removeMeshBlock,
  serverBlockKeys,
} from "./corefile.ts";

const FIXTURES = new URL("../../tests/fixtures/corefile/", import.meta.url);
const fixtures = [...Deno.readDirSync(FIXTURES)]
  .filter((e) => e.name.endsWith(".Corefile"))
  .map((e) => e.name)
  .sort();
const opts = { domain: "mesh", upstreams: ["198.51.100.53"], cacheSeconds: 5 };

Deno.test("Corefile fixtures: there are several CoreDNS releases", () => {
  assert.ok(fixtures.length >= 4, fixtures.join(", "));
});

for (const f of fixtures) {
  const original = Deno.readTextFileSync(new URL(f, FIXTURES));
  Deno.test(`addMeshBlock() and removeMeshBlock() round-trip ${f}`, () => {
    const added = addMeshBlock(original, opts);
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
    assert.equal(addMeshBlock(added, opts), added, "a second prepare changes nothing");
    assert.equal(removeMeshBlock(added), original, "cleanup gives back the very same text");
    assert.equal(removeMeshBlock(original), original);
    const moved = addMeshBlock(added, { ...opts, upstreams: ["198.51.100.54", "fd00::35"] });
    assert.equal(moved.split(COREFILE_BEGIN).length, 2, "replaced in place, not added twice");
    assert.match(currentMeshBlock(moved)!, /forward \. 198\.51\.100\.54:53 \[fd00::35\]:53\n/);
    assert.equal(removeMeshBlock(moved), original);
  });
}

Deno.test("serverBlockKeys() reads the zones of each layout", () => {
  const read = (f: string) =>
    serverBlockKeys(Deno.readTextFileSync(new URL(f, FIXTURES))).map((k) => `${k.zone}:${k.port}`);
  assert.deepEqual(read("coredns-1.11-kubeadm-1.30.Corefile"), [".:53"]);
  assert.deepEqual(read("coredns-1.10-k3s-1.27.Corefile"), [".:53"]);
  assert.deepEqual(read("coredns-1.11-with-traefik-mesh.Corefile"), [".:53", "traefik.mesh:53"]);
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
    () => addMeshBlock(traefik, { ...opts, domain: "traefik.mesh" }),
    (e: unknown) => e instanceof CorefileError && /traefik\.mesh:53/.test(e.message),
  );
  // the default domain lives beside it
  assert.ok(addMeshBlock(traefik, opts).includes("#### End Traefik Mesh Block\n"));
  assert.throws(() => addMeshBlock(".:53 {\n}\nmesh {\n}\n", opts), /already has a server block/);
  // another port of the same zone is a different server
  assert.ok(addMeshBlock(".:53 {\n}\nmesh:5300 {\n}\n", opts).includes("mesh:53 {"));
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
    assert.throws(() => addMeshBlock(bad, opts), /not one pair/);
    assert.throws(() => removeMeshBlock(bad), /not one pair/);
  }
  // a marker's text inside another line is not a marker
  const quoted = `${base}# see "${COREFILE_END}" below\n`;
  assert.equal(removeMeshBlock(addMeshBlock(quoted, opts)), quoted);
});
