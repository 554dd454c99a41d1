/**
 * A small HTTP backend for the quickstart and the tests: answers every request with who it is
 * (its name and address), what it was asked and the headers it got. It echoes request bodies
 * on POST and PUT.
 *
 * Usage: deno run --allow-net whoami.ts --name NAME --listen 127.0.1.1:8080
 *
 * @module
 */

function arg(name: string, fallback?: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  const v = i >= 0 ? Deno.args[i + 1] : fallback;
  if (v === undefined) {
    console.error(`whoami: --${name} is required`);
    Deno.exit(2);
  }
  return v;
}

const name = arg("name");
const [hostname, port] = arg("listen").split(/:(?=\d+$)/);
Deno.serve({
  hostname,
  port: Number(port),
  onListen: (a) => console.error(`whoami ${name} listening on ${a.hostname}:${a.port}`),
}, async (req, info) => {
  const body = req.method === "POST" || req.method === "PUT" ? await req.text() : "";
  const lines = [
    `name: ${name}`,
    `address: ${hostname}:${port}`,
    `client: ${(info.remoteAddr as Deno.NetAddr).hostname}`,
    `request: ${req.method} ${new URL(req.url).pathname}`,
    ...[...req.headers].map(([k, v]) => `${k}: ${v}`),
  ];
  if (body) lines.push("", body);
  return new Response(lines.join("\n") + "\n", { headers: { "x-backend": name } });
});
