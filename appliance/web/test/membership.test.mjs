// Node tests of the web client's membership ledger (src/e2ee/membership.js,
// docs/e2ee.md §7.1): the same cases as the Python SDK's
// appliance/tests/unit/test_membership_ledger.py. Run: node --test test/
import assert from "node:assert/strict";
import { test } from "node:test";

import { MembershipLedger, UnannouncedMemberError } from "../src/e2ee/membership.js";

const CID = "g:1";
const EV = { CREATED: 1, ADDED: 2, REMOVED: 3, LEFT: 4, RENAMED: 6 };
const system = (seq, kind, actorId, userIds) => ({ seq, kind: 4, senderId: actorId, system: { kind, actorId, userIds } });
const chat = (seq) => ({ seq, kind: 1, senderId: "alice", content: { text: "hi" } });
const createdLog = () => [
  system(1, EV.CREATED, "alice", ["alice", "bob"]), chat(2), system(3, EV.ADDED, "alice", ["carol"]), chat(4),
  system(5, EV.REMOVED, "alice", ["bob"]), system(6, EV.LEFT, "carol", []),
];

class MemoryStore {
  constructor() {
    this.kv = new Map();
  }
  async get(k) {
    return structuredClone(this.kv.get(k));
  }
  async put(k, v) {
    this.kv.set(k, structuredClone(v));
  }
}

test("a log replayed from creation gives the members and each change", async () => {
  const led = new MembershipLedger(null);
  assert.deepEqual(led.unannounced(CID, ["alice"]), ["alice"]);
  const changes = await led.replay(CID, createdLog(), ["alice"]);
  assert.deepEqual([...led.groups.get(CID).members], ["alice"]);
  assert.deepEqual(changes.map((c) => [c.seq, c.added, c.removed]), [
    [1, ["alice", "bob"], []], [3, ["carol"], []], [5, [], ["bob"]], [6, [], ["carol"]],
  ]);
  assert.equal(led.groups.get(CID).checkedSeq, 6);
});

test("a listed member no membership entry announced is unannounced", async () => {
  const led = new MembershipLedger(null);
  await led.replay(CID, createdLog().slice(0, 4), ["alice", "bob", "carol"]);
  assert.deepEqual(led.unannounced(CID, ["alice", "bob", "carol", "mallory"]), ["mallory"]);
  await led.replay(CID, [chat(5), system(6, EV.RENAMED, "alice", ["mallory"])], []);
  assert.deepEqual(led.unannounced(CID, ["alice", "mallory"]), ["mallory"]);
  await led.replay(CID, [system(7, EV.ADDED, "bob", ["mallory"])], []);
  assert.deepEqual(led.unannounced(CID, ["alice", "mallory"]), []);
  const err = new UnannouncedMemberError(CID, ["mallory"]);
  assert.equal(err.name, "UnannouncedMemberError");
  assert.deepEqual(err.userIds, ["mallory"]);
});

test("without creation in view the first list is taken and reported as firstSeen", async () => {
  const led = new MembershipLedger(null);
  const changes = await led.replay(CID, [system(9, EV.ADDED, "alice", ["dave"]), chat(10)], ["alice", "bob", "dave"]);
  assert.equal(changes.length, 1);
  assert.equal(changes[0].firstSeen, true);
  assert.deepEqual(changes[0].added, ["alice", "bob", "dave"]);
  assert.equal(led.groups.get(CID).checkedSeq, 10);
  assert.deepEqual(led.unannounced(CID, ["alice", "eve"]), ["eve"]);
});

test("pushed entries apply once and a later replay does not apply them again", async () => {
  const led = new MembershipLedger(null);
  await led.replay(CID, createdLog().slice(0, 2), ["alice", "bob"]);
  const added = system(3, EV.ADDED, "alice", ["carol"]);
  assert.deepEqual((await led.apply(CID, added)).added, ["carol"]);
  assert.equal(await led.apply(CID, added), null);
  const removed = system(4, EV.REMOVED, "alice", ["carol"]);
  await led.apply(CID, removed);
  assert.deepEqual(await led.replay(CID, [added, removed], ["alice", "bob"]), []);
  assert.deepEqual([...led.groups.get(CID).members].sort(), ["alice", "bob"]);
  assert.equal(led.groups.get(CID).applied.size, 0);
});

test("a delta for an unknown group waits; creation starts a record", async () => {
  const led = new MembershipLedger(null);
  assert.equal(await led.apply(CID, system(3, EV.ADDED, "alice", ["carol"])), null);
  assert.equal(led.groups.get(CID), undefined);
  const c = await led.apply("g:2", system(1, EV.CREATED, "bob", ["bob", "erin"]));
  assert.deepEqual(c.added, ["bob", "erin"]);
});

test("the record survives a reload through the key store", async () => {
  const store = new MemoryStore();
  const led = new MembershipLedger(store);
  await led.replay(CID, createdLog().slice(0, 3), ["alice", "bob", "carol"]);
  await led.apply(CID, system(9, EV.ADDED, "alice", ["frank"]));
  const again = new MembershipLedger(store);
  const g = await again.load(CID);
  assert.deepEqual([...g.members].sort(), ["alice", "bob", "carol", "frank"]);
  assert.equal(g.checkedSeq, 3);
  assert.deepEqual([...g.applied], [9]);
});
