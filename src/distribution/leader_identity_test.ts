import assert from "node:assert/strict";
import { createLeaderIdentity, LEADER_TLS_NAME } from "./leader_identity.ts";

/** Runs openssl with `input` on stdin; returns stdout, or throws with stderr. */
async function openssl(input: string, ...args: string[]): Promise<string> {
  const p = new Deno.Command("openssl", { args, stdin: "piped", stdout: "piped", stderr: "piped" })
    .spawn();
  const w = p.stdin.getWriter();
  await w.write(new TextEncoder().encode(input));
  await w.close();
  const out = await p.output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr) + text);
  return text;
}

Deno.test("the leader's certificate is one openssl reads and verifies", async () => {
  const now = new Date("2026-11-23T12:00:00Z");
  const id = await createLeaderIdentity("meshd-7f9c", 30, now);
  const text = await openssl(id.certPem, "x509", "-noout", "-text", "-fingerprint", "-sha256");
  assert.match(text, /Version: 3 \(0x2\)/);
  assert.match(text, /Signature Algorithm: ecdsa-with-SHA256/);
  assert.match(text, /Subject: CN ?= ?meshd-7f9c/);
  assert.match(text, /Not Before: Nov 23 11:00:00 2026 GMT/);
  assert.match(text, /Not After : Dec 23 12:00:00 2026 GMT/);
  assert.match(text, /CA:FALSE/);
  assert.match(text, new RegExp(`DNS:${LEADER_TLS_NAME}`));
  assert.match(text, /TLS Web Server Authentication/);
  const fp = text.match(/sha256 Fingerprint=([0-9A-F:]+)/i)![1]!.replaceAll(":", "").toLowerCase();
  assert.equal(id.fingerprint, fp);
  // the signature checks out against its own key, and the key is the certificate's
  const dir = await Deno.makeTempDir({ prefix: "meshd-test-leader-id-" });
  try {
    await Deno.writeTextFile(`${dir}/cert.pem`, id.certPem);
    await openssl(
      "",
      "verify",
      "-attime",
      String(now.getTime() / 1000),
      "-CAfile",
      `${dir}/cert.pem`,
      "-purpose",
      "sslserver",
      `${dir}/cert.pem`,
    );
    const fromKey = await openssl(id.keyPem, "pkey", "-pubout");
    const fromCert = await openssl(id.certPem, "x509", "-noout", "-pubkey");
    assert.equal(fromKey, fromCert);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const other = await createLeaderIdentity("meshd-7f9c", 30, now);
  assert.notEqual(other.fingerprint, id.fingerprint, "a new key each time");
});
