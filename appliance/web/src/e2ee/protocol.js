// End-to-end encryption for the web client, following docs/e2ee.md (version 1)
// byte for byte so the Python SDK (tongxin/e2ee/, tongxin/client/e2ee.py) and
// this client open each other's envelopes:
//
//   §3 device keys published with KEYS_PUBLISH, bundles fetched with KEYS_FETCH;
//   §4 X3DH-shaped session setup with the suite KEM;  §5 the KEM ratchet;
//   §6 envelopes and pairwise fan-out;  §7 group sender keys with rotation;
//   §8 attachments;  §9 trust-on-first-use pins;  §10 compliance escrow.
//
// State lives in a KeyStore (IndexedDB). Every receive works on copies and
// commits only after every AEAD opened, so a tampered, replayed or too-far
// message changes nothing. All operations run one at a time (a promise
// queue): two deliveries racing on one ratchet would corrupt it.
import { e2eePb } from "../pb.js";
import { CryptoError, concatBytes, randomBytes, toHex } from "./suite.js";

export const VERSION = 1;
const PREKEY_SIGNED = 1;
const PREKEY_ONE_TIME = 2;
const KIND_PAIRWISE = 1;
const KIND_GROUP = 2;
const NONCE_SIZE = 12;
const MAX_SKIP = 1000;
const MAX_STORED_SKIPPED = 2000;
const FINISHED_CHAINS_KEPT = 32;
const OLD_SESSIONS_KEPT = 4;
const SIGNED_PREKEYS_KEPT = 3;
const SIGNED_PREKEY_MAX_AGE_MS = 7 * 24 * 3600 * 1000; // rotated weekly, like the SDK
const OPK_BATCH = 20;
const OPK_LOW_WATER = 10;

const te = new TextEncoder();
const L = {
  prekey: "tongxin-e2ee-v1/prekey",
  session: "tongxin-e2ee-v1/session",
  sessionKeys: te.encode("tongxin-e2ee-v1/session-keys"),
  ratchet: te.encode("tongxin-e2ee-v1/ratchet"),
  messageKey: te.encode("tongxin-e2ee-v1/message-key"),
  recipient: "tongxin-e2ee-v1/recipient",
  body: "tongxin-e2ee-v1/body",
  group: "tongxin-e2ee-v1/group",
  groupKey: te.encode("tongxin-e2ee-v1/group-key"),
  escrow: te.encode("tongxin-e2ee-v1/escrow"),
  attachment: "tongxin-e2ee-v1/attachment",
  fingerprint: "tongxin-e2ee-v1/fingerprint",
};

// -- errors (docs/e2ee.md §11) --------------------------------------------------

export class E2EEError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}
export class TamperedError extends E2EEError {}
export class ReplayError extends E2EEError {}
export class TooFarAheadError extends E2EEError {}
export class WrongSignatureError extends E2EEError {}
export class NoSessionError extends E2EEError {}
export class NoSenderKeyError extends E2EEError {}
export class MalformedError extends E2EEError {}
export class EscrowError extends E2EEError {}
export class IdentityChangedError extends E2EEError {
  constructor(userId, deviceId, oldKey, newKey) {
    super(`the identity key of ${userId}/${deviceId} changed`);
    Object.assign(this, { userId, deviceId, oldKey, newKey });
  }
}

// -- byte strings (docs/e2ee.md §2; tongxin/e2ee/encoding.py) --------------------

export function u32(n) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0);
  return b;
}

export function lp(value) {
  const data = typeof value === "string" ? te.encode(value) : (value ?? new Uint8Array(0));
  return concatBytes(u32(data.length), data);
}

export function prekeyStatement(suite, userId, deviceId, kind, keyId, publicKey) {
  return concatBytes(lp(L.prekey), lp(suite), lp(userId), lp(deviceId), new Uint8Array([kind]), u32(keyId), lp(publicKey));
}

export function sessionTranscript(suite, aUser, aDevice, aIdentity, bUser, bDevice, bIdentity, spkId, spkCt, opkId, opkCt, ratchetKey) {
  return concatBytes(lp(L.session), lp(suite), lp(aUser), lp(aDevice), lp(aIdentity), lp(bUser), lp(bDevice),
    lp(bIdentity), u32(spkId), lp(spkCt), u32(opkId), lp(opkCt), lp(ratchetKey));
}

export function bodyAad(suite, convId, senderUser, senderDevice, kind) {
  return concatBytes(lp(L.body), lp(suite), lp(convId), lp(senderUser), lp(senderDevice), new Uint8Array([kind]));
}

export function recipientAad(suite, convId, senderUser, senderDevice, recipientUser, recipientDevice, sessionId, header) {
  return concatBytes(lp(L.recipient), lp(suite), lp(convId), lp(senderUser), lp(senderDevice), lp(recipientUser),
    lp(recipientDevice), lp(sessionId), lp(header.ratchetKey), lp(header.kemCiphertext),
    u32(header.previousChainLength), u32(header.counter));
}

export function groupStatement(suite, convId, senderUser, senderDevice, epoch, iteration, nonce, ciphertext) {
  return concatBytes(lp(L.group), lp(suite), lp(convId), lp(senderUser), lp(senderDevice), u32(epoch), u32(iteration),
    lp(nonce), lp(ciphertext));
}

