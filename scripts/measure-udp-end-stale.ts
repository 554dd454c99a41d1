/**
 * What one config apply costs the UDP listeners' `endStale` at 100,000 flows: the walk both
 * listeners made over every flow (UdpListener's Set of flows and UdpEngineListener's relay Map,
 * each copied), and the look they make now over their flows by endpoint key; each with
 * `readyEndpointKeys`' own Set, over flow objects of the listeners' shape allocated among
 * other garbage as flows come over time. No sockets: the walk alone, every endpoint still
 * ready (the common apply). Not a benchmark: one short run, figures for a design choice.
 *
 *     deno run scripts/measure-udp-end-stale.ts
 */
const FLOWS = 100_000;
const APPLIES = 40;

function flowsOver(endpoints: { key: string }[]) {
  const set = new Set<{ endpoint: { key: string } }>();
  const map = new Map<number, { target: { endpoint: { key: string } } }>();
  const byEndpoint = new Map<string, Set<object>>();
  const junk: unknown[] = [];
  for (let i = 0; i < FLOWS; i++) {
    const now = Date.now();
    const f = {
      client: { transport: "udp", hostname: `10.2.${i >> 16}.${(i >> 8) & 255}`, port: i & 65535 },
      upstream: {},
      endpoint: endpoints[i % endpoints.length]!,
      to: { transport: "udp", hostname: "10.1.0.1", port: 53 },
      route: {},
      lastActive: now,
      lastSent: now,
      awaiting: false,
      touched: now,
      target: {},
      log: null,
      started: 0,
      startedAt: now,
      bytesIn: 0,
      bytesOut: 0,
    };
    set.add(f);
    map.set(i, { target: f });
    let same = byEndpoint.get(f.endpoint.key);
    if (!same) byEndpoint.set(f.endpoint.key, same = new Set());
    same.add(f);
    for (let j = 0; j < 8; j++) junk.push({ j, s: `x${i}` });
    if (junk.length > 100_000) junk.length = 0;
  }
  return { set, map, byEndpoint };
}

function measure(walk: (ready: Set<string>) => number, readyStates: { key: string }[]): string {
  const samples: number[] = [];
  for (let i = 0; i < APPLIES; i++) {
    const t0 = performance.now();
    const ready = new Set<string>();
    for (const s of readyStates) ready.add(s.key);
    if (walk(ready) !== 0) throw new Error("a flow of a ready endpoint would end");
    samples.push(performance.now() - t0);
  }
  samples.sort((a, b) => a - b);
  const ms = (x: number) => x.toFixed(2);
  return `median ${ms(samples[APPLIES >> 1]!)} ms, max ${ms(samples.at(-1)!)} ms`;
}

for (const n of [10, 100, 1000]) {
  const endpoints = Array.from({ length: n }, (_, i) => ({ key: `10.1.${i >> 8}.${i & 255}:53` }));
  const { set, map, byEndpoint } = flowsOver(endpoints);
  const deno = measure((ready) => {
    let ended = 0;
    for (const f of [...set]) if (!ready.has(f.endpoint.key)) ended++;
    return ended;
  }, endpoints);
  const engine = measure((ready) => {
    let ended = 0;
    for (const f of [...map.values()]) if (!ready.has(f.target.endpoint.key)) ended++;
    return ended;
  }, endpoints);
  const indexed = measure((ready) => {
    let ended = 0;
    for (const [key, flows] of byEndpoint) if (!ready.has(key)) ended += flows.size;
    return ended;
  }, endpoints);
  console.log(
    `${FLOWS} flows, ${n} endpoints, per apply: every flow (Deno I/O) ${deno}; ` +
      `every flow (engine) ${engine}; by endpoint ${indexed}`,
  );
}
