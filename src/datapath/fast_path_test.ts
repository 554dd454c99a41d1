import assert from "node:assert/strict";
import { cgroupV2Dir } from "./fast_path.ts";

const HYBRID = [
  "tmpfs /run/meshd/cgroupv2 tmpfs ro,nosuid,nodev,noexec,mode=755 0 0",
  "cgroup /run/meshd/cgroupv2/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0",
  "cgroup2 /run/meshd/cgroupv2/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0",
].join("\n");
const UNIFIED = "cgroup2 /run/meshd/cgroupv2 cgroup2 rw,nosuid,nodev,noexec,relatime 0 0";

Deno.test("cgroupV2Dir() finds the v2 root of a hybrid host's cgroup mount at DIR/unified", () => {
  assert.equal(cgroupV2Dir("/run/meshd/cgroupv2", HYBRID), "/run/meshd/cgroupv2/unified");
  assert.equal(cgroupV2Dir("/run/meshd/cgroupv2/", HYBRID), "/run/meshd/cgroupv2/unified");
});

Deno.test("cgroupV2Dir() keeps a directory that is already in cgroup v2", () => {
  assert.equal(cgroupV2Dir("/run/meshd/cgroupv2", UNIFIED), "/run/meshd/cgroupv2");
  assert.equal(
    cgroupV2Dir("/run/meshd/cgroupv2/kubepods", UNIFIED),
    "/run/meshd/cgroupv2/kubepods",
  );
  assert.equal(
    cgroupV2Dir("/run/meshd/cgroupv2/unified/x", HYBRID),
    "/run/meshd/cgroupv2/unified/x",
  );
});

Deno.test("cgroupV2Dir() leaves a directory outside cgroup v2 for the probe to refuse", () => {
  assert.equal(cgroupV2Dir("/sys/fs/cgroup-v1/x", HYBRID), "/sys/fs/cgroup-v1/x");
  assert.equal(cgroupV2Dir("/run/meshd/cgroupv2", ""), "/run/meshd/cgroupv2");
});
