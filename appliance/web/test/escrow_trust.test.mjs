// Node tests of the web client's escrow trust (src/e2ee/escrow_trust.js,
// docs/e2ee.md §10.1) against statements the Python side signed
// (test/fixtures/escrow-statement.json, made with tongxin.e2ee.escrow_trust.sign).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { EscrowUntrustedError, advancePin, verifyStatement } from "../src/e2ee/escrow_trust.js";
import { escrowKeyId } from "../src/e2ee/protocol.js";
import { fromHex, getSuite } from "../src/e2ee/suite.js";

const fixture = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), "fixtures", "escrow-statement.json"), "utf8"));
const b64 = (s) => Uint8Array.from(Buffer.from(s, "base64"));
const NOW = 1796000000000 + 1000;

for (const [name, f] of Object.entries(fixture)) {
  const suite = getSuite(name);
  const root = fromHex(f.root_public_key);
  const j = f.statement;
  const st = {
    suite: j.suite, keyId: j.escrow_key_id, publicKey: b64(j.escrow_public_key), notBeforeMs: j.not_before_ms,
    sequence: j.sequence, rootKeyId: j.root_key_id, signature: b64(j.signature),
  };

  test(`${name}: a statement the Python side signed verifies here`, async () => {
    await verifyStatement(suite, root, st, NOW, escrowKeyId);
  });

  test(`${name}: a changed statement, another root, or an early one is refused`, async () => {
    const other = (await suite.generateSigningKeypair()).publicKey;
    await assert.rejects(verifyStatement(suite, other, st, NOW, escrowKeyId), EscrowUntrustedError);
    await assert.rejects(verifyStatement(suite, root, { ...st, sequence: st.sequence + 1 }, NOW, escrowKeyId), EscrowUntrustedError);
    const foreign = (await suite.generateKemKeypair()).publicKey;
    await assert.rejects(verifyStatement(suite, root, { ...st, publicKey: foreign }, NOW, escrowKeyId), EscrowUntrustedError);
    await assert.rejects(verifyStatement(suite, root, st, j.not_before_ms - 3600 * 1000, escrowKeyId), EscrowUntrustedError);
  });
}

test("the pin moves forward only", () => {
  const st = (keyId, sequence) => ({ keyId, sequence, rootKeyId: "r" });
  let { pin, changed } = advancePin(null, st("k1", 1));
  assert.equal(changed, false);
  ({ pin, changed } = advancePin(pin, st("k2", 2)));
  assert.equal(changed, true);
  assert.throws(() => advancePin(pin, st("k1", 1)), EscrowUntrustedError);
  assert.throws(() => advancePin(pin, st("k3", 2)), EscrowUntrustedError);
  assert.equal(advancePin(pin, st("k2", 2)).changed, false);
});
