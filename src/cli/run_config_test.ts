import assert from "node:assert/strict";
import { FlagValues, parseFlags } from "./flags.ts";
import { RUN_FLAGS } from "./options.ts";
import { runConfig } from "./run_config.ts";

Deno.test("runConfig() reads every flag of meshd run, and no other", () => {
  const { values } = parseFlags([], RUN_FLAGS);
  const read = new Set<string>();
  // Every read goes through the record: a proxy sees which names are asked for.
  const watched = new Proxy(values, {
    has: (t, name) => {
      read.add(String(name));
      return name in t;
    },
  });
  runConfig(new FlagValues(watched));
  assert.deepEqual([...read].sort(), RUN_FLAGS.map((f) => f.name).sort());
});

Deno.test("runConfig() types the defaults and turns --dns-ttl into whole seconds", () => {
  const parse = (argv: string[]) => runConfig(new FlagValues(parseFlags(argv, RUN_FLAGS).values));
  const c = parse([]);
  assert.equal(c.provider, "file");
  assert.equal(c.proxy.workers, 1);
  assert.equal(c.dns.ttlSeconds, 5);
  assert.equal(c.drainMs, 0);
  assert.equal(c.watchdogMs, 0, "no watch unless asked");
  assert.equal(parse(["--watchdog", "3s"]).watchdogMs, 3000);
  // Under a second, any collection would read as a stall, logged each time.
  assert.throws(() => parse(["--watchdog", "10ms"]), /expected a duration of at least 1000 ms/);
  assert.equal(parse(["--watchdog", "1s"]).watchdogMs, 1000);
  assert.equal(c.health.port, undefined);
  assert.deepEqual(c.compile.tcpPorts, { first: 10000, last: 14999 });
  assert.equal(parse(["--dns-ttl", "200ms"]).dns.ttlSeconds, 1, "at least one second");
  assert.equal(parse(["--dns-ttl", "2m"]).dns.ttlSeconds, 120);
  assert.equal(parse(["--workers", "auto"]).proxy.workers, "auto");
  // --l4-worker: off unless asked; alone (and =true) required, =auto probed, the last one wins.
  assert.equal(c.proxy.l4Worker, false);
  assert.equal(parse(["--l4-worker"]).proxy.l4Worker, true);
  assert.equal(parse(["--l4-worker=auto"]).proxy.l4Worker, "auto");
  assert.equal(parse(["--l4-worker=auto", "--l4-worker=false"]).proxy.l4Worker, false);
  assert.equal(parse(["--l4-worker=auto", "--l4-worker"]).proxy.l4Worker, true);
  assert.equal(parse(["--state-dir", ""]).distribution.stateDir, "");
  // Envoy's stream_idle_timeout default; 0 turns it off.
  assert.equal(c.proxy.options.streamIdleTimeoutMs, 300_000);
  assert.equal(parse(["--stream-idle-timeout", "0"]).proxy.options.streamIdleTimeoutMs, 0);
  assert.equal(parse(["--stream-idle-timeout", "90s"]).proxy.options.streamIdleTimeoutMs, 90_000);
});
