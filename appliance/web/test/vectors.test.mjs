// The worked examples of docs/e2ee.md §13 (computed by the Python side,
// appliance/tests/unit/test_e2ee_vectors.py) recomputed by the web client's
// implementation: the same inputs must give the same bytes, value by value.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { e2eePb } from "../src/pb.js";
import {
  bodyAad, escrowKeyId, groupContentKey, kdfCk, kdfRk, lp, messageKeyMaterial, prekeyStatement, safetyNumber, sessionKeys,
} from "../src/e2ee/protocol.js";
import { concatBytes, fromHex, getSuite, toHex } from "../src/e2ee/suite.js";

const doc = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "docs", "e2ee.md"), "utf8");

/** suite name -> Map(label -> hex or text) from the ``` blocks of §13. */
function examples() {
  const section = doc.slice(doc.indexOf("## 13. Worked examples"));
  const out = new Map();
  for (const block of section.split("```").filter((_, i) => i % 2 === 1)) {
    const lines = block.split("\n").filter((l) => l.trim());
    const m = /^suite: (\S+)/.exec(lines[0] || "");
    if (!m) continue;
    const values = new Map();
    for (let i = 1; i + 1 < lines.length; i += 2) values.set(lines[i].trim(), lines[i + 1].trim());
    out.set(m[1], values);
  }
  return out;
}

const range = (from, n) => Uint8Array.from({ length: n }, (_, i) => from + i);
const te = new TextEncoder();

const all = examples();
test("docs/e2ee.md has worked examples for both suites", () => {
  assert.deepEqual([...all.keys()].sort(), ["gm", "international"]);
});

for (const [name, v] of all) {
  test(`${name}: the web client reproduces every worked example`, async () => {
    const suite = getSuite(name);
    const want = (label) => {
      assert.ok(v.has(label), `docs/e2ee.md lacks "${label}" for ${name}`);
      return v.get(label);
    };
    const sessionId = await suite.hash(te.encode("transcript"));
    assert.equal(toHex(sessionId), want('session_id = H("transcript")'));
    const [rk0, ck0] = await sessionKeys(suite, range(0x00, 32), range(0x20, 32), sessionId);
    assert.equal(toHex(rk0), want("RK0"));
    assert.equal(toHex(ck0), want("CK0"));
    const [rk1, ck] = await kdfRk(suite, rk0, range(0x40, 32));
    assert.equal(toHex(rk1), want("KDF_RK(RK0, ss=40..5f): RK1"));
    assert.equal(toHex(ck), want("KDF_RK(RK0, ss=40..5f): CK"));
    let chain = ck;
    const mks = [];
    for (let i = 0; i < 3; i++) {
      const [mk, next] = await kdfCk(suite, chain);
      mks.push(mk);
      chain = next;
    }
    assert.equal(toHex(mks[0]), want("MK0"));
    assert.equal(toHex(mks[1]), want("MK1"));
    assert.equal(toHex(mks[2]), want("MK2"));
    assert.equal(toHex(chain), want("CK after MK2"));
    const [key, nonce] = await messageKeyMaterial(suite, mks[0]);
    assert.equal(toHex(key), want("MK0 key"));
    assert.equal(toHex(nonce), want("MK0 nonce"));
    assert.equal(toHex(prekeyStatement(name, "u_alice", "a1", 1, 7, fromHex("0102"))),
      want("prekey statement (u_alice, a1, kind 1, key_id 7, public key 0102)"));
    const aad = bodyAad(name, "d:u_a:u_b", "u_a", "a1", 1);
    assert.equal(toHex(aad), want("body_aad(d:u_a:u_b, u_a, a1, kind 1)"));
    const payload = e2eePb.Payload.encode({ text: "你好" }).finish();
    assert.equal(toHex(payload), want("Payload{text: 你好}"));
    const bodyNonce = range(0x64, 12);
    const ct = await suite.aeadEncrypt(range(0, suite.aeadKeySize), bodyNonce, payload, aad);
    assert.equal(toHex(ct), want("AEAD(content_key=00.., nonce=64..6f, Payload, body_aad)"));
    assert.equal(toHex(await suite.hash(concatBytes(lp(bodyNonce), lp(ct)))), want("body_digest"));
    const [gmk] = await kdfCk(suite, range(0x80, 32));
    assert.equal(toHex(await groupContentKey(suite, gmk)), want("group content key, chain key 80..9f, iteration 0"));
    assert.equal(await escrowKeyId(suite, fromHex("0102")), want("escrow_key_id(public key 0102)"));
    assert.equal(await safetyNumber(suite, "u_a", [fromHex("0a")], "u_b", [fromHex("0b")]), want("safety_number(u_a [0a], u_b [0b])"));
  });
}
