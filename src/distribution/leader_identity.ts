/**
 * The leader's TLS identity: an ECDSA P-256 key made in memory and a self-signed certificate
 * for it, built here in DER with WebCrypto (no openssl in the image, no key on disk). The
 * leader publishes the certificate on its Lease, which only meshd may write; nodes trust that
 * one certificate and nothing else for the config stream.
 *
 * @module
 */

/** The name in the certificate; nodes check the leader's certificate against it. */
export const LEADER_TLS_NAME = "meshd-leader";

/** A key pair and its self-signed certificate, in PEM. */
export interface LeaderIdentity {
  certPem: string;
  keyPem: string;
  /** SHA-256 of the certificate's DER, in hex, for logs. */
  fingerprint: string;
}

// --- DER, only the types a certificate needs ---

function length(n: number): number[] {
  if (n < 0x80) return [n];
  const out: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) out.unshift(v & 0xff);
  return [0x80 | out.length, ...out];
}

function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const body = concat(...parts);
  return concat(new Uint8Array([tag, ...length(body.length)]), body);
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

const seq = (...parts: Uint8Array[]) => tlv(0x30, ...parts);
const set = (...parts: Uint8Array[]) => tlv(0x31, ...parts);
const octets = (b: Uint8Array) => tlv(0x04, b);
const utf8 = (s: string) => tlv(0x0c, new TextEncoder().encode(s));
const bool = (v: boolean) => tlv(0x01, new Uint8Array([v ? 0xff : 0]));
const explicit = (n: number, inner: Uint8Array) => tlv(0xa0 | n, inner);

/** A non-negative INTEGER from big-endian bytes, in its shortest form. */
function unsigned(bytes: Uint8Array): Uint8Array {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const v = bytes.subarray(i);
  return tlv(0x02, (v[0]! & 0x80) ? concat(new Uint8Array([0]), v) : v);
}

function oid(dotted: string): Uint8Array {
  const [a, b, ...rest] = dotted.split(".").map(Number) as [number, number, ...number[]];
  const out = [40 * a + b];
  for (const n of rest) {
    const groups: number[] = [];
    for (let v = n;; v = Math.floor(v / 128)) {
      groups.unshift(v & 0x7f);
      if (v < 128) break;
    }
    out.push(...groups.map((g, i) => i < groups.length - 1 ? g | 0x80 : g));
  }
  return tlv(0x06, new Uint8Array(out));
}

/** UTCTime, YYMMDDHHMMSSZ (years 1950 to 2049). */
function utcTime(d: Date): Uint8Array {
  const p = (n: number) => String(n).padStart(2, "0");
  const s = `${p(d.getUTCFullYear() % 100)}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}` +
    `${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  return tlv(0x17, new TextEncoder().encode(s));
}

function extension(id: string, critical: boolean, value: Uint8Array): Uint8Array {
  return seq(oid(id), ...(critical ? [bool(true)] : []), octets(value));
}

function pem(label: string, der: Uint8Array): string {
  let b64 = "";
  const bin = Array.from(der, (c) => String.fromCharCode(c)).join("");
  const all = btoa(bin);
  for (let i = 0; i < all.length; i += 64) b64 += all.slice(i, i + 64) + "\n";
  return `-----BEGIN ${label}-----\n${b64}-----END ${label}-----\n`;
}

const ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";

/**
 * Makes a new key and a self-signed certificate for {@linkcode LEADER_TLS_NAME}, valid from an
 * hour ago (clocks differ) for `validDays` days. `commonName` names the holder in the subject.
 */
export async function createLeaderIdentity(
  commonName: string,
  validDays = 3650,
  now = new Date(),
): Promise<LeaderIdentity> {
  const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]) as CryptoKeyPair;
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", keys.publicKey));
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  const serial = crypto.getRandomValues(new Uint8Array(16));
  serial[0]! &= 0x7f;
  serial[0]! |= 0x01; // positive and never shortened to less than 16 bytes
  const name = seq(set(seq(oid("2.5.4.3"), utf8(commonName.slice(0, 64)))));
  const algorithm = seq(oid(ECDSA_WITH_SHA256));
  const notBefore = new Date(now.getTime() - 3600_000);
  const notAfter = new Date(
    Math.min(now.getTime() + validDays * 86_400_000, Date.UTC(2049, 11, 31, 23, 59, 59)),
  );
  const san = seq(tlv(0x82, new TextEncoder().encode(LEADER_TLS_NAME))); // dNSName
  const extensions = seq(
    extension("2.5.29.19", true, seq()), // basicConstraints: not a CA
    extension("2.5.29.15", true, tlv(0x03, new Uint8Array([0x07, 0x80]))), // digitalSignature
    extension("2.5.29.37", false, seq(oid("1.3.6.1.5.5.7.3.1"))), // serverAuth
    extension("2.5.29.17", false, san),
  );
  const tbs = seq(
    explicit(0, tlv(0x02, new Uint8Array([2]))), // v3
    unsigned(serial),
    algorithm,
    name,
    seq(utcTime(notBefore), utcTime(notAfter)),
    name,
    spki,
    explicit(3, extensions),
  );
  const raw = new Uint8Array(
    await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, keys.privateKey, tbs),
  );
  // WebCrypto gives r||s; X.509 wants SEQUENCE { INTEGER r, INTEGER s }
  const signature = seq(unsigned(raw.subarray(0, 32)), unsigned(raw.subarray(32)));
  const cert = seq(tbs, algorithm, tlv(0x03, new Uint8Array([0]), signature));
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", cert));
  return {
    certPem: pem("CERTIFICATE", cert),
    keyPem: pem("PRIVATE KEY", pkcs8),
    fingerprint: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
  };
}
