import assert from "node:assert/strict";
import { type Service, ServiceStack } from "./service_stack.ts";

function recorder(log: string[], name: string, fail = false): Service {
  return {
    name,
    start: () => {
      log.push(`start ${name}`);
      if (fail) throw new Error(`${name} failed`);
    },
    stop: () => {
      log.push(`stop ${name}`);
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
