// Who vouches for the escrow key (docs/e2ee.md §10.1), the web client's half:
// the organisation root's statement in AUTH_OK is verified against the root,
// and the newest verified statement is pinned so that an older one (an old
// escrow key) is refused. Same rules as tongxin/e2ee/escrow_trust.py.
//
// Where the root comes from is the weak point of a page the server serves:
// the node offers its configured root in /api/v1/info, and the browser pins
// the first one it sees (trust on first use, per device store) and refuses a
// different one later. The page shows the root's fingerprint so a user can
// compare it with the one the installation printed.
import { E2EEError, lp } from "./protocol.js";
import { concatBytes, toHex } from "./suite.js";

const L_STATEMENT = "tongxin-e2ee-v1/escrow-statement";
const CLOCK_SKEW_MS = 5 * 60 * 1000;

export class EscrowUntrustedError extends E2EEError {}

function u64(n) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n));
  return out;
}

export function statementBytes(suiteName, keyId, publicKey, notBeforeMs, sequence) {
  return concatBytes(lp(L_STATEMENT), lp(suiteName), lp(keyId), lp(publicKey), u64(notBeforeMs), u64(sequence));
}

export async function rootKeyId(suite, rootPublicKey) {
  return toHex(await suite.hash(rootPublicKey));
}

/** The statement AUTH_OK carries for its escrow key, or null. */
export function statementFromAuth(auth) {
  const st = auth.escrowStatement;
  if (!st || !st.signature?.length) return null;
  return {
    suite: auth.cryptoSuite, keyId: auth.escrowKeyId, publicKey: new Uint8Array(auth.escrowPublicKey ?? 0),
    notBeforeMs: Number(st.notBeforeMs || 0), sequence: Number(st.sequence || 0), rootKeyId: st.rootKeyId || "",
    signature: new Uint8Array(st.signature),
  };
}

/** Throw EscrowUntrustedError unless `root` signed `st` for this suite and it is valid now. */
export async function verifyStatement(suite, root, st, nowMs, escrowKeyIdOf) {
  if (st.suite !== suite.name) throw new EscrowUntrustedError(`the escrow statement is for suite ${st.suite}, the server uses ${suite.name}`);
  if (st.keyId !== (await escrowKeyIdOf(suite, st.publicKey))) throw new EscrowUntrustedError(`escrow key id ${st.keyId} does not name the announced escrow public key`);
  const expected = await rootKeyId(suite, root);
  if (st.rootKeyId !== expected) {
    throw new EscrowUntrustedError(`the escrow key statement names root ${st.rootKeyId.slice(0, 16) || "(none)"}…, not the organisation root ${expected.slice(0, 16)}…`);
  }
  try {
    await suite.verify(root, statementBytes(st.suite, st.keyId, st.publicKey, st.notBeforeMs, st.sequence), st.signature);
  } catch {
    throw new EscrowUntrustedError("the escrow key statement's signature does not verify against the organisation root");
  }
  if (st.notBeforeMs > nowMs + CLOCK_SKEW_MS) throw new EscrowUntrustedError("the escrow key statement is not valid yet");
}

/**
 * The pin after a verified statement, and whether the escrow key changed
 * (a rotation the root signed). Refuses going back to an older statement,
 * and two keys under one sequence.
 */
export function advancePin(pin, st) {
  const next = { keyId: st.keyId, sequence: st.sequence, rootKeyId: st.rootKeyId };
  if (!pin) return { pin: next, changed: false };
  if (pin.rootKeyId === st.rootKeyId) {
    if (st.sequence < pin.sequence) {
      throw new EscrowUntrustedError(`the server announced escrow statement ${st.sequence} (key ${st.keyId}), older than statement ${pin.sequence} (key ${pin.keyId}) this device has seen`);
    }
    if (st.sequence === pin.sequence && st.keyId !== pin.keyId) {
      throw new EscrowUntrustedError(`escrow statement ${st.sequence} names key ${st.keyId}, but this device saw it name ${pin.keyId}`);
    }
  }
  return { pin: next, changed: next.keyId !== pin.keyId };
}