export function attachmentAad(suite) {
  return concatBytes(lp(L.attachment), lp(suite));
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function sameBytes(a, b) {
  return !!a && !!b && a.length === b.length && compareBytes(a, b) === 0;
}

// A copy: decoded protobuf bytes are views into the whole message buffer, which
// structured cloning (IndexedDB) would store in full with every key.
const bytes = (v) => new Uint8Array(v ?? 0);

export async function fingerprint(suite, userId, identityKeys) {
  const sorted = [...identityKeys].sort(compareBytes);
  return suite.hash(concatBytes(lp(L.fingerprint), lp(userId), ...sorted.map((k) => lp(k))));
}

/** 30 digits in six groups of five, the same on both sides (§9). */
export async function safetyNumber(suite, userA, keysA, userB, keysB) {
  const sides = [[userA, keysA], [userB, keysB]].sort((x, y) => compareBytes(te.encode(x[0]), te.encode(y[0])));
  const groups = [];
  for (const [user, keys] of sides) {
    const fp = await fingerprint(suite, user, keys);
    for (let i = 0; i < 3; i++) {
      const n = fp.subarray(i * 5, i * 5 + 5).reduce((acc, b) => acc * 256n + BigInt(b), 0n) % 100000n;
      groups.push(n.toString().padStart(5, "0"));
    }
  }
  return groups.join(" ");
}

export async function escrowKeyId(suite, publicKey) {
  return toHex((await suite.hash(publicKey)).subarray(0, 8));
}

// -- KDFs (§4, §5, §7) -----------------------------------------------------------

export async function kdfRk(suite, rootKey, ss) {
  const okm = await suite.hkdf(ss, 64, { salt: rootKey, info: L.ratchet });
  return [okm.slice(0, 32), okm.slice(32)];
}

export async function kdfCk(suite, chainKey) {
  return [await suite.hmac(chainKey, new Uint8Array([1])), await suite.hmac(chainKey, new Uint8Array([2]))];
}

export async function messageKeyMaterial(suite, mk) {
  const k = suite.aeadKeySize;
  const okm = await suite.hkdf(mk, k + NONCE_SIZE, { info: L.messageKey });
  return [okm.slice(0, k), okm.slice(k)];
}

export async function sessionKeys(suite, ss1, ss2, sessionId) {
  const okm = await suite.hkdf(concatBytes(ss1, ss2), 64, { salt: sessionId, info: L.sessionKeys });
  return [okm.slice(0, 32), okm.slice(32)];
}

/** §7: the content key of one group message from that iteration's message key. */
export async function groupContentKey(suite, mk) {
  return suite.hkdf(mk, suite.aeadKeySize, { info: L.groupKey });
}

/** Run a crypto step; any failure of the primitive becomes `Err`. */
async function guard(Err, message, fn) {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof E2EEError) throw err;
    // CryptoError, and RangeError/TypeError for wrong sizes or types from hostile input:
    // every failure of a step is reported as the E2EE error of that step (§11).
    if (err instanceof CryptoError || err instanceof Error) throw new Err(`${message}: ${err.message}`);
    throw err;
  }
}

function decodeOr(Msg, data, what) {
  try {
    return Msg.decode(bytes(data));
  } catch (err) {
    throw new MalformedError(`${what} does not parse: ${err.message}`);
  }
}

// -- ratchet (§5), state as plain structured-clonable data ----------------------

const skipKey = (ratchetKey, n) => `${toHex(ratchetKey)}:${n}`;

async function ratchetNextSend(suite, r) {
  if (!r.sendChain || r.stepNeeded) {
    if (!r.peerRatchet) throw new MalformedError("session has no peer ratchet key to step to");
    const pair = await suite.generateKemKeypair();
    const encap = await guard(MalformedError, "peer ratchet key", () => suite.kemEncapsulate(r.peerRatchet));
    [r.rootKey, r.sendChain] = await kdfRk(suite, r.rootKey, encap.sharedSecret);
    r.prevN = r.sendN;
    r.sendN = 0;
    r.ownRatchet = pair;
    r.sendKemCt = encap.encapsulatedKey;
    r.stepNeeded = false;
  }
  const [mk, next] = await kdfCk(suite, r.sendChain);
  r.sendChain = next;
  const header = { ratchetKey: r.ownRatchet.publicKey, kemCiphertext: r.sendKemCt, previousChainLength: r.prevN, counter: r.sendN };
  r.sendN += 1;
  return { header, mk };
}

async function skipUntil(suite, r, until) {
  if (!r.recvChain || !r.peerRatchet) return;
  if (until - r.recvN > MAX_SKIP) throw new TooFarAheadError(`message would skip ${until - r.recvN} keys; the bound is ${MAX_SKIP}`);
  while (r.recvN < until) {
    const [mk, next] = await kdfCk(suite, r.recvChain);
    r.recvChain = next;
    r.skipped.set(skipKey(r.peerRatchet, r.recvN), mk);
    r.recvN += 1;
  }
  while (r.skipped.size > MAX_STORED_SKIPPED) r.skipped.delete(r.skipped.keys().next().value);
}

