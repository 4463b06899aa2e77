// Cross-signing (docs/e2ee.md §9.1), the web client's half: a user key signs
// each device; only signed devices of a user with a user key are used; the
// user key's private half travels between devices in a backup sealed under a
// passphrase (scrypt, then the suite's AEAD). Byte for byte the same as the
// Python SDK (tongxin/e2ee/cross_signing.py): a backup made by one opens in
// the other.
import { scryptAsync } from "@noble/hashes/scrypt.js";

import { E2EEError, IdentityChangedError, MalformedError, TamperedError, lp } from "./protocol.js";
import { concatBytes, randomBytes } from "./suite.js";

const L_DEVICE = "tongxin-e2ee-v1/device";
const L_BACKUP = "tongxin-e2ee-v1/user-key-backup";
const BACKUP_FORMAT = "tongxin-user-key-backup-v1";
const SCRYPT_N = 2 ** 15;
const SCRYPT_R = 8;
const SCRYPT_P = 1;
export const MIN_PASSPHRASE = 10;
const PROBE = new TextEncoder().encode("tongxin-e2ee-v1/user-key-probe");

export class UserKeyChangedError extends IdentityChangedError {
  constructor(userId, oldKey, newKey) {
    super(userId, "", oldKey, newKey);
    this.message = `the user key of ${userId} ${newKey.length ? "changed" : "is no longer listed"}; verify the safety number and accept it before exchanging messages with them`;
  }
}
export class UnsignedDeviceError extends E2EEError {
  constructor(userId, deviceId) {
    super(`${userId}/${deviceId} is not signed by ${userId}'s user key; its messages are refused`);
    this.userId = userId;
    this.deviceId = deviceId;
  }
}
export class DeviceNotSignedError extends E2EEError {}

const bytes = (v) => new Uint8Array(v ?? 0);
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const b64 = (u8) => btoa(String.fromCharCode(...u8));
const unb64 = (s) => {
  if (typeof s !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw new Error("not base64");
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
};

export function deviceStatement(suiteName, userId, deviceId, identityKey) {
  return concatBytes(lp(L_DEVICE), lp(suiteName), lp(userId), lp(deviceId), lp(identityKey));
}

export function signDevice(suite, userPrivate, userId, deviceId, identityKey) {
  return suite.sign(userPrivate, deviceStatement(suite.name, userId, deviceId, identityKey));
}

export async function deviceIsSigned(suite, userKey, userId, deviceId, identityKey, signature) {
  if (!userKey?.length || !signature?.length) return false;
  try {
    await suite.verify(userKey, deviceStatement(suite.name, userId, deviceId, identityKey), signature);
    return true;
  } catch {
    return false;
  }
}

const backupAad = (suiteName, userId, publicKey) => concatBytes(lp(L_BACKUP), lp(suiteName), lp(userId), lp(publicKey));

export async function sealBackup(suite, userId, key, passphrase, { n = SCRYPT_N } = {}) {
  if ((passphrase || "").length < MIN_PASSPHRASE) throw new E2EEError(`the key backup passphrase needs at least ${MIN_PASSPHRASE} characters`);
  const salt = randomBytes(16);
  const nonce = randomBytes(12);
  const aeadKey = await scryptAsync(passphrase, salt, { N: n, r: SCRYPT_R, p: SCRYPT_P, dkLen: suite.aeadKeySize ?? 32 });
  const sealed = await suite.aeadEncrypt(aeadKey, nonce, key.privateKey, backupAad(suite.name, userId, key.publicKey));
  const doc = { format: BACKUP_FORMAT, suite: suite.name, kdf: "scrypt", n, r: SCRYPT_R, p: SCRYPT_P, salt: b64(salt), nonce: b64(nonce), sealed: b64(sealed) };
  return new TextEncoder().encode(JSON.stringify(doc));
}

export async function openBackup(suite, userId, publicKey, backup, passphrase) {
  let doc;
  let salt;
  let nonce;
  let sealed;
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes(backup)));
    if (doc.format !== BACKUP_FORMAT || doc.kdf !== "scrypt") throw new Error(`unknown backup format ${doc.format}`);
    if (doc.suite !== suite.name) throw new Error(`the backup is for suite ${doc.suite}`);
    const { n, r, p } = doc;
    if (!(Number.isInteger(n) && n >= 2 ** 14 && n <= 2 ** 20 && (n & (n - 1)) === 0 && r >= 1 && r <= 32 && p >= 1 && p <= 4)) {
      throw new Error("scrypt parameters out of range");
    }
    [salt, nonce, sealed] = [doc.salt, doc.nonce, doc.sealed].map(unb64);
  } catch (err) {
    throw new MalformedError(`the key backup is malformed: ${err.message || err}`);
  }
  const aeadKey = await scryptAsync(passphrase, salt, { N: doc.n, r: doc.r, p: doc.p, dkLen: suite.aeadKeySize ?? 32 });
  let privateKey;
  try {
    privateKey = await suite.aeadDecrypt(aeadKey, nonce, sealed, backupAad(suite.name, userId, publicKey));
  } catch {
    throw new TamperedError("the key backup does not open: wrong passphrase, or not this user's backup");
  }
  try {
    await suite.verify(publicKey, PROBE, await suite.sign(privateKey, PROBE));
  } catch {
    throw new TamperedError("the key backup holds another key than the user key");
  }
  return { publicKey: bytes(publicKey), privateKey: bytes(privateKey) };
}

