import assert from "node:assert/strict";
import { FLAG, FRAME, FrameReader, FrameWriter, H2Error, unpad } from "./frames.ts";

Deno.test("FrameReader cuts frames out of bytes that arrive one at a time", () => {
  const w = new FrameWriter();
  w.data(1, new Uint8Array([1, 2, 3]), true);
  w.ping(new Uint8Array(8).fill(9), false);
  w.windowUpdate(3, 1000);
  const r = new FrameReader();
  const got: [number, number, number, number[]][] = [];
  for (const byte of w.buf.subarray(0, w.len)) {
    r.push(new Uint8Array([byte]));
    for (let f = r.next(); f; f = r.next()) got.push([f.type, f.flags, f.stream, [...f.payload]]);
  }
  assert.deepEqual(got, [
    [FRAME.DATA, FLAG.END_STREAM, 1, [1, 2, 3]],
    [FRAME.PING, 0, 0, [9, 9, 9, 9, 9, 9, 9, 9]],
    [FRAME.WINDOW_UPDATE, 0, 3, [0, 0, 3, 232]],
  ]);
});

Deno.test("FrameReader refuses a frame over its maximum size before it arrives whole (§4.2)", () => {
  const r = new FrameReader();
  r.push(new Uint8Array([0, 0x40, 0x01, 0, 0, 0, 0, 0, 1])); // 16385 bytes announced
  assert.throws(() => r.next(), (e: unknown) => e instanceof H2Error && e.code === 0x6);
});

Deno.test("FrameWriter.headers splits a block into HEADERS and CONTINUATION at the frame size", () => {
  const w = new FrameWriter();
  const block = new Uint8Array(40_000).fill(7);
  w.headers(5, block, true, 16_384);
  const r = new FrameReader();
  r.push(w.buf.subarray(0, w.len));
  const frames = [];
  for (let f = r.next(); f; f = r.next()) frames.push([f.type, f.flags, f.payload.length]);
  assert.deepEqual(frames, [
    [FRAME.HEADERS, FLAG.END_STREAM, 16_384],
    [FRAME.CONTINUATION, 0, 16_384],
    [FRAME.CONTINUATION, FLAG.END_HEADERS, 7_232],
  ]);
});

Deno.test("unpad strips padding and refuses a pad length that fills the frame (§6.1)", () => {
  const frame = (payload: number[]) => ({
    type: FRAME.DATA,
    flags: FLAG.PADDED,
    stream: 1,
    payload: new Uint8Array(payload),
  });
  assert.deepEqual([...unpad(frame([2, 10, 11, 0, 0]))], [10, 11]);
  assert.throws(() => unpad(frame([4, 1, 2, 3])), /Pad length 4/);
  assert.throws(() => unpad(frame([])), /no pad length/);
});
