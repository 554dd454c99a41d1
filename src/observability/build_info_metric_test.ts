import assert from "node:assert/strict";
import { registerBuildInfo } from "./build_info_metric.ts";
import { Registry } from "./metrics.ts";

Deno.test("registerBuildInfo() serves meshd_build_info with version, commit and Deno, at 1", () => {
  const r = new Registry();
  registerBuildInfo(r, { version: "0.1.0", commit: "abc123", deno: "2.9.6" });
  assert.match(
    r.render(),
    /^meshd_build_info\{version="0\.1\.0",commit="abc123",deno="2\.9\.6"\} 1$/m,
  );
});
