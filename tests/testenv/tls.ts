/** Test certificates made with openssl: a throwaway CA and a server certificate it signed. */

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

/** A new CA and a server certificate for `dnsNames`, valid for a day, in a temporary dir. */
export async function makePki(dnsNames: string[]): Promise<TestPki> {
  const dir = await Deno.makeTempDir({ prefix: "meshd-pki-" });
  try {
    const ec = EC_KEY;
    await makeCa(dir, "meshd test CA");
    await openssl(dir, "req", ...ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=srv");
    await Deno.writeTextFile(
      `${dir}/ext.cnf`,
      `subjectAltName=${dnsNames.map((n) => `DNS:${n}`).join(",")}\n` +
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    await openssl(
      dir,
      "x509",
      "-req",
      "-in",
      "srv.csr",
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      "srv.crt",
      "-days",
      "1",
      "-extfile",
      "ext.cnf",
    );
    return {
      caCert: await Deno.readTextFile(`${dir}/ca.crt`),
      cert: await Deno.readTextFile(`${dir}/srv.crt`),
      key: await Deno.readTextFile(`${dir}/srv.key`),
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
