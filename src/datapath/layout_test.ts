import assert from "node:assert/strict";
import { DEFAULT_BPF_OBJECT } from "./fast_path.ts";
import { decode, encode, ipv4Number, ipv6Bytes, STRUCTS } from "./layout.ts";

interface BtfMember {
  name: string;
  type_id: number;
  bits_offset: number;
}
interface BtfType {
  id: number;
  kind: string;
  name?: string;
  size?: number;
  members?: BtfMember[];
  type_id?: number;
  nr_elems?: number;
}

/** The structs of the built object, from its BTF as bpftool prints it. */
async function btfStructs(): Promise<Map<string, BtfType>> {
  const path = DEFAULT_BPF_OBJECT.pathname;
  try {
    await Deno.stat(path);
  } catch {
    throw new Error(`${path} is missing: run bash bpf/build.sh (scripts/test does)`);
  }
  const o = await new Deno.Command("bpftool", { args: ["btf", "dump", "file", path, "-j"] })
    .output();
  if (!o.success) throw new Error(`bpftool: ${new TextDecoder().decode(o.stderr)}`);
  const types = (JSON.parse(new TextDecoder().decode(o.stdout)) as { types: BtfType[] }).types;
  const byId = new Map(types.map((t) => [t.id, t]));
  const out = new Map<string, BtfType>();
  for (const t of types) if (t.kind === "STRUCT" && t.name) out.set(t.name, t);
  // Resolve each member's size through typedefs and arrays, for the comparison below.
  const sizeOf = (id: number): number => {
    const t = byId.get(id)!;
    if (t.kind === "TYPEDEF" || t.kind === "VOLATILE" || t.kind === "CONST") {
      return sizeOf(t.type_id!);
    }
    if (t.kind === "ARRAY") return sizeOf(t.type_id!) * t.nr_elems!;
    return t.size!;
  };
  for (const t of out.values()) {
    for (const m of t.members ?? []) (m as BtfMember & { size: number }).size = sizeOf(m.type_id);
  }
  return out;
}

Deno.test("layout.ts matches bpf/meshd.h field by field, as the built object's BTF has it", async () => {
  const btf = await btfStructs();
  for (const spec of Object.values(STRUCTS)) {
    const c = btf.get(spec.name);
    assert.ok(c, `struct ${spec.name} is not in the object's BTF`);
    assert.equal(c.size, spec.size, `sizeof(struct ${spec.name})`);
    const members = (c.members ?? []) as (BtfMember & { size: number })[];
    assert.deepEqual(
      members.map((m) => ({ name: m.name, offset: m.bits_offset / 8, size: m.size })),
      spec.fields.map((f) => ({ name: f.name, offset: f.offset, size: f.size })),
      `fields of struct ${spec.name}`,
    );
  }
  // Every meshd struct in the header is mirrored.
  const mirrored = new Set<string>(Object.values(STRUCTS).map((s) => s.name));
  for (const name of btf.keys()) {
    if (name.startsWith("meshd_")) assert.ok(mirrored.has(name), `struct ${name} has no mirror`);
  }
});

Deno.test("encode() writes network order where the header says __be", () => {
  const key = encode(STRUCTS.meshd_svc4_key, { addr: ipv4Number("10.96.0.1"), port: 80, proto: 6 });
  assert.deepEqual([...key], [10, 96, 0, 1, 0, 80, 6, 0]);
  const svc = encode(STRUCTS.meshd_svc, { id: 1, half: 1, count: 258, flags: 1 });
  assert.deepEqual([...svc], [1, 0, 0, 0, 1, 0, 0, 0, 2, 1, 0, 0, 1, 0, 0, 0]);
  assert.deepEqual(decode(STRUCTS.meshd_svc, svc), { id: 1, half: 1, count: 258, flags: 1 });
  assert.deepEqual([...ipv6Bytes("fd00:96::10")], [
    0xfd,
    0,
    0,
    0x96,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0x10,
  ]);
  assert.deepEqual([...ipv6Bytes("::ffff:10.0.0.1")].slice(10), [0xff, 0xff, 10, 0, 0, 1]);
  assert.throws(() => ipv4Number("10.0.0"), /is not an IPv4 address/);
  assert.throws(() => ipv6Bytes("1::2::3"), /is not an IPv6 address/);
});
