// The entry list and reconnect back-off of the web client (src/entries.js).
import assert from "node:assert/strict";
import { test } from "node:test";
import { BACKOFF, backoffDelay, entryLabel, entryList, ownEntry } from "../src/entries.js";

test("the page's own origin is the first entry, as ws or wss", () => {
  assert.equal(ownEntry({ protocol: "https:", host: "im-dc1.example.cn" }), "wss://im-dc1.example.cn/ws");
  assert.equal(ownEntry({ protocol: "http:", host: "127.0.0.1:8080" }), "ws://127.0.0.1:8080/ws");
});

test("published entries follow in order, once each, non-WebSocket URLs left out", () => {
  const own = "wss://im-dc2.example.cn/ws";
  assert.deepEqual(entryList(own, ["wss://im-dc1.example.cn/ws", own, " wss://im-dr.example.cn/ws", "https://x/", ""]),
    [own, "wss://im-dc1.example.cn/ws", "wss://im-dr.example.cn/ws"]);
  assert.deepEqual(entryList(own, undefined), [own]);
});

test("back-off: at once, then doubling to the cap", () => {
  const none = { ...BACKOFF, jitter: 0 };
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 100000].map((n) => backoffDelay(n, none)),
    [0, 250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
});

test("back-off jitter stays in its band and spreads", () => {
  for (let n = 1; n < 10; n++) {
    const ceiling = Math.min(5000, 250 * 2 ** (n - 1));
    const draws = Array.from({ length: 200 }, () => backoffDelay(n));
    assert.ok(draws.every((d) => d >= ceiling * 0.5 && d <= ceiling));
    assert.ok(Math.max(...draws) - Math.min(...draws) > ceiling * 0.3);
  }
  assert.equal(backoffDelay(3, BACKOFF, () => 1), 500);
  assert.equal(backoffDelay(3, BACKOFF, () => 0), 1000);
});

test("an entry is shown by its host", () => {
  assert.equal(entryLabel("wss://im-dr.example.cn:8443/ws"), "im-dr.example.cn:8443");
  assert.equal(entryLabel("not a url"), "not a url");
});
