import assert from "node:assert/strict";
import { type Service, ServiceStack } from "./service_stack.ts";

function recorder(log: string[], name: string, fail = false, failStop = false): Service {
  return {
    name,
    start: () => {
      log.push(`start ${name}`);
      if (fail) throw new Error(`${name} failed`);
    },
    stop: async () => {
      await Promise.resolve();
      log.push(`stop ${name}`);
      if (failStop) throw new Error(`${name} did not stop`);
    },
  };
}

Deno.test("ServiceStack.stop() stops the services in the reverse of their start", async () => {
  const log: string[] = [];
  const stack = new ServiceStack();
  await stack.start(["a", "b", "c"].map((n) => recorder(log, n)));
  await stack.stop();
  assert.deepEqual(log, ["start a", "start b", "start c", "stop c", "stop b", "stop a"]);
});

Deno.test("ServiceStack.start() stops at a failed start, which is stopped with those before", async () => {
  const log: string[] = [];
  const stack = new ServiceStack();
  const services = [recorder(log, "a"), recorder(log, "b", true), recorder(log, "c")];
  await assert.rejects(stack.start(services), /b failed/);
  await stack.stop();
  assert.deepEqual(log, ["start a", "start b", "stop b", "stop a"]);
});

Deno.test("ServiceStack.stop() stops every service when one's stop throws, then rethrows it", async () => {
  const log: string[] = [];
  const stack = new ServiceStack();
  // As in meshd: the proxy first, the eBPF path, the API; a failing close of the eBPF path
  // must not leave the proxy's listeners open.
  await stack.start([
    recorder(log, "proxy"),
    recorder(log, "datapath", false, true),
    recorder(log, "api", false, true),
  ]);
  await assert.rejects(stack.stop(), /api did not stop/);
  assert.deepEqual(log.slice(3), ["stop api", "stop datapath", "stop proxy"]);
  await stack.stop(); // nothing left to stop
  assert.equal(log.length, 6);
});