/**
 * Judge a KEYS_BUNDLES listing for `users` against the pinned user keys in
 * `store`: returns the listed devices to use, reports changes through
 * `report({userId, deviceId, change})` ("added", "unsigned", "unverified",
 * "removed"), records accepted devices under `dev:<user>:<device>`. Throws
 * UserKeyChangedError when a user's listed key is not the pinned one.
 */
export async function judgeListing(suite, store, listing, users, report) {
  const keys = new Map((listing.userKeys || []).map((u) => [u.userId, bytes(u.userKey)]));
  for (const user of users) {
    const pinned = await store.get(`ukpin:${user}`);
    const listed = keys.get(user) ?? new Uint8Array(0);
    if (pinned && !same(bytes(pinned), listed)) throw new UserKeyChangedError(user, bytes(pinned), listed);
  }
  const byUser = new Map(users.map((u) => [u, []]));
  for (const b of listing.devices || []) {
    if (!byUser.has(b.userId)) byUser.set(b.userId, []);
    byUser.get(b.userId).push(b);
  }
  const use = [];
  for (const [user, bundles] of byUser) {
    const userKey = keys.get(user);
    if (userKey?.length && !(await store.get(`ukpin:${user}`))) await store.put(`ukpin:${user}`, userKey);
    const before = (await store.get(`devs:${user}`)) || {};
    const now = {};
    for (const b of bundles) {
      const ik = bytes(b.identityKey);
      if (userKey?.length && !(await deviceIsSigned(suite, userKey, user, b.deviceId, ik, bytes(b.deviceSignature)))) {
        const seen = await store.get(`unsigned:${user}:${b.deviceId}`);
        if (!seen || !same(bytes(seen), ik)) {
          await store.put(`unsigned:${user}:${b.deviceId}`, ik);
          report({ userId: user, deviceId: b.deviceId, change: "unsigned" });
        }
        continue;
      }
      now[b.deviceId] = ik;
      use.push(b);
      if (!before[b.deviceId] || !same(bytes(before[b.deviceId]), ik)) {
        report({ userId: user, deviceId: b.deviceId, change: userKey?.length ? "added" : "unverified" });
      }
    }
    for (const d of Object.keys(before)) if (!now[d]) report({ userId: user, deviceId: d, change: "removed" });
    await store.put(`devs:${user}`, now);
  }
  return use;
}

/** Is (user, device) with this identity key among the accepted devices? */
export async function accepted(store, userId, deviceId) {
  const devs = (await store.get(`devs:${userId}`)) || {};
  return devs[deviceId] ? bytes(devs[deviceId]) : null;
}
