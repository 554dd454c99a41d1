import assert from "node:assert/strict";
import { describePermission, installPermissions } from "./permissions.ts";

Deno.test("installPermissions() asks for get pods/proxy in meshd's namespace, which its Role grants", () => {
  const wanted = installPermissions("meshd", { namespace: "kube-system", name: "coredns" });
  const proxy = wanted.filter((p) => p.subresource === "proxy");
  assert.equal(proxy.length, 1);
  assert.equal(describePermission(proxy[0]!), "get pods/proxy in meshd");
  assert.match(proxy[0]!.why, /meshd-pod-proxy/);
});
