/**
 * Test certificates made with openssl: a throwaway CA and a server certificate it signed. For
 * tests only (unit tests of the proxy and the Kubernetes client, and the harness): nothing in
 * meshd imports it.
 *
 * @module
 */

/** PEM text of a CA certificate and of a server key pair it signed. */
export interface TestPki {
  caCert: string;
  cert: string;
  key: string;
}

/** Runs openssl in `dir`; throws with its stderr on failure. */
export async function openssl(dir: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** EC P-256 key options for `openssl req`. */
export const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/** Writes a self-signed CA, `ca.key` and `ca.crt`, valid for two days, into `dir`. */
export async function makeCa(dir: string, cn: string): Promise<void> {
  await openssl(
    dir,
    "req",
    "-x509",
    ...EC_KEY,
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "2",
    "-subj",
    `/CN=${cn}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  );
}

/**
 * Makes a key and a certificate for `subj` signed by the CA in `dir` (see {@linkcode makeCa}),
 * with the X.509 extensions in `ext`, valid for two days; returns their PEM text.
 */
export async function issueCert(
  dir: string,
  name: string,
  o: { subj: string; ext: string },
): Promise<{ cert: string; key: string }> {
  await openssl(
    dir,
    "req",
    ...EC_KEY,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    o.subj,
  );
  await Deno.writeTextFile(`${dir}/${name}.ext`, o.ext);
  await openssl(
    dir,
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
  );
  return {
    cert: await Deno.readTextFile(`${dir}/${name}.crt`),
    key: await Deno.readTextFile(`${dir}/${name}.key`),
  };
}

/** A new CA and a server certificate for `dnsNames` (IPv4 addresses too), in a temporary dir. */
export async function makePki(dnsNames: string[]): Promise<TestPki> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-pki-" });
  try {
    await makeCa(dir, "meshd test CA");
    const srv = await issueCert(dir, "srv", {
      subj: "/CN=srv",
      ext: `subjectAltName=${
        dnsNames.map((n) => /^[\d.]+$/.test(n) ? `IP:${n}` : `DNS:${n}`).join(",")
      }\n` +
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    });
    return { caCert: await Deno.readTextFile(`${dir}/ca.crt`), ...srv };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
