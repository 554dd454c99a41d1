import { LocalController } from "../controller/mod.ts";
import { FileProvider } from "../provider/mod.ts";
import { type Assembly, nodeServices, type RunContext } from "./node_services.ts";

/**
 * `meshd run --provider file`: the node's services, fed by the files of `dir` through a
 * controller of its own. No election, no distribution, no mesh DNS.
 */
export function fileMode(ctx: RunContext, o: { dir: string; caCerts?: string[] }): Assembly {
  const { config, logger } = ctx;
  const node = nodeServices(ctx, { caCerts: o.caCerts, advertise: "", addresses: "cluster-ip" });
  const controller = new LocalController({
    agent: node.agent,
    compile: config.compile,
    logger: logger.with({ room: "node" }),
  });
  const provider = new FileProvider({
    dir: o.dir,
    logger: logger.with({ room: "provider" }),
    onLoad: (r) => controller.load(r),
    limits: config.limits,
  });
  return {
    services: [
      ...node.services,
      { name: "file provider", start: () => provider.start(), stop: () => provider.stop() },
    ],
    node,
    dnsPort: () => null,
    untilReady: () => Promise.resolve(null),
    readyFields: () => ({ http: node.proxy.httpAddress, api: node.servers.apiAddress }),
  };
}