/** Message key for `header`, advancing `r` in place (callers pass a copy). */
async function ratchetReceive(suite, r, header) {
  const ratchetKey = bytes(header.ratchetKey);
  const stored = r.skipped.get(skipKey(ratchetKey, header.counter));
  if (stored) {
    r.skipped.delete(skipKey(ratchetKey, header.counter));
    return stored;
  }
  if (!sameBytes(ratchetKey, r.peerRatchet)) {
    // A finished chain whose key is not stored: used already (docs/e2ee.md "Changes").
    if ((r.finished || []).includes(toHex(ratchetKey))) throw new ReplayError("message key already used (replayed or duplicated message)");
    if (!r.ownRatchet) throw new MalformedError("a new ratchet chain arrived before this side sent a key");
    if (!header.kemCiphertext?.length) throw new MalformedError("a new ratchet chain needs a KEM ciphertext");
    await skipUntil(suite, r, header.previousChainLength);
    const ss = await guard(TamperedError, "ratchet KEM ciphertext does not open",
      () => suite.kemDecapsulate(r.ownRatchet.privateKey, bytes(header.kemCiphertext)));
    [r.rootKey, r.recvChain] = await kdfRk(suite, r.rootKey, ss);
    if (r.peerRatchet) r.finished = [...(r.finished || []), toHex(r.peerRatchet)].slice(-FINISHED_CHAINS_KEPT);
    r.recvN = 0;
    r.peerRatchet = ratchetKey;
    r.stepNeeded = true;
  }
  if (!r.recvChain) throw new MalformedError("session has no receiving chain");
  if (header.counter < r.recvN) throw new ReplayError("message key already used (replayed or duplicated message)");
  await skipUntil(suite, r, header.counter);
  const [mk, next] = await kdfCk(suite, r.recvChain);
  r.recvChain = next;
  r.recvN += 1;
  return mk;
}

function newRatchet(fields) {
  return {
    rootKey: null, sendChain: null, sendN: 0, sendKemCt: new Uint8Array(0), prevN: 0, ownRatchet: null,
    recvChain: null, recvN: 0, peerRatchet: null, stepNeeded: false, skipped: new Map(), finished: [], ...fields,
  };
}

// -- the device ------------------------------------------------------------------

/**
 * One device's E2EE state and operations.
 *
 * transport: { publish(PublishKeys fields) -> KeyStatus, fetch(FetchKeys fields) -> KeyBundles }.
 * escrow: { publicKey, keyId } or null.
 * onIdentityChange(err: IdentityChangedError) is called once per new key seen.
 */
export class E2EEDevice {
  constructor({ suite, store, transport, userId, deviceId, escrow = null, onIdentityChange = () => {}, oneTimePrekeys = OPK_BATCH }) {
    Object.assign(this, { suite, store, transport, userId, deviceId, escrow, onIdentityChange, oneTimePrekeys });
    this.queue = Promise.resolve();
  }

  /** Run `fn` after every earlier operation finished (see the module comment). */
  exclusive(fn) {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  get suiteName() {
    return this.suite.name;
  }

  // ---- §3 keys ---------------------------------------------------------------

  async #signPrekey(kind, keyId, publicKey) {
    const identity = await this.store.get("identity");
    const statement = prekeyStatement(this.suiteName, this.userId, this.deviceId, kind, keyId, publicKey);
    return { keyId, publicKey, signature: await this.suite.sign(identity.privateKey, statement) };
  }

  async #newOneTimePrekeys(n) {
    let next = (await this.store.get("opk-next")) || 1;
    const out = [];
    for (let i = 0; i < n; i++, next++) {
      const pair = await this.suite.generateKemKeypair();
      await this.store.put(`opk:${next}`, pair);
      out.push(await this.#signPrekey(PREKEY_ONE_TIME, next, pair.publicKey));
    }
    await this.store.put("opk-next", next);
    return out;
  }

