/**
 * Access log lines (`--access-log json|logfmt`) with hostile values in every field a client
 * reaches: each entry stays one line that parses back to the values it was given, with no
 * byte a line splitter or a terminal takes for the end of a line or an escape.
 */
import assert from "node:assert/strict";
import { Logger } from "../../src/observability/mod.ts";
import { type AccessEntry, AccessLog, MAX_LINE } from "../../src/proxy/access_log.ts";
import { NodeProxy } from "../../src/proxy/mod.ts";
import { endpoint, meshConfig } from "../../src/topology/_testing.ts";
import { httpBackend, RawClient } from "../../src/proxy/_testing.ts";
import { waitFor } from "../testenv/process.ts";

/**
 * What splits a line somewhere: LF, CR, VT, FF, FS, GS, RS, NEL (Python's str.splitlines,
 * Unicode line breaking), LS and PS; and C1 controls (CSI 0x9b starts a terminal escape).
 */
// deno-lint-ignore no-control-regex -- these are the bytes looked for
const SPLITS = /[\n\r\x0b\x0c\x1c-\x1e\x7f-\x9f\u2028\u2029]/;

/** A logfmt line back to fields (values quoted as JSON strings when they need it). */
function parseLogfmt(line: string): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  const re = /(\w+)=("(?:[^"\\]|\\.)*"|\S+)/g;
  let at = 0;
  for (const m of line.matchAll(re)) {
    assert.equal(line.slice(at, m.index).trim(), "", `stray text in ${JSON.stringify(line)}`);
    at = m.index! + m[0].length;
    const v = m[2]!;
    out[m[1]!] = v.startsWith('"') ? JSON.parse(v) : /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
  }
  assert.equal(line.slice(at), "", `stray text at the end of ${JSON.stringify(line)}`);
  return out;
}

/** Every byte 0-255 as a Latin-1 character (how meshd holds the bytes of a request). */
const ALL_BYTES = Array.from({ length: 256 }, (_, i) => String.fromCharCode(i)).join("");

const HOSTILE: string[] = [
  'a"b\\c',
  "one\ntime=forged protocol=http",
  '"}\n{"time":"forged"',
  "cr\rlf\r\n",
  "esc\x1b[31mred\x1b[0m",
  "nel\x85line",
  "csi\x9b31m",
  "ls\u2028ps\u2029",
  "\xff\xfe not UTF-8",
  "lone \ud800 surrogate",
  ALL_BYTES,
  "x".repeat(70_000),
];

for (const format of ["json", "logfmt"] as const) {
  Deno.test(`AccessLog.write() keeps hostile values on one ${format} line that reads back to them`, () => {
    for (const v of HOSTILE) {
      const out: string[] = [];
      const log = new AccessLog({ mode: format, write: (l) => out.push(l) });
      const e: AccessEntry = {
        start: 0,
        source: "127.0.69.9",
        protocol: "http",
        service: "t/web:80",
        method: v,
        authority: v,
        path: v,
        requestId: v,
        detail: v,
        durationMs: 1,
        bytesIn: 0,
        bytesOut: 0,
        retries: 0,
      };
      log.write(e);
      assert.equal(out.length, 1);
      const line = out[0]!;
      assert.ok(line.endsWith("\n"));
      const body = line.slice(0, -1);
      const bad = SPLITS.exec(body);
      assert.equal(
        bad,
        null,
        `a ${JSON.stringify(bad?.[0])} in the line for ${JSON.stringify(v.slice(0, 40))}`,
      );
      // What reaches a file is UTF-8 that decodes back without loss.
      const bytes = new TextEncoder().encode(line);
      new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      const back = format === "json" ? JSON.parse(body) : parseLogfmt(body);
      // A lone surrogate is written as a \u escape, so it too comes back as it was. A line over
      // MAX_LINE bytes has its long fields cut, each to a prefix of the value and "...".
      assert.ok(bytes.length <= MAX_LINE, `a line of ${bytes.length} bytes`);
      for (const k of ["method", "authority", "path", "request_id", "detail"]) {
        const got = String(back[k]);
        if (got === v) continue;
        assert.ok(
          got.endsWith("...") && got.length < v.length && v.startsWith(got.slice(0, -3)),
          `${k} of ${JSON.stringify(v.slice(0, 40))} came back as ${
            JSON.stringify(got.slice(0, 60))
          }`,
        );
      }
    }
  });
}

Deno.test("NodeProxy writes an x-request-id with C1 control bytes (OSC, DCS) in a line no splitter or terminal acts on", async () => {
  const b = await httpBackend("a", "127.0.69.30");
  const lines: string[] = [];
  const proxy = new NodeProxy({
    hostname: "127.0.69.31",
    httpPort: 0,
    logger: new Logger({ level: "error", write: () => {} }),
    accessLog: "logfmt",
    accessLogWrite: (l) => lines.push(l),
    requestId: true,
  });
  await proxy.start();
  try {
    await proxy.apply(meshConfig([{
      name: "web",
      ports: [{ port: 80, endpoints: [endpoint("127.0.69.30", b.port)] }],
    }]));
    const c = await RawClient.connect(Number(proxy.httpAddress.split(":")[1]), "127.0.69.31");
    try {
      // obs-text (RFC 9110 §5.5) is allowed in a field value: 0x9d is OSC, 0x90 DCS.
      const head = "GET / HTTP/1.1\r\nHost: web.default.mesh\r\n" +
        "X-Request-Id: a\x9d0;forged \x90x\r\nConnection: close\r\n\r\n";
      await c.send(Uint8Array.from(head, (ch) => ch.charCodeAt(0)));
      await c.readBytes(1 << 20);
    } finally {
      c.close();
    }
    await waitFor("a line", () => lines.length >= 1 ? true : undefined);
    assert.equal(SPLITS.exec(lines[0]!.slice(0, -1)), null, JSON.stringify(lines[0]));
    assert.equal(parseLogfmt(lines[0]!.slice(0, -1)).request_id, "a\x9d0;forged \x90x");
  } finally {
    await proxy.stop();
    await b.close();
  }
});
