// Node tests of the web client's E2EE protocol (src/e2ee/protocol.js) against
// an in-memory key directory that applies the server rules of docs/e2ee.md §3:
// 1:1 and group exchanges between several devices, the ratchet both ways and
// out of order, sender-key rotation on membership change, identity change,
// tamper and replay refusal, attachments and the escrow wrap. Needs the
// generated protobuf module (node build.mjs). Run: node --test test/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { e2eePb } from "../src/pb.js";
import {
  E2EEDevice,
  IdentityChangedError,
  NoSenderKeyError,
  ReplayError,
  TamperedError,
  WrongSignatureError,
  bodyAad,
  lp,
  prekeyStatement,
  safetyNumber,
} from "../src/e2ee/protocol.js";
import { KeyStore } from "../src/e2ee/store.js";
import { SUITE_NAMES, concatBytes, getSuite } from "../src/e2ee/suite.js";

const te = new TextEncoder();
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/** The key directory of docs/e2ee.md §3, in memory, with its verification rules. */
class Directory {
  constructor(suite) {
    this.suite = suite;
    this.devices = new Map(); // "user:device" -> {userId, deviceId, identityKey, signedPrekey, opks: []}
    this.fetches = 0;
  }

  transport(userId, deviceId) {
    return {
      publish: async (f) => this.publish(userId, deviceId, f),
      fetch: async (f) => this.fetch(userId, deviceId, f),
    };
  }

  async verify(userId, deviceId, ik, kind, pk) {
    const st = prekeyStatement(this.suite.name, userId, deviceId, kind, pk.keyId, pk.publicKey);
    await this.suite.verify(ik, st, pk.signature);
  }

  async publish(userId, deviceId, f) {
    const id = `${userId}:${deviceId}`;
    let d = this.devices.get(id);
    if (f.identityKey && (!d || !same(d.identityKey, f.identityKey))) {
      if (f.suite !== this.suite.name) throw new Error("INVALID_ARGUMENT suite");
      d = { userId, deviceId, identityKey: f.identityKey, signedPrekey: null, opks: [] };
      if (!f.signedPrekey) throw new Error("INVALID_ARGUMENT new identity needs a signed prekey");
    }
    if (d && f.signedPrekey) {
      await this.verify(userId, deviceId, d.identityKey, 1, f.signedPrekey);
      d.signedPrekey = f.signedPrekey;
    }
    for (const pk of f.oneTimePrekeys || []) {
      await this.verify(userId, deviceId, d.identityKey, 2, pk);
      d.opks.push(pk);
    }
    if (d) this.devices.set(id, d);
    return {
      oneTimePrekeysRemaining: d ? d.opks.length : 0,
      signedPrekeyId: d?.signedPrekey?.keyId || 0,
      identityKey: d ? d.identityKey : new Uint8Array(0),
    };
  }

  async fetch(userId, deviceId, f) {
    this.fetches++;
    const devices = [];
    for (const d of this.devices.values()) {
      if (!f.userIds.includes(d.userId) || (d.userId === userId && d.deviceId === deviceId)) continue;
      const b = { userId: d.userId, deviceId: d.deviceId, identityKey: d.identityKey, signedPrekey: d.signedPrekey };
      if (!f.withoutOneTimePrekeys && d.opks.length) b.oneTimePrekey = d.opks.shift();
      devices.push(b);
    }
    // Through the protobuf codec, as the real client gets them.
    return e2eePb.KeyBundles.decode(e2eePb.KeyBundles.encode({ devices }).finish());
  }
}

/** A "server" log: sealed contents become Messages (through the protobuf codec). */
function deliver(convId, sender, content) {
  return {
    conversationId: convId, senderId: sender.userId, senderDevice: sender.deviceId, kind: 1,
    content: { encrypted: new Uint8Array(content.encrypted) },
  };
}

