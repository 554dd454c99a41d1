import assert from "node:assert/strict";
import { ClientSource } from "./client_source.ts";

/** A connection whose reads return the given chunks, then end. */
function fakeConn(chunks: Uint8Array[]): Deno.Conn {
  return {
    read(p: Uint8Array): Promise<number | null> {
      const c = chunks.shift();
      if (!c) return Promise.resolve(null);
      p.set(c);
      return Promise.resolve(c.length);
    },
  } as unknown as Deno.Conn;
}

Deno.test("ClientSource keeps what the read ahead got for the next read", async () => {
  const src = new ClientSource(fakeConn([new TextEncoder().encode("GET /next")]));
  src.watch();
  src.watch(); // one read ahead at a time
  const buf = new Uint8Array(4);
  assert.equal(await src.read(buf), 4);
  assert.equal(new TextDecoder().decode(buf), "GET ");
  assert.equal(src.gone, false);
  const rest = new Uint8Array(16);
  assert.equal(await src.read(rest), 5);
  assert.equal(new TextDecoder().decode(rest.subarray(0, 5)), "/next");
});

Deno.test("ClientSource is gone once the read ahead sees the end of stream", async () => {
  const src = new ClientSource(fakeConn([]));
  src.watch();
  assert.equal(await src.read(new Uint8Array(8)), null);
  assert.equal(src.gone, true);
});
