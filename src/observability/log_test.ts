import assert from "node:assert/strict";
import { Logger } from "./log.ts";

function capture(options: ConstructorParameters<typeof Logger>[0] = {}) {
  const lines: string[] = [];
  const log = new Logger({
    now: () => Date.UTC(2026, 10, 23, 1, 2, 3),
    ...options,
    write: (l) => lines.push(l),
  });
  return { log, lines };
}

Deno.test("Logger writes one key=value line per event, quoting what needs it", () => {
  const { log, lines } = capture();
  log.with({ room: "proxy" }).info("config applied", {
    version: 3,
    file: "a b.yaml",
    note: 'say "hi"\nthen go',
    skipped: undefined,
    list: [1, 2],
  });
  assert.equal(lines.length, 1);
  assert.equal(
    lines[0],
    'ts=2026-11-23T01:02:03.000Z level=info msg="config applied" room=proxy version=3 ' +
      'file="a b.yaml" note="say \\"hi\\"\\nthen go" list=[1,2]',
  );
});

Deno.test("Logger in JSON writes one parseable object per line", () => {
  const { log, lines } = capture({ format: "json" });
  log.warn("object rejected", { file: "x.yaml", line: 4 });
  assert.equal(lines.length, 1);
  assert.deepEqual(JSON.parse(lines[0]!), {
    ts: "2026-11-23T01:02:03.000Z",
    level: "warn",
    msg: "object rejected",
    file: "x.yaml",
    line: 4,
  });
});

Deno.test("Logger drops events below its level", () => {
  const { log, lines } = capture({ level: "warn" });
  log.debug("d");
  log.info("i");
  log.warn("w");
  log.error("e");
  assert.deepEqual(lines.map((l) => /level=(\w+)/.exec(l)?.[1]), ["warn", "error"]);
  assert.equal(log.enabled("info"), false);
  assert.equal(log.with({ a: 1 }).enabled("error"), true);
});