  async #newSignedPrekey() {
    const spks = (await this.store.get("spks")) || [];
    const id = (spks.at(-1)?.id || 0) + 1;
    const pair = await this.suite.generateKemKeypair();
    spks.push({ id, created: Date.now(), ...pair });
    await this.store.put("spks", spks.slice(-SIGNED_PREKEYS_KEPT));
    return this.#signPrekey(PREKEY_SIGNED, id, pair.publicKey);
  }

  /** Create keys on first use and keep the directory stocked; returns the KeyStatus. */
  setup() {
    return this.exclusive(async () => {
      let identity = await this.store.get("identity");
      if (identity && identity.suite !== this.suiteName) identity = null; // the deployment changed suite
      if (!identity) {
        for (const k of await this.store.keys("")) await this.store.delete(k);
        identity = { suite: this.suiteName, ...(await this.suite.generateSigningKeypair()) };
        await this.store.put("identity", identity);
      }
      let status = await this.transport.publish({});
      if (!sameBytes(bytes(status.identityKey), identity.publicKey) || !status.signedPrekeyId) {
        status = await this.transport.publish({
          suite: this.suiteName, identityKey: identity.publicKey,
          signedPrekey: await this.#newSignedPrekey(), oneTimePrekeys: await this.#newOneTimePrekeys(this.oneTimePrekeys),
        });
      } else {
        const newest = ((await this.store.get("spks")) || []).at(-1);
        const fields = {};
        if (!newest || newest.id !== status.signedPrekeyId || Date.now() - (newest.created || 0) > SIGNED_PREKEY_MAX_AGE_MS) {
          fields.signedPrekey = await this.#newSignedPrekey();
        }
        if (status.oneTimePrekeysRemaining < Math.min(OPK_LOW_WATER, this.oneTimePrekeys)) {
          fields.oneTimePrekeys = await this.#newOneTimePrekeys(this.oneTimePrekeys);
        }
        if (Object.keys(fields).length) status = await this.transport.publish({ suite: this.suiteName, ...fields });
      }
      return status;
    });
  }

  async identityPublicKey() {
    return (await this.store.get("identity")).publicKey;
  }

  // ---- §9 pins -----------------------------------------------------------------

  /**
   * Pin on first use; raise IdentityChangedError for a different key. With
   * `pin: false` an unpinned key is not pinned yet and `true` is returned: a
   * key learnt from a SessionInit is pinned only once its message opened (§9).
   */
  async #checkPin(userId, deviceId, key, { pin = true } = {}) {
    const pinKey = `pin:${userId}:${deviceId}`;
    const pinned = await this.store.get(pinKey);
    if (!pinned) {
      if (!pin) return true;
      await this.store.put(pinKey, key);
      return false;
    }
    if (sameBytes(pinned, key)) return false;
    const err = new IdentityChangedError(userId, deviceId, pinned, key);
    const pendingKey = `pending:${userId}:${deviceId}`;
    const pending = await this.store.get(pendingKey);
    if (!sameBytes(pending, key)) {
      await this.store.put(pendingKey, key);
      try {
        this.onIdentityChange(err);
      } catch (cbErr) {
        console.error("tongxin: identity-change callback failed", cbErr);
      }
    }
    throw err;
  }

  /** The user accepted a changed key: pin it; sessions with the old key are dropped. */
  acceptIdentity(userId, deviceId, key) {
    return this.exclusive(async () => {
      await this.store.put(`pin:${userId}:${deviceId}`, key);
      await this.store.delete(`pending:${userId}:${deviceId}`);
      await this.store.delete(`sess:${userId}:${deviceId}`);
    });
  }

  /** Identity changes not yet accepted: [{userId, deviceId, newKey}]. */
  async pendingIdentityChanges() {
    const out = [];
    for (const k of await this.store.keys("pending:")) {
      const [, userId, ...rest] = k.split(":");
      out.push({ userId, deviceId: rest.join(":"), newKey: await this.store.get(k) });
    }
    return out;
  }

  async pinnedKeys(userId) {
    const out = [];
    for (const k of await this.store.keys(`pin:${userId}:`)) out.push(await this.store.get(k));
    return out;
  }

  // ---- §4 sessions -----------------------------------------------------------------

  async #sessions(userId, deviceId) {
    return (await this.store.get(`sess:${userId}:${deviceId}`)) || { active: null, list: [] };
  }

  async #saveSession(userId, deviceId, session, { makeActive }) {
    const rec = await this.#sessions(userId, deviceId);
    const list = rec.list.filter((s) => !sameBytes(s.sessionId, session.sessionId));
    list.push(session);
    const active = makeActive ? session.sessionId : rec.active;
    // Keep the active session and the newest OLD_SESSIONS_KEPT others.
    const others = list.filter((s) => !sameBytes(s.sessionId, active)).slice(-OLD_SESSIONS_KEPT);
    const kept = [...others, ...list.filter((s) => sameBytes(s.sessionId, active))];
    await this.store.put(`sess:${userId}:${deviceId}`, { active, list: kept });
  }

  async #verifyPrekey(bundle, kind, prekey) {
    const statement = prekeyStatement(this.suiteName, bundle.userId, bundle.deviceId, kind, prekey.keyId, bytes(prekey.publicKey));
    await guard(WrongSignatureError, `prekey ${prekey.keyId} of ${bundle.userId}/${bundle.deviceId} is not signed by its identity key`,
      () => this.suite.verify(bytes(bundle.identityKey), statement, bytes(prekey.signature)));
  }

  async #initiate(bundle) {
    const identity = await this.store.get("identity");
    const ik = bytes(bundle.identityKey);
    if (!bundle.signedPrekey) throw new MalformedError(`${bundle.userId}/${bundle.deviceId} has no signed prekey`);
    await this.#verifyPrekey(bundle, PREKEY_SIGNED, bundle.signedPrekey);
    const opk = bundle.oneTimePrekey && bundle.oneTimePrekey.keyId ? bundle.oneTimePrekey : null;
    if (opk) await this.#verifyPrekey(bundle, PREKEY_ONE_TIME, opk);
    const spkEnc = await guard(MalformedError, "signed prekey is not a KEM key of this suite",
      () => this.suite.kemEncapsulate(bytes(bundle.signedPrekey.publicKey)));
    const opkEnc = opk ? await guard(MalformedError, "one-time prekey is not a KEM key of this suite",
      () => this.suite.kemEncapsulate(bytes(opk.publicKey))) : null;
    const ratchetPair = await this.suite.generateKemKeypair();
    const opkId = opk ? opk.keyId : 0;
    const opkCt = opkEnc ? opkEnc.encapsulatedKey : new Uint8Array(0);
    const transcript = sessionTranscript(this.suiteName, this.userId, this.deviceId, identity.publicKey,
      bundle.userId, bundle.deviceId, ik, bundle.signedPrekey.keyId, spkEnc.encapsulatedKey, opkId, opkCt, ratchetPair.publicKey);
    const sessionId = await this.suite.hash(transcript);
    const [root, chain0] = await sessionKeys(this.suite, spkEnc.sharedSecret, opkEnc ? opkEnc.sharedSecret : new Uint8Array(0), sessionId);
    const init = {
      initiatorIdentityKey: identity.publicKey, signedPrekeyId: bundle.signedPrekey.keyId, oneTimePrekeyId: opkId,
      signedPrekeyCiphertext: spkEnc.encapsulatedKey, oneTimePrekeyCiphertext: opkCt,
      initiatorRatchetKey: ratchetPair.publicKey, signature: await this.suite.sign(identity.privateKey, transcript),
    };
    return {
      sessionId, peerUser: bundle.userId, peerDevice: bundle.deviceId, peerIdentity: ik,
      ratchet: newRatchet({ rootKey: root, sendChain: chain0, ownRatchet: ratchetPair }), init,
    };
  }

  async #respond(peerUser, peerDevice, init, sessionId) {
    const identity = await this.store.get("identity");
    const transcript = sessionTranscript(this.suiteName, peerUser, peerDevice, bytes(init.initiatorIdentityKey),
      this.userId, this.deviceId, identity.publicKey, init.signedPrekeyId, bytes(init.signedPrekeyCiphertext),
      init.oneTimePrekeyId, bytes(init.oneTimePrekeyCiphertext), bytes(init.initiatorRatchetKey));
    await guard(WrongSignatureError, `session setup from ${peerUser}/${peerDevice} is not signed by its identity key`,
      () => this.suite.verify(bytes(init.initiatorIdentityKey), transcript, bytes(init.signature)));
    if (!sameBytes(await this.suite.hash(transcript), sessionId)) throw new TamperedError("session id does not match the session setup");
    const spk = ((await this.store.get("spks")) || []).find((s) => s.id === init.signedPrekeyId);
    if (!spk) throw new NoSessionError(`signed prekey ${init.signedPrekeyId} is unknown or retired on this device`);
    let opk = null;
    if (init.oneTimePrekeyId) {
      opk = await this.store.get(`opk:${init.oneTimePrekeyId}`);
      if (!opk) throw new ReplayError(`one-time prekey ${init.oneTimePrekeyId} was already used`);
    } else if (init.oneTimePrekeyCiphertext?.length) {
      throw new MalformedError("one-time prekey ciphertext without a key id");
    }
    const ss1 = await guard(TamperedError, "session setup KEM ciphertext does not open",
      () => this.suite.kemDecapsulate(spk.privateKey, bytes(init.signedPrekeyCiphertext)));
    const ss2 = opk ? await guard(TamperedError, "session setup KEM ciphertext does not open",
      () => this.suite.kemDecapsulate(opk.privateKey, bytes(init.oneTimePrekeyCiphertext))) : new Uint8Array(0);
    const [root, chain0] = await sessionKeys(this.suite, ss1, ss2, sessionId);
    return {
      session: {
        sessionId, peerUser, peerDevice, peerIdentity: bytes(init.initiatorIdentityKey),
        ratchet: newRatchet({ rootKey: root, recvChain: chain0, peerRatchet: bytes(init.initiatorRatchetKey) }), init: null,
      },
      usedOpk: opk ? init.oneTimePrekeyId : 0,
    };
  }

  // ---- fan-out -------------------------------------------------------------------------

  /**
   * Devices to wrap to: every device of `userIds` (own user included: our other
   * devices) with an accepted pin, each with a usable session (new ones set up
   * from fetched bundles). Devices whose identity changed are left out and
   * reported through onIdentityChange.
   */
  async #recipientSessions(userIds) {
    const users = [...new Set([...userIds, this.userId])];
    const listing = await this.transport.fetch({ userIds: users, withoutOneTimePrekeys: true });
    const out = [];
    out.listedUsers = new Set((listing.devices || []).map((b) => b.userId));
    const needNew = new Set();
    for (const b of listing.devices || []) {
      if (b.userId === this.userId && b.deviceId === this.deviceId) continue;
      try {
        await this.#checkPin(b.userId, b.deviceId, bytes(b.identityKey));
      } catch (err) {
        if (err instanceof IdentityChangedError) continue;
        throw err;
      }
      const rec = await this.#sessions(b.userId, b.deviceId);
      const active = rec.list.find((s) => sameBytes(s.sessionId, rec.active));
      if (active && sameBytes(active.peerIdentity, bytes(b.identityKey))) out.push(active);
      else needNew.add(b.userId);
    }
    if (needNew.size) {
      const fresh = await this.transport.fetch({ userIds: [...needNew] });
      for (const b of fresh.devices || []) {
        if (b.userId === this.userId && b.deviceId === this.deviceId) continue;
        if (out.some((s) => s.peerUser === b.userId && s.peerDevice === b.deviceId)) continue;
        const pinned = await this.store.get(`pin:${b.userId}:${b.deviceId}`);
        if (!sameBytes(pinned, bytes(b.identityKey))) continue;
        try {
          const session = await this.#initiate(b);
          await this.#saveSession(b.userId, b.deviceId, session, { makeActive: true });
          out.push(session);
        } catch (err) {
          if (!(err instanceof E2EEError)) throw err;
          console.warn(`tongxin: no session with ${b.userId}/${b.deviceId}:`, err.message);
        }
      }
    }
    return out;
  }

  async #escrowWrap(contentKey, aad) {
    if (!this.escrow) return null;
    const { sharedSecret, encapsulatedKey } = await guard(EscrowError, "escrow key is not a KEM key of this suite",
      () => this.suite.kemEncapsulate(this.escrow.publicKey));
    const k = this.suite.aeadKeySize;
    const okm = await this.suite.hkdf(sharedSecret, k + NONCE_SIZE, { info: L.escrow });
    const wrapped = await this.suite.aeadEncrypt(okm.slice(0, k), okm.slice(k), contentKey, concatBytes(aad, lp(this.escrow.keyId)));
    return { keyId: this.escrow.keyId, kemCiphertext: encapsulatedKey, wrappedKey: wrapped };
  }

  async #sealBody(convId, kind, payload, contentKey) {
    const aad = bodyAad(this.suiteName, convId, this.userId, this.deviceId, kind);
    const nonce = randomBytes(NONCE_SIZE);
    const plain = e2eePb.Payload.encode(e2eePb.Payload.create({ sentAtMs: Date.now(), ...payload })).finish();
    const ciphertext = await this.suite.aeadEncrypt(contentKey, nonce, plain, aad);
    return { nonce, ciphertext, escrow: await this.#escrowWrap(contentKey, aad) };
  }

  async #sealPairwise(convId, payload, userIds, { onlyDevices = null } = {}) {
    let sessions = await this.#recipientSessions(userIds);
    const listedUsers = sessions.listedUsers;
    if (onlyDevices) sessions = sessions.filter((s) => onlyDevices.has(`${s.peerUser}:${s.peerDevice}`));
    const contentKey = randomBytes(this.suite.aeadKeySize);
    const body = await this.#sealBody(convId, KIND_PAIRWISE, payload, contentKey);
    const digest = await this.suite.hash(concatBytes(lp(body.nonce), lp(body.ciphertext)));
    const recipients = [];
    for (const s of sessions) {
      const { header, mk } = await ratchetNextSend(this.suite, s.ratchet);
      const [key, nonce] = await messageKeyMaterial(this.suite, mk);
      const aad = recipientAad(this.suiteName, convId, this.userId, this.deviceId, s.peerUser, s.peerDevice, s.sessionId, header);
      const kp = e2eePb.KeyPayload.encode({ contentKey, bodyDigest: digest }).finish();
      recipients.push({
        userId: s.peerUser, deviceId: s.peerDevice, sessionId: s.sessionId, init: s.init || undefined, header,
        ciphertext: await this.suite.aeadEncrypt(key, nonce, kp, aad),
      });
      await this.#saveSession(s.peerUser, s.peerDevice, s, { makeActive: false });
    }
    const envelope = {
      version: VERSION, suite: this.suiteName, senderDevice: this.deviceId, kind: KIND_PAIRWISE,
      nonce: body.nonce, ciphertext: body.ciphertext, recipients, escrow: body.escrow || undefined,
    };
    return {
      envelope: e2eePb.Envelope.encode(e2eePb.Envelope.create(envelope)).finish(),
      recipients: recipients.length, users: new Set(recipients.map((r) => r.userId)), listedUsers,
    };
  }

  /**
   * Seal `payload` (e2ee.v1.Payload fields) for a 1:1 conversation with `peerIds`.
   * Returns { envelope: bytes, recipients: number of devices wrapped to, users: Set of their
   * user ids, listedUsers: Set of the users with any device in the directory }.
   */
  sealPairwise(convId, payload, peerIds) {
    return this.exclusive(() => this.#sealPairwise(convId, payload, peerIds));
  }

  /** Membership of `convId` changed (a SYSTEM entry at `seq`): rotate before the next send (§7). */
  noteMembershipChange(convId, seq, removedUserIds = []) {
    return this.exclusive(async () => {
      const own = await this.store.get(`sk-own:${convId}`);
      if (own && seq > own.sinceSeq) {
        own.rotate = true;
        await this.store.put(`sk-own:${convId}`, own);
      }
      for (const uid of removedUserIds) {
        for (const k of await this.store.keys(`sk-peer:${convId}:${uid}:`)) await this.store.delete(k);
      }
    });
  }

  /**
   * Seal a GROUP message. `send(envelopeBytes)` is called first for each sender-key
   * distribution that has to go out (a PAIRWISE control message in the same
   * conversation), and must resolve once the server accepted it.
   * Returns the GROUP envelope bytes.
   */
  sealGroup(convId, payload, memberIds, lastSeq, send) {
    return this.exclusive(async () => {
      let own = await this.store.get(`sk-own:${convId}`);
      // A member list other than the one this epoch went to also starts a new epoch: it
      // closes the race of sending before the SYSTEM entry of a removal was seen.
      const members = [...new Set(memberIds)].sort().join("\n");
      if (!own || own.rotate || own.members !== members) {
        own = {
          epoch: (own?.epoch || 0) + 1, iteration: 0, chainKey: randomBytes(32),
          signing: await this.suite.generateSigningKeypair(), sinceSeq: lastSeq, rotate: false, distributed: [], members,
        };
        await this.store.put(`sk-own:${convId}`, own);
      }
      // Distribute to every current member device that does not have this epoch yet
      // (all of them after a rotation; a member's new device otherwise).
      const listing = await this.transport.fetch({ userIds: [...new Set([...memberIds, this.userId])], withoutOneTimePrekeys: true });
      const missing = new Set();
      for (const b of listing.devices || []) {
        const id = `${b.userId}:${b.deviceId}`;
        if (b.userId === this.userId && b.deviceId === this.deviceId) continue;
        if (!own.distributed.includes(id)) missing.add(id);
      }
      if (missing.size) {
        const dist = {
          senderKey: {
            conversationId: convId, epoch: own.epoch, iteration: own.iteration, chainKey: own.chainKey,
            signingKey: own.signing.publicKey,
          },
        };
        const { envelope } = await this.#sealPairwise(convId, dist, memberIds, { onlyDevices: missing });
        await send(envelope);
        own.distributed.push(...missing);
        await this.store.put(`sk-own:${convId}`, own);
      }
      const [mk, next] = await kdfCk(this.suite, own.chainKey);
      const iteration = own.iteration;
      own.chainKey = next;
      own.iteration += 1;
      // Committed before sending: a key is never used twice, even if the send fails.
      await this.store.put(`sk-own:${convId}`, own);
      const contentKey = await groupContentKey(this.suite, mk);
      const body = await this.#sealBody(convId, KIND_GROUP, payload, contentKey);
      const statement = groupStatement(this.suiteName, convId, this.userId, this.deviceId, own.epoch, iteration, body.nonce, body.ciphertext);
      const envelope = {
        version: VERSION, suite: this.suiteName, senderDevice: this.deviceId, kind: KIND_GROUP,
        nonce: body.nonce, ciphertext: body.ciphertext,
        senderKey: { epoch: own.epoch, iteration, signature: await this.suite.sign(own.signing.privateKey, statement) },
        escrow: body.escrow || undefined,
      };
      return e2eePb.Envelope.encode(e2eePb.Envelope.create(envelope)).finish();
    });
  }

  // ---- opening ---------------------------------------------------------------------------

  async #openBody(env, convId, senderUser, contentKey) {
    const aad = bodyAad(this.suiteName, convId, senderUser, env.senderDevice, env.kind);
    const plain = await guard(TamperedError, "message body does not open",
      () => this.suite.aeadDecrypt(contentKey, bytes(env.nonce), bytes(env.ciphertext), aad));
    return decodeOr(e2eePb.Payload, plain, "payload");
  }

  async #openPairwise(env, m) {
    const mine = (env.recipients || []).find((r) => r.userId === this.userId && r.deviceId === this.deviceId);
    if (!mine) throw new NoSessionError("this device is not among the recipients (sent before it existed?)");
    if (!mine.header) throw new MalformedError("recipient key without a ratchet header");
    const sender = m.senderId;
    const senderDevice = env.senderDevice;
    const sessionId = bytes(mine.sessionId);
    const rec = await this.#sessions(sender, senderDevice);
    let session = rec.list.find((s) => sameBytes(s.sessionId, sessionId));
    let fresh = false;
    let usedOpk = 0;
    let pinAfter = false;
    if (!session) {
      if (!mine.init) throw new NoSessionError(`no session ${toHex(sessionId).slice(0, 12)} with ${sender}/${senderDevice}`);
      pinAfter = await this.#checkPin(sender, senderDevice, bytes(mine.init.initiatorIdentityKey), { pin: false });
      ({ session, usedOpk } = await this.#respond(sender, senderDevice, mine.init, sessionId));
      fresh = true;
    } else {
      const pinned = await this.store.get(`pin:${sender}:${senderDevice}`);
      if (pinned && !sameBytes(pinned, session.peerIdentity)) {
        throw new IdentityChangedError(sender, senderDevice, pinned, session.peerIdentity);
      }
    }
    const work = structuredClone(session);
    const mk = await ratchetReceive(this.suite, work.ratchet, mine.header);
    const [key, nonce] = await messageKeyMaterial(this.suite, mk);
    const aad = recipientAad(this.suiteName, m.conversationId, sender, senderDevice, this.userId, this.deviceId, sessionId, {
      ratchetKey: bytes(mine.header.ratchetKey), kemCiphertext: bytes(mine.header.kemCiphertext),
      previousChainLength: mine.header.previousChainLength, counter: mine.header.counter,
    });
    const kpBytes = await guard(TamperedError, "recipient key does not open", () => this.suite.aeadDecrypt(key, nonce, bytes(mine.ciphertext), aad));
    const kp = decodeOr(e2eePb.KeyPayload, kpBytes, "key payload");
    const digest = await this.suite.hash(concatBytes(lp(bytes(env.nonce)), lp(bytes(env.ciphertext))));
    if (!sameBytes(digest, bytes(kp.bodyDigest))) throw new TamperedError("body digest does not match the recipient key");
    const payload = await this.#openBody(env, m.conversationId, sender, bytes(kp.contentKey));
    // Everything opened: commit.
    if (pinAfter) await this.store.put(`pin:${sender}:${senderDevice}`, session.peerIdentity);
    work.init = null; // confirmed (an initiator stops sending the init)
    await this.#saveSession(sender, senderDevice, work, { makeActive: fresh });
    if (usedOpk) await this.store.delete(`opk:${usedOpk}`);
    if (payload.senderKey) {
      const d = payload.senderKey;
      if (d.conversationId !== m.conversationId) throw new MalformedError("sender key for another conversation");
      await this.store.put(`sk-peer:${m.conversationId}:${sender}:${senderDevice}:${d.epoch}`, {
        chainKey: bytes(d.chainKey), iteration: d.iteration, signingKey: bytes(d.signingKey), skipped: new Map(),
      });
    }
    return payload;
  }

  async #openGroup(env, m) {
    const sk = env.senderKey;
    if (!sk) throw new MalformedError("group envelope without a sender-key header");
    const key = `sk-peer:${m.conversationId}:${m.senderId}:${env.senderDevice}:${sk.epoch}`;
    const state = await this.store.get(key);
    if (!state) throw new NoSenderKeyError(`no sender key epoch ${sk.epoch} of ${m.senderId}/${env.senderDevice}`);
    const statement = groupStatement(this.suiteName, m.conversationId, m.senderId, env.senderDevice, sk.epoch, sk.iteration,
      bytes(env.nonce), bytes(env.ciphertext));
    await guard(WrongSignatureError, "group message signature does not verify",
      () => this.suite.verify(state.signingKey, statement, bytes(sk.signature)));
    const work = structuredClone(state);
    let mk = work.skipped.get(sk.iteration);
    if (mk) {
      work.skipped.delete(sk.iteration);
    } else {
      if (sk.iteration < work.iteration) throw new ReplayError("group iteration already used");
      if (sk.iteration - work.iteration > MAX_SKIP) throw new TooFarAheadError("group message skips too many iterations");
      while (work.iteration < sk.iteration) {
        const [skipped, next] = await kdfCk(this.suite, work.chainKey);
        work.skipped.set(work.iteration, skipped);
        work.chainKey = next;
        work.iteration += 1;
      }
      while (work.skipped.size > MAX_STORED_SKIPPED) work.skipped.delete(work.skipped.keys().next().value);
      const [cur, next] = await kdfCk(this.suite, work.chainKey);
      mk = cur;
      work.chainKey = next;
      work.iteration += 1;
    }
    const contentKey = await groupContentKey(this.suite, mk);
    const payload = await this.#openBody(env, m.conversationId, m.senderId, contentKey);
    await this.store.put(key, work);
    return payload;
  }

  /**
   * Open the envelope of a Message (`content.encrypted`). Returns the
   * e2ee.v1.Payload; throws an E2EEError (never anything else) on failure.
   */
  open(m) {
    return this.exclusive(async () => {
      try {
        const env = decodeOr(e2eePb.Envelope, m.content.encrypted, "envelope");
        if (env.version !== VERSION) throw new MalformedError(`envelope version ${env.version} is not supported`);
        if (env.suite !== this.suiteName) throw new MalformedError(`envelope suite ${env.suite} is not this deployment's`);
        if (env.senderDevice !== m.senderDevice) throw new MalformedError("envelope sender device does not match the message");
        if (env.kind === KIND_PAIRWISE) return await this.#openPairwise(env, m);
        if (env.kind === KIND_GROUP) return await this.#openGroup(env, m);
        throw new MalformedError(`envelope kind ${env.kind} is not known`);
      } catch (err) {
        if (err instanceof E2EEError) throw err;
        throw new MalformedError(`could not open: ${err.message || err}`);
      }
    });
  }

  // ---- §8 attachments ------------------------------------------------------------------

  async encryptAttachment(data) {
    const key = randomBytes(this.suite.aeadKeySize);
    const nonce = randomBytes(NONCE_SIZE);
    const blob = await this.suite.aeadEncrypt(key, nonce, data, attachmentAad(this.suiteName));
    return { blob, key, nonce, digest: await this.suite.hash(blob) };
  }

  async decryptAttachment(att, blob) {
    if (!sameBytes(await this.suite.hash(blob), bytes(att.digest))) throw new TamperedError("attachment digest does not match");
    return guard(TamperedError, "attachment does not open",
      () => this.suite.aeadDecrypt(bytes(att.key), bytes(att.nonce), blob, attachmentAad(this.suiteName)));
  }
}