async function device(dir, userId, deviceId, extra = {}) {
  const changes = [];
  const d = new E2EEDevice({
    suite: dir.suite, store: new KeyStore(null) /* in memory, one per device object */, transport: dir.transport(userId, deviceId),
    // A few one-time prekeys are enough here and keep the SM2 key generation short.
    userId, deviceId, onIdentityChange: (err) => changes.push(err), oneTimePrekeys: 3, ...extra,
  });
  d.changes = changes;
  await d.setup();
  return d;
}

for (const name of SUITE_NAMES) {
  describe(`${name}: E2EE protocol between devices`, () => {
    const suite = getSuite(name);

    test("1:1 both ways, to every device of the peer and the sender's other devices", async () => {
      const dir = new Directory(suite);
      const a1 = await device(dir, "alice", "a1");
      const a2 = await device(dir, "alice", "a2");
      const b1 = await device(dir, "bob", "b1");
      const b2 = await device(dir, "bob", "b2");
      const { envelope, users } = await a1.sealPairwise("c1", { text: "hi bob" }, ["bob"]);
      assert.deepEqual([...users].sort(), ["alice", "bob"]);
      const m = deliver("c1", a1, { encrypted: envelope });
      for (const d of [b1, b2, a2]) assert.equal((await d.open(m)).text, "hi bob");
      // The sender never wraps to itself.
      await assert.rejects(a1.open(m), { name: "NoSessionError" });
      // The reply opens the session's first ratchet step on Alice's side.
      const r = await b1.sealPairwise("c1", { text: "hi alice" }, ["alice"]);
      assert.equal((await a1.open(deliver("c1", b1, { encrypted: r.envelope }))).text, "hi alice");
      // Several messages, delivered out of order, each opens exactly once.
      const sealed = [];
      for (let i = 0; i < 3; i++) sealed.push(deliver("c1", a1, { encrypted: (await a1.sealPairwise("c1", { text: `n${i}` }, ["bob"])).envelope }));
      for (const i of [2, 0, 1]) assert.equal((await b1.open(sealed[i])).text, `n${i}`);
      await assert.rejects(b1.open(sealed[1]), ReplayError);
    });

    test("tampering anywhere is refused and leaves the session usable", async () => {
      const dir = new Directory(suite);
      const a = await device(dir, "alice", "a1");
      const b = await device(dir, "bob", "b1");
      const { envelope } = await a.sealPairwise("c1", { text: "secret" }, ["bob"]);
      const env = e2eePb.Envelope.decode(Uint8Array.from(envelope));
      const flipped = (mutate) => {
        // Decoded bytes fields are views into the buffer (and Buffer.slice is a view too): decode a copy.
        const copy = e2eePb.Envelope.decode(Uint8Array.from(envelope));
        mutate(copy);
        return deliver("c1", a, { encrypted: e2eePb.Envelope.encode(copy).finish() });
      };
      await assert.rejects(b.open(flipped((e) => { e.ciphertext[0] ^= 1; })), TamperedError);
      // A key learnt from a SessionInit is pinned only once its message opened (§9).
      assert.equal(await b.store.get("pin:alice:a1"), undefined);
      await assert.rejects(b.open(flipped((e) => { e.recipients[0].ciphertext[3] ^= 1; })), TamperedError);
      await assert.rejects(b.open(flipped((e) => { e.recipients[0].init.signature[5] ^= 1; })), WrongSignatureError);
      // The envelope's sender device must be the message's.
      await assert.rejects(b.open({ ...deliver("c1", a, { encrypted: envelope }), senderDevice: "a2" }), { name: "MalformedError" });
      // Another conversation id changes the AAD.
      await assert.rejects(b.open(deliver("c2", a, { encrypted: envelope })), TamperedError);
      assert.equal(env.recipients.length, 1);
      assert.equal((await b.open(deliver("c1", a, { encrypted: envelope }))).text, "secret");
      assert.ok(await b.store.get("pin:alice:a1"));
      // After a ratchet round trip the first chain is finished: replaying its
      // message is a ReplayError, not a malformed message.
      const reply = await b.sealPairwise("c1", { text: "ok" }, ["alice"]);
      await a.open(deliver("c1", b, { encrypted: reply.envelope }));
      const next = await a.sealPairwise("c1", { text: "next chain" }, ["bob"]);
      assert.equal((await b.open(deliver("c1", a, { encrypted: next.envelope }))).text, "next chain");
      await assert.rejects(b.open(deliver("c1", a, { encrypted: envelope })), ReplayError);
    });

    test("group: sender keys, rotation on membership change, removed members are cut off", async () => {
      const dir = new Directory(suite);
      const a = await device(dir, "alice", "a1");
      const b = await device(dir, "bob", "b1");
      const c = await device(dir, "carol", "c1");
      const log = [];
      const send = async (env) => { log.push(deliver("g", a, { encrypted: env })); };
      const g1 = await a.sealGroup("g", { text: "hello group" }, ["alice", "bob", "carol"], 1, send);
      assert.equal(log.length, 1, "one sender-key distribution before the first group message");
      for (const d of [b, c]) {
        assert.ok((await d.open(log[0])).senderKey, "distribution is a control payload");
        assert.equal((await d.open(deliver("g", a, { encrypted: g1 }))).text, "hello group");
      }
      const g2 = await a.sealGroup("g", { text: "second" }, ["alice", "bob", "carol"], 2, send);
      assert.equal(log.length, 1, "no new distribution within an epoch");
      assert.equal(e2eePb.Envelope.decode(g2).senderKey.iteration, 1);
      await assert.rejects(b.open(deliver("g", a, { encrypted: g1 })), ReplayError);
      assert.equal((await b.open(deliver("g", a, { encrypted: g2 }))).text, "second");

      // Carol is removed (SYSTEM entry at seq 10): the next send rotates, Carol gets no new key.
      await a.noteMembershipChange("g", 10, ["carol"]);
      const g3 = await a.sealGroup("g", { text: "after removal" }, ["alice", "bob"], 10, send);
      assert.equal(log.length, 2);
      assert.equal(e2eePb.Envelope.decode(g3).senderKey.epoch, 2);
      assert.equal((await b.open(log[1])).senderKey.epoch, 2);
      assert.equal((await b.open(deliver("g", a, { encrypted: g3 }))).text, "after removal");
      await assert.rejects(c.open(log[1]), { name: "NoSessionError" });
      await assert.rejects(c.open(deliver("g", a, { encrypted: g3 })), NoSenderKeyError);

      // A member list that differs from the epoch's also rotates, even before the
      // SYSTEM entry was seen (docs/e2ee.md "Changes").
      const g4 = await a.sealGroup("g", { text: "bob only" }, ["alice"], 11, send);
      assert.equal(e2eePb.Envelope.decode(Uint8Array.from(g4)).senderKey.epoch, 3);

      // A forged group signature is refused.
      const forged = e2eePb.Envelope.decode(Uint8Array.from(g3));
      forged.senderKey.signature[4] ^= 1;
      await assert.rejects(b.open(deliver("g", a, { encrypted: e2eePb.Envelope.encode(forged).finish() })), { name: /Signature|Replay/ });
    });

    test("a changed identity key is reported, blocks the device, and can be accepted", async () => {
      const dir = new Directory(suite);
      const a = await device(dir, "alice", "a1");
      await device(dir, "bob", "b1");
      const first = await a.sealPairwise("c1", { text: "1" }, ["bob"]);
      assert.ok(first.users.has("bob"));
      // Bob reinstalls: same device id, new identity (a fresh store).
      const fresh = new E2EEDevice({
        suite, store: new KeyStore(null), transport: dir.transport("bob", "b1"),
        userId: "bob", deviceId: "b1", oneTimePrekeys: 3,
      });
      await fresh.setup();
      const blocked = await a.sealPairwise("c1", { text: "2" }, ["bob"]);
      assert.ok(!blocked.users.has("bob"), "no wrap to a device whose key changed");
      assert.equal(a.changes.length, 1);
      assert.ok(a.changes[0] instanceof IdentityChangedError);
      const pending = await a.pendingIdentityChanges();
      assert.deepEqual(pending.map((p) => `${p.userId}/${p.deviceId}`), ["bob/b1"]);
      await a.acceptIdentity("bob", "b1", pending[0].newKey);
      const ok = await a.sealPairwise("c1", { text: "3" }, ["bob"]);
      assert.ok(ok.users.has("bob"));
      assert.equal((await fresh.open(deliver("c1", a, { encrypted: ok.envelope }))).text, "3");
    });

    test("an old signed prekey is rotated, and sessions begun against it still open", async () => {
      const dir = new Directory(suite);
      const a = await device(dir, "alice", "a1");
      const b = await device(dir, "bob", "b1");
      // Alice's session setup uses Bob's signed prekey 1 ...
      const first = await a.sealPairwise("c1", { text: "before rotation" }, ["bob"]);
      // ... then Bob's prekey is a week old and his next login rotates it.
      const spks = await b.store.get("spks");
      spks.at(-1).created = Date.now() - 8 * 24 * 3600 * 1000;
      await b.store.put("spks", spks);
      const status = await b.setup();
      assert.equal(status.signedPrekeyId, 2);
      assert.equal(dir.devices.get("bob:b1").signedPrekey.keyId, 2);
      assert.equal((await b.open(deliver("c1", a, { encrypted: first.envelope }))).text, "before rotation");
      // A setup without anything due publishes nothing new.
      assert.equal((await b.setup()).signedPrekeyId, 2);
    });

    test("attachments: digest and AEAD are checked", async () => {
      const dir = new Directory(suite);
      const a = await device(dir, "alice", "a1");
      const data = te.encode("file body ".repeat(100));
      const enc = await a.encryptAttachment(data);
      assert.ok(!same(enc.blob.subarray(0, data.length), data));
      assert.deepEqual(await a.decryptAttachment(enc, enc.blob), data);
      const bad = enc.blob.slice();
      bad[0] ^= 1;
      await assert.rejects(a.decryptAttachment(enc, bad), TamperedError);
    });

    test("escrow: the wrap opens with the escrow private key to the content key", async () => {
      const dir = new Directory(suite);
      const escrowPair = await suite.generateKemKeypair();
      const a = await device(dir, "alice", "a1", { escrow: { publicKey: escrowPair.publicKey, keyId: "0011223344556677" } });
      const b = await device(dir, "bob", "b1");
      const { envelope } = await a.sealPairwise("c1", { text: "audited" }, ["bob"]);
      const env = e2eePb.Envelope.decode(envelope);
      assert.equal(env.escrow.keyId, "0011223344556677");
      assert.equal(env.escrow.wrappedKey.length, suite.aeadKeySize + 16);
      const ss = await suite.kemDecapsulate(escrowPair.privateKey, env.escrow.kemCiphertext);
      const k = suite.aeadKeySize;
      const okm = await suite.hkdf(ss, k + 12, { info: te.encode("tongxin-e2ee-v1/escrow") });
      const aad = bodyAad(name, "c1", "alice", "a1", 1);
      const contentKey = await suite.aeadDecrypt(okm.slice(0, k), okm.slice(k), env.escrow.wrappedKey, concatBytes(aad, lp("0011223344556677")));
      const body = await suite.aeadDecrypt(contentKey, env.nonce, env.ciphertext, aad);
      assert.equal(e2eePb.Payload.decode(body).text, "audited");
      assert.equal((await b.open(deliver("c1", a, { encrypted: envelope }))).text, "audited");
    });

    test("safety numbers agree on both sides and change with a key", async () => {
      const k1 = (await suite.generateSigningKeypair()).publicKey;
      const k2 = (await suite.generateSigningKeypair()).publicKey;
      const k3 = (await suite.generateSigningKeypair()).publicKey;
      const ab = await safetyNumber(suite, "alice", [k1], "bob", [k2]);
      assert.match(ab, /^(\d{5} ){5}\d{5}$/);
      assert.equal(await safetyNumber(suite, "bob", [k2], "alice", [k1]), ab);
      assert.notEqual(await safetyNumber(suite, "alice", [k1], "bob", [k3]), ab);
    });
  });
}
