// The status charts' history across a reload (src/console/history.js) and the summary
// of a downloaded audit search (src/console/auditfile.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import { summarise } from "../src/console/auditfile.js";
import { KEY_PREFIX, MAX_BYTES, restore, save } from "../src/console/history.js";

class Storage {
  constructor(full = false) { this.items = new Map(); this.full = full; }
  getItem(k) { return this.items.has(k) ? this.items.get(k) : null; }
  setItem(k, v) { if (this.full) throw new Error("QuotaExceededError"); this.items.set(k, String(v)); }
  removeItem(k) { this.items.delete(k); }
}

const NOW = 1_700_000_000_000;
const opts = { owner: "n1", names: ["connections", "ack"], keep: 5, maxAgeMs: 60_000 };
const pts = (n, step = 2000, end = NOW) => Array.from({ length: n }, (_, i) => ({ t: end - (n - 1 - i) * step, v: i }));

test("what was saved comes back after a reload, bounded to keep points and the window", () => {
  const st = new Storage();
  const extra = { ts: NOW, messages_stored: 41, ack_latency_sum_s: 0.5, ack_latency_count: 1 };
  assert.ok(save(st, "node", { ...opts, now: NOW, series: { connections: pts(8), ack: pts(2) }, extra }));
  assert.deepEqual([...st.items.keys()], [`${KEY_PREFIX}node`]);
  assert.match(KEY_PREFIX, /\.v1\.$/);
  const back = restore(st, "node", { ...opts, now: NOW + 2000 });
  assert.deepEqual(back.series.connections, pts(8).slice(-5));
  assert.deepEqual(back.series.ack, pts(2));
  assert.deepEqual(back.extra, extra);
  // a minute later the oldest points are out of the window; much later nothing is left
  assert.equal(restore(st, "node", { ...opts, now: NOW + 55_000 }).series.connections.length, 3);
  const late = restore(st, "node", { ...opts, now: NOW + 3_600_000 });
  assert.deepEqual(late, { series: { connections: [], ack: [] }, extra: null });
});

test("another node's history is not shown as this one's", () => {
  const st = new Storage();
  save(st, "node", { ...opts, now: NOW, series: { connections: pts(3), ack: [] } });
  assert.deepEqual(restore(st, "node", { ...opts, owner: "n2", now: NOW }).series.connections, []);
});

test("corrupt or foreign data is ignored and removed", () => {
  const bad = [
    "{not json", "null", "[]", '"text"', JSON.stringify({ v: 2, owner: "n1", series: {} }),
    JSON.stringify({ v: 1, owner: "n1", series: { connections: "x" } }),
    JSON.stringify({ v: 1, owner: "n1", series: { connections: [{ t: NOW, v: "7" }] } }),
    JSON.stringify({ v: 1, owner: "n1", series: { connections: [{ t: NOW, v: -1 }] } }),
    JSON.stringify({ v: 1, owner: "n1", series: { connections: [{ t: NOW, v: 1 }, { t: NOW - 5, v: 1 }] } }),
    JSON.stringify({ v: 1, owner: "n1", series: { connections: [{ t: NOW + 3_600_000, v: 1 }] } }),
    JSON.stringify({ v: 1, owner: "n1", series: { connections: [null] } }),
    JSON.stringify({ v: 1, owner: "n1", series: { connections: [] }, pad: "x".repeat(MAX_BYTES) }),
  ];
  for (const raw of bad) {
    const st = new Storage();
    st.setItem(`${KEY_PREFIX}node`, raw);
    assert.deepEqual(restore(st, "node", { ...opts, now: NOW }), { series: { connections: [], ack: [] }, extra: null }, raw.slice(0, 80));
    assert.equal(st.getItem(`${KEY_PREFIX}node`), null, `not removed: ${raw.slice(0, 80)}`);
  }
  // an extra that is not numbers is dropped, the points kept
  const st = new Storage();
  st.setItem(`${KEY_PREFIX}node`, JSON.stringify({ v: 1, owner: "n1", saved: NOW, series: { connections: pts(2) }, extra: { ts: "x" } }));
  const back = restore(st, "node", { ...opts, now: NOW });
  assert.equal(back.extra, null);
  assert.equal(back.series.connections.length, 2);
});

test("a storage that refuses or throws loses only the history", () => {
  const full = new Storage(true);
  assert.equal(save(full, "node", { ...opts, now: NOW, series: { connections: pts(3), ack: [] } }), false);
  const broken = { getItem() { throw new Error("SecurityError"); }, setItem() { throw new Error("x"); }, removeItem() {} };
  assert.deepEqual(restore(broken, "node", { ...opts, now: NOW }).series.connections, []);
  assert.equal(save(new Storage(), "node", { ...opts, keep: 1e6, now: NOW, series: { connections: pts(20000, 1), ack: [] } }), false);
});

test("a downloaded audit search: records counted, the cap's marker recognised", () => {
  const rec = (seq) => JSON.stringify({ seq, event: "user.create" });
  assert.deepEqual(summarise("jsonl", `${rec(3)}\n${rec(2)}\n`), { count: 2, truncated: false });
  assert.deepEqual(summarise("jsonl", `${rec(3)}\n${rec(2)}\n{"truncated":true,"max_records":2,"before":2}\n`), { count: 2, truncated: true });
  assert.deepEqual(summarise("jsonl", ""), { count: 0, truncated: false });
  const head = "\uFEFFseq,time_utc,target\r\n";
  assert.deepEqual(summarise("csv", `${head}2,x,"a\r\nb"\r\n1,y,'=1\r\n`), { count: 2, truncated: false });
  assert.deepEqual(summarise("csv", `${head}2,x,a\r\n#truncated: only the first 1 matching records,,\r\n`), { count: 1, truncated: true });
  assert.deepEqual(summarise("csv", head), { count: 0, truncated: false });
});
