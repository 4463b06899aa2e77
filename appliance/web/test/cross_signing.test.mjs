// Node tests of the web client's cross-signing (src/e2ee/cross_signing.js,
// docs/e2ee.md §9.1) against a fixture the Python SDK made
// (test/fixtures/cross-signing.json; appliance/tests/unit/test_cross_signing.py
// opens the same file): the backup opens here, the device signature verifies,
// and the same rules pick devices. Run: node --test test/
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  UserKeyChangedError, deviceIsSigned, judgeListing, openBackup, sealBackup, signDevice,
} from "../src/e2ee/cross_signing.js";
import { MalformedError, TamperedError } from "../src/e2ee/protocol.js";
import { fromHex, getSuite, toHex } from "../src/e2ee/suite.js";

const fixture = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), "fixtures", "cross-signing.json"), "utf8"));
const enc = (s) => new TextEncoder().encode(s);

class MemoryStore {
  constructor() {
    this.kv = new Map();
  }
  async get(k) {
    return this.kv.get(k);
  }
  async put(k, v) {
    this.kv.set(k, v);
  }
}

for (const [name, f] of Object.entries(fixture)) {
  const suite = getSuite(name);
  test(`${name}: a backup the Python SDK sealed opens here, and only with its passphrase`, async () => {
    const key = await openBackup(suite, f.user_id, fromHex(f.public_key), enc(f.backup), f.passphrase);
    assert.equal(toHex(key.privateKey), f.private_key);
    await assert.rejects(openBackup(suite, f.user_id, fromHex(f.public_key), enc(f.backup), `${f.passphrase}x`), TamperedError);
    await assert.rejects(openBackup(suite, "u_mallory", fromHex(f.public_key), enc(f.backup), f.passphrase), TamperedError);
    await assert.rejects(openBackup(suite, f.user_id, fromHex(f.public_key), enc("{}"), f.passphrase), MalformedError);
  });

  test(`${name}: device signatures agree with the Python SDK`, async () => {
    const args = [f.user_id, f.device_id, fromHex(f.identity_key)];
    assert.ok(await deviceIsSigned(suite, fromHex(f.public_key), ...args, fromHex(f.device_signature)));
    assert.ok(!(await deviceIsSigned(suite, fromHex(f.public_key), f.user_id, "ghost", fromHex(f.identity_key), fromHex(f.device_signature))));
    const mine = await signDevice(suite, fromHex(f.private_key), ...args);
    assert.ok(await deviceIsSigned(suite, fromHex(f.public_key), ...args, mine));
    if (name === "international") assert.equal(toHex(mine), f.device_signature); // Ed25519 is deterministic
  });

  test(`${name}: a backup sealed here opens here`, async () => {
    const pair = await suite.generateSigningKeypair();
    const backup = await sealBackup(suite, "u_x", pair, "another long passphrase", { n: 2 ** 14 });
    const key = await openBackup(suite, "u_x", pair.publicKey, backup, "another long passphrase");
    assert.equal(toHex(key.privateKey), toHex(pair.privateKey));
  });
}

test("a listing is judged by the pinned user key: unsigned devices refused and reported once", async () => {
  const suite = getSuite("international");
  const bob = await suite.generateSigningKeypair();
  const dev = async (id, signed) => {
    const ik = (await suite.generateSigningKeypair()).publicKey;
    return { userId: "bob", deviceId: id, identityKey: ik, deviceSignature: signed ? await signDevice(suite, bob.privateKey, "bob", id, ik) : new Uint8Array(0) };
  };
  const b1 = await dev("b1", true);
  const ghost = await dev("ghost", false);
  const listing = { devices: [b1, ghost], userKeys: [{ userId: "bob", userKey: bob.publicKey }] };
  const store = new MemoryStore();
  const seen = [];
  const use = await judgeListing(suite, store, listing, ["bob"], (c) => seen.push(`${c.deviceId}:${c.change}`));
  assert.deepEqual(use.map((b) => b.deviceId), ["b1"]);
  assert.deepEqual(seen, ["b1:added", "ghost:unsigned"]);
  await judgeListing(suite, store, listing, ["bob"], (c) => seen.push(`${c.deviceId}:${c.change}`));
  assert.equal(seen.length, 2);
  const forged = await suite.generateSigningKeypair();
  await assert.rejects(judgeListing(suite, store, { devices: [ghost], userKeys: [{ userId: "bob", userKey: forged.publicKey }] }, ["bob"], () => {}), UserKeyChangedError);
  await assert.rejects(judgeListing(suite, store, { devices: [ghost], userKeys: [] }, ["bob"], () => {}), UserKeyChangedError);
  // A user without a user key: trust on first use, reported as unverified.
  const carol = { userId: "carol", deviceId: "c1", identityKey: (await suite.generateSigningKeypair()).publicKey };
  const got = await judgeListing(suite, store, { devices: [carol], userKeys: [] }, ["carol"], (c) => seen.push(`${c.deviceId}:${c.change}`));
  assert.equal(got.length, 1);
  assert.equal(seen.at(-1), "c1:unverified");
});
