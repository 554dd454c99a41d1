/**
 * A proxy worker that cannot start, for `split_plane_test.ts`: it answers its start with an
 * error, as the real one does when its event loop cannot be made (no epoll, no descriptor),
 * and answers anything else (its stop).
 *
 * @module
 */
// deno-lint-ignore no-explicit-any
const scope = self as any as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};
scope.onmessage = (e: MessageEvent) => {
  const m = e.data;
  if (m.t === "start") {
    scope.postMessage({ id: m.id, t: "error", message: "epoll_create1: EMFILE (by the test)" });
  } else scope.postMessage({ id: m.id, t: "ok" }); // its stop, as the real one answers it
};
