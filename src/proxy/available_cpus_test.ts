import assert from "node:assert/strict";
import { availableCpus, countCpuList, cpuMaxLimit } from "./available_cpus.ts";

Deno.test("countCpuList() counts the CPUs of a kernel CPU list", () => {
  const cases: [string, number | null][] = [
    ["0", 1],
    ["0-1", 2],
    ["0-3,8,10-11\n", 7],
    ["", null],
    ["3-1", null],
    ["a-b", null],
  ];
  for (const [list, want] of cases) assert.equal(countCpuList(list), want, list);
});

Deno.test("cpuMaxLimit() rounds a cgroup v2 quota up to whole CPUs", () => {
  const cases: [string, number | null][] = [
    ["max 100000\n", null],
    ["150000 100000\n", 2],
    ["50000 100000", 1],
    ["400000 100000", 4],
    ["0 100000", null],
    ["junk", null],
  ];
  for (const [text, want] of cases) assert.equal(cpuMaxLimit(text), want, text);
});

Deno.test("availableCpus() takes the affinity, capped by the cgroup quota at any level", () => {
  const files: Record<string, string> = {
    "/proc/self/status": "Name:\tmeshd\nCpus_allowed_list:\t0-15\n",
    "/proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
    "/cg/kubepods/pod1/ctr/cpu.max": "max 100000\n",
    "/cg/kubepods/pod1/cpu.max": "250000 100000\n",
    "/cg/kubepods/cpu.max": "max 100000\n",
  };
  const read = (p: string) => {
    const t = files[p];
    if (t === undefined) throw new Deno.errors.NotFound(p);
    return t;
  };
  assert.equal(availableCpus({ read, cgroupRoot: "/cg", fallback: 64 }), 3);
  files["/cg/kubepods/pod1/cpu.max"] = "max 100000\n";
  assert.equal(availableCpus({ read, cgroupRoot: "/cg", fallback: 64 }), 16);
  // Only a quota readable (no affinity line).
  files["/proc/self/status"] = "Name:\tmeshd\n";
  files["/cg/kubepods/cpu.max"] = "100000 100000\n";
  assert.equal(availableCpus({ read, cgroupRoot: "/cg", fallback: 64 }), 1);
  // Nothing readable: the fallback.
  const none = () => {
    throw new Deno.errors.PermissionDenied("no");
  };
  assert.equal(availableCpus({ read: none, fallback: 6 }), 6);
  assert.equal(availableCpus({ read: none, fallback: 0 }), 1);
});
