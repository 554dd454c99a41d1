import assert from "node:assert/strict";
import { ClientSource } from "./client_source.ts";
import { BufReader } from "./http1.ts";

/** A connection whose reads return the given chunks, then end; counts its reads. */
function fakeConn(chunks: Uint8Array[]): Deno.Conn & { reads: number } {
  const conn = {
    reads: 0,
    read(p: Uint8Array): Promise<number | null> {
      conn.reads++;
      const c = chunks.shift();
      if (!c) return Promise.resolve(null);
      p.set(c);
      return Promise.resolve(c.length);
    },
  };
  return conn as unknown as Deno.Conn & { reads: number };
}

Deno.test("ClientSource keeps what the read ahead got for the reader's next read", async () => {
  const conn = fakeConn([new TextEncoder().encode("GET /next HTTP/1.1\r\nHost: a\r\n\r\n")]);
  const reader = new BufReader(conn);
  const src = new ClientSource(reader);
  src.watch();
  src.watch(); // one read ahead at a time
  assert.equal(await reader.readHead(1024), "GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
  assert.equal(conn.reads, 1, "the head came from the read ahead, not from a second read");
  assert.equal(src.gone, false);
});

Deno.test("ClientSource is gone once the read ahead sees the end of stream", async () => {
  const reader = new BufReader(fakeConn([]));
  const src = new ClientSource(reader);
  src.watch();
  assert.equal(await reader.readHead(1024), null);
  assert.equal(src.gone, true);
});

Deno.test("ClientSource is gone once the read ahead fails", async () => {
  const reader = new BufReader({ read: () => Promise.reject(new Error("reset")) });
  const src = new ClientSource(reader);
  src.watch();
  await assert.rejects(reader.readHead(1024), /reset/);
  assert.equal(src.gone, true);
});

Deno.test("ClientSource starts no read ahead while the reader holds bytes", async () => {
  const conn = fakeConn([new TextEncoder().encode("GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b")]);
  const reader = new BufReader(conn);
  const src = new ClientSource(reader);
  assert.equal(await reader.readHead(1024), "GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
  src.watch();
  assert.equal(conn.reads, 1, "the pipelined bytes are there: no read is started");
  assert.equal(reader.takeBuffered(Infinity).length, 6);
});
