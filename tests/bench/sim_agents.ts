/**
 * Many node agents in one process, for the distribution benchmark: each is a real
 * DistributionClient (its own TLS connection, its own stream, authenticated by a
 * ServiceAccount token, applying snapshots and deltas and acknowledging them) whose data plane
 * is left out: applying a version only keeps it. Agents that hold the same version share one
 * copy of it, so hundreds of agents at 10,000 services fit in memory.
 *
 * Reads one JSON line of settings on stdin:
 * `{"prefix": "sim-1", "count": 100, "leader": {"address", "certPem"}, "token": "..."}`,
 * and prints, for each version every agent here has applied, one line
 * `{"epoch", "version", "agents", "first", "last"}` with the wall-clock milliseconds of the
 * first and last agent's apply. Exits when stdin closes.
 *
 * @module
 */
import { DistributionClient, type StampedConfig } from "../../src/distribution/mod.ts";
import { Logger } from "../../src/observability/mod.ts";

const now = () => performance.timeOrigin + performance.now();
const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
let buf = "";
while (!buf.includes("\n")) {
  const { value, done } = await lines.read();
  if (done) Deno.exit(1);
  buf += value;
}
const settings = JSON.parse(buf.slice(0, buf.indexOf("\n"))) as {
  prefix: string;
  count: number;
  leader: { address: string; certPem: string };
  token: string;
};

/** One copy of each version held, by `epoch/version`, with how many agents hold it. */
const held = new Map<string, { config: StampedConfig; holders: number }>();
/** Apply times of each version, until every agent has applied it. */
const applied = new Map<string, { first: number; last: number; agents: number }>();
const logger = new Logger({ level: "error", write: (l) => console.error(l) });
const clients: DistributionClient[] = [];

for (let i = 0; i < settings.count; i++) {
  let mine: string | null = null;
  const client = new DistributionClient({
    node: `${settings.prefix}-${i}`,
    leader: () => Promise.resolve(settings.leader),
    token: () => Promise.resolve(settings.token),
    current: () => (mine ? held.get(mine)!.config : null),
    apply: (c) => {
      const t = now();
      const key = `${c.epoch}/${c.config.version}`;
      if (mine) {
        const h = held.get(mine)!;
        if (--h.holders === 0) held.delete(mine);
      }
      const h = held.get(key) ?? { config: c, holders: 0 };
      h.holders++;
      held.set(key, h);
      mine = key;
      const a = applied.get(key) ?? { first: t, last: t, agents: 0 };
      a.agents++;
      a.last = t;
      applied.set(key, a);
      if (a.agents === settings.count) {
        console.log(JSON.stringify({
          epoch: c.epoch,
          version: c.config.version,
          agents: a.agents,
          first: a.first,
          last: a.last,
        }));
        applied.delete(key);
      }
      return Promise.resolve();
    },
    logger,
  });
  clients.push(client);
  client.start();
}

// Runs until the benchmark closes stdin.
while (!(await lines.read()).done) { /* settings are read once */ }
await Promise.all(clients.map((c) => c.stop()));
Deno.exit(0);
