/**
 * The TypeScript mirror of `bpf/meshd.h`: every struct meshd shares with its BPF programs, with
 * each field's offset and size, and the encoders that write them. A test reads the built
 * object's BTF and checks this file against it, field by field.
 *
 * Fields typed `__be16`/`__be32` in C are written in network byte order here; the others in
 * the host's order (little-endian on every platform meshd ships for).
 *
 * @module
 */

/** `MESHD_LAYOUT_VERSION`: kept in `meshd_meta`, checked before pinned maps are taken over. */
export const LAYOUT_VERSION = 2;
/** `MESHD_MAX_BACKENDS`: slots in each half of a service port's backend array. */
export const MAX_BACKENDS = 4096;
/** `MESHD_SVC_REDIRECT`: the backend is this node's meshd listener. */
export const SVC_REDIRECT = 1;

/** How a field is written. */
export type FieldKind = "u8" | "u16" | "u32" | "u64" | "be16" | "be32" | "be32x4";

/** One field of a shared struct. */
export interface FieldSpec {
  name: string;
  offset: number;
  size: number;
  kind: FieldKind;
}

/** One shared struct: its C name, size and fields. */
export interface StructSpec {
  name: string;
  size: number;
  fields: FieldSpec[];
}

const f = (name: string, offset: number, kind: FieldKind): FieldSpec => ({
  name,
  offset,
  kind,
  size: { u8: 1, u16: 2, u32: 4, u64: 8, be16: 2, be32: 4, be32x4: 16 }[kind],
});

/** Every struct of `bpf/meshd.h`. */
export const STRUCTS = {
  meshd_svc4_key: {
    name: "meshd_svc4_key",
    size: 8,
    fields: [f("addr", 0, "be32"), f("port", 4, "be16"), f("proto", 6, "u8"), f("pad", 7, "u8")],
  },
  meshd_svc6_key: {
    name: "meshd_svc6_key",
    size: 20,
    fields: [
      f("addr", 0, "be32x4"),
      f("port", 16, "be16"),
      f("proto", 18, "u8"),
      f("pad", 19, "u8"),
    ],
  },
  meshd_svc: {
    name: "meshd_svc",
    size: 16,
    fields: [f("id", 0, "u32"), f("half", 4, "u32"), f("count", 8, "u32"), f("flags", 12, "u32")],
  },
  meshd_be_key: {
    name: "meshd_be_key",
    size: 8,
    fields: [f("id", 0, "u32"), f("slot", 4, "u32")],
  },
  meshd_be4: {
    name: "meshd_be4",
    size: 8,
    fields: [f("addr", 0, "be32"), f("port", 4, "be16"), f("pad", 6, "u16")],
  },
  meshd_be6: {
    name: "meshd_be6",
    size: 20,
    fields: [f("addr", 0, "be32x4"), f("port", 16, "be16"), f("pad", 18, "u16")],
  },
  meshd_rnat4_key: {
    name: "meshd_rnat4_key",
    size: 16,
    fields: [
      f("cookie", 0, "u64"),
      f("addr", 8, "be32"),
      f("port", 12, "be16"),
      f("pad", 14, "u16"),
    ],
  },
  meshd_rnat6_key: {
    name: "meshd_rnat6_key",
    size: 32,
    fields: [
      f("cookie", 0, "u64"),
      f("addr", 8, "be32x4"),
      f("port", 24, "be16"),
      f("pad", 26, "u16"),
      f("pad2", 28, "u32"),
    ],
  },
  meshd_rnat4: {
    name: "meshd_rnat4",
    size: 8,
    fields: [f("addr", 0, "be32"), f("port", 4, "be16"), f("pad", 6, "u16")],
  },
  meshd_rnat6: {
    name: "meshd_rnat6",
    size: 20,
    fields: [f("addr", 0, "be32x4"), f("port", 16, "be16"), f("pad", 18, "u16")],
  },
  meshd_meta: {
    name: "meshd_meta",
    size: 32,
    fields: [
      f("layout", 0, "u32"),
      f("pad", 4, "u32"),
      f("version", 8, "u64"),
      f("cgroup", 16, "u64"),
      f("expires", 24, "u64"),
    ],
  },
} as const satisfies Record<string, StructSpec>;

/** A value for each field: numbers, bigints for u64, and 16 bytes for `be32x4`. */
export type FieldValues = Record<string, number | bigint | Uint8Array>;

/** The bytes of `spec` with `values` (fields not given are zero). */
export function encode(spec: StructSpec, values: FieldValues): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(spec.size);
  const v = new DataView(buf.buffer);
  for (const field of spec.fields) {
    const x = values[field.name];
    if (x === undefined) continue;
    switch (field.kind) {
      case "u8":
        v.setUint8(field.offset, Number(x));
        break;
      case "u16":
        v.setUint16(field.offset, Number(x), true);
        break;
      case "u32":
        v.setUint32(field.offset, Number(x), true);
        break;
      case "u64":
        v.setBigUint64(field.offset, BigInt(x as number | bigint), true);
        break;
      case "be16":
        v.setUint16(field.offset, Number(x), false);
        break;
      case "be32":
        v.setUint32(field.offset, Number(x), false);
        break;
      case "be32x4":
        buf.set(x as Uint8Array, field.offset);
        break;
    }
  }
  return buf;
}

/** The fields of `spec` read from `buf`. */
export function decode(spec: StructSpec, buf: Uint8Array): FieldValues {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: FieldValues = {};
  for (const field of spec.fields) {
    out[field.name] = {
      u8: () => v.getUint8(field.offset),
      u16: () => v.getUint16(field.offset, true),
      u32: () => v.getUint32(field.offset, true),
      u64: () => v.getBigUint64(field.offset, true),
      be16: () => v.getUint16(field.offset, false),
      be32: () => v.getUint32(field.offset, false),
      be32x4: () => buf.slice(field.offset, field.offset + 16),
    }[field.kind]();
  }
  return out;
}

/** An IPv4 address as the number `be32` fields hold. */
export function ipv4Number(addr: string): number {
  const parts = addr.split(".").map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new TypeError(`"${addr}" is not an IPv4 address`);
  }
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

/** The 16 bytes of an IPv6 address, network order. */
export function ipv6Bytes(addr: string): Uint8Array {
  const zone = addr.indexOf("%");
  let a = zone >= 0 ? addr.slice(0, zone) : addr;
  // A trailing dotted quad (::ffff:1.2.3.4) is two groups.
  const quad = a.match(/(\d+\.\d+\.\d+\.\d+)$/);
  if (quad) {
    const n = ipv4Number(quad[1]!);
    a = a.slice(0, -quad[1]!.length) + `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const halves = a.split("::");
  if (halves.length > 2) throw new TypeError(`"${addr}" is not an IPv6 address`);
  const head = halves[0] ? halves[0].split(":") : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  const missing = 8 - head.length - tail.length;
  if (missing < 0 || (halves.length === 1 && missing !== 0)) {
    throw new TypeError(`"${addr}" is not an IPv6 address`);
  }
  const groups = [...head, ...Array(missing).fill("0"), ...tail];
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw new TypeError(`"${addr}" is not an IPv6 address`);
    const n = parseInt(g, 16);
    out[i * 2] = n >> 8;
    out[i * 2 + 1] = n & 0xff;
  });
  return out;
}
