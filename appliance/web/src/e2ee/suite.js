// Crypto suites for end-to-end encryption in the browser, mirroring
// tongxin/crypto/suite.py: same interface (async here, because WebCrypto is),
// same key containers, signature and ciphertext encodings, so keys, signatures,
// KEM encapsulations and AEAD ciphertexts cross between the Python SDK and the
// web client unchanged (checked by tests/unit/test_web_crypto_interop.py).
//
// * international: WebCrypto only. Ed25519, DHKEM(X25519, HKDF-SHA256) exactly
//   as RFC 9180 section 4.1 (and crypto/kem.py) builds it, SHA-256,
//   HMAC-SHA256, HKDF-SHA256, AES-256-GCM. Keys: PKCS#8 / SPKI DER.
// * gm: sm-crypto-v2 (a kept npm library on @noble/curves): SM2 signatures
//   with the default signer ID over SM3(Z_A || M), DER-encoded; SM2-encryption
//   KEM of a random 32-byte secret, ciphertext DER in C1C3C2 order (the form
//   OpenSSL writes); SM3, HMAC-SM3, HKDF-SM3, SM4-GCM (16-byte key, 12-byte
//   nonce, 16-byte tag).
//
// Every failure of authenticity raises a CryptoError subclass; nothing returns
// a false value to be forgotten.
import { hkdf as sm3Hkdf, sm2, sm3, sm4 } from "sm-crypto-v2";

export class CryptoError extends Error {
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}
export class DecryptionError extends CryptoError {}
export class InvalidSignatureError extends CryptoError {}
export class InvalidMacError extends CryptoError {}
export class KeyFormatError extends CryptoError {}

const subtle = globalThis.crypto.subtle;

/** Fresh random bytes from the platform CSPRNG. */
export function randomBytes(n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

function u8(data, what = "data") {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError(`${what} must be bytes (Uint8Array), got ${typeof data}`);
}

export function concatBytes(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(hex) {
  if (typeof hex !== "string" || hex.length % 2 || /[^0-9a-fA-F]/.test(hex)) {
    throw new TypeError("not a hex string");
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Compare two tags without an early exit on the first differing byte. */
function equalTags(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function checkLength(what, value, size) {
  if (value.length !== size) throw new RangeError(`${what} must be ${size} bytes, got ${value.length}`);
}

const te = new TextEncoder();

// -- international -----------------------------------------------------------

// RFC 9180 section 7.1: KEM id 0x0020 is DHKEM(X25519, HKDF-SHA256).
const DHKEM_SUITE_ID = concatBytes(te.encode("KEM"), new Uint8Array([0x00, 0x20]));
const HPKE_V1 = te.encode("HPKE-v1");
const KEM_SHARED_SECRET_SIZE = 32;

async function hkdfSha256(ikm, length, salt, info) {
  if (!(length > 0)) throw new RangeError("HKDF output length must be positive");
  const key = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  // An absent salt is HashLen zero bytes (RFC 5869); an empty salt is the same
  // HMAC key after padding, and WebCrypto requires the parameter.
  const bits = await subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: salt ?? new Uint8Array(0), info: info ?? new Uint8Array(0) },
    key,
    length * 8,
  );
  return new Uint8Array(bits);
}

/**
 * ExtractAndExpand of RFC 9180 section 4.1. LabeledExtract(salt="") followed by
 * LabeledExpand is exactly HKDF(salt="", labeled_ikm, labeled_info, L), so the
 * whole step is one WebCrypto HKDF call.
 */
async function dhkemExtractAndExpand(dh, kemContext) {
  const labeledIkm = concatBytes(HPKE_V1, DHKEM_SUITE_ID, te.encode("eae_prk"), dh);
  const lengthPrefix = new Uint8Array([0, KEM_SHARED_SECRET_SIZE]);
  const labeledInfo = concatBytes(lengthPrefix, HPKE_V1, DHKEM_SUITE_ID, te.encode("shared_secret"), kemContext);
  return hkdfSha256(labeledIkm, KEM_SHARED_SECRET_SIZE, new Uint8Array(0), labeledInfo);
}

async function importOkp(format, der, name, usages) {
  try {
    return await subtle.importKey(format, u8(der, "key"), { name }, true, usages);
  } catch (exc) {
    if (exc instanceof TypeError) throw exc;
    const kind = format === "pkcs8" ? "PKCS#8 private" : "SubjectPublicKeyInfo public";
    throw new KeyFormatError(`not a ${kind} ${name} key of the international suite`);
  }
}

async function exportPair(pair) {
  return {
    privateKey: new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey)),
    publicKey: new Uint8Array(await subtle.exportKey("spki", pair.publicKey)),
  };
}

function b64urlToBytes(s) {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

async function ephemeralPair(der) {
  const privateKey = await importOkp("pkcs8", der, "X25519", ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", privateKey);
  const publicKey = await subtle.importKey("jwk", { kty: "OKP", crv: "X25519", x: jwk.x }, { name: "X25519" }, true, []);
  return { privateKey, publicKey };
}

export class InternationalSuite {
  get name() { return "international"; }
  get hashSize() { return 32; }
  get aeadKeySize() { return 32; }
  get aeadNonceSize() { return 12; }
  get aeadTagSize() { return 16; }

  async hash(data) {
    return new Uint8Array(await subtle.digest("SHA-256", u8(data)));
  }

  async #hmacKey(key, usage) {
    return subtle.importKey("raw", u8(key, "key"), { name: "HMAC", hash: "SHA-256" }, false, [usage]);
  }

  async hmac(key, data) {
    return new Uint8Array(await subtle.sign("HMAC", await this.#hmacKey(key, "sign"), u8(data)));
  }

  async hmacVerify(key, data, tag) {
    // WebCrypto's verify compares in constant time.
    if (!(await subtle.verify("HMAC", await this.#hmacKey(key, "verify"), u8(tag, "tag"), u8(data)))) {
      throw new InvalidMacError("HMAC tag does not match");
    }
  }

  async hkdf(ikm, length, { salt = null, info = new Uint8Array(0) } = {}) {
    return hkdfSha256(u8(ikm, "ikm"), length, salt === null ? null : u8(salt, "salt"), u8(info, "info"));
  }

  async #aesKey(key, nonce, usage) {
    checkLength("AES-256-GCM key", u8(key, "key"), 32);
    checkLength("AES-256-GCM nonce", u8(nonce, "nonce"), 12);
    return subtle.importKey("raw", key, "AES-GCM", false, [usage]);
  }

  /** Return ciphertext || 16-byte tag. */
  async aeadEncrypt(key, nonce, plaintext, aad = new Uint8Array(0)) {
    const k = await this.#aesKey(key, nonce, "encrypt");
    const ct = await subtle.encrypt({ name: "AES-GCM", iv: nonce, additionalData: u8(aad, "aad"), tagLength: 128 }, k, u8(plaintext));
    return new Uint8Array(ct);
  }

  async aeadDecrypt(key, nonce, ciphertext, aad = new Uint8Array(0)) {
    const k = await this.#aesKey(key, nonce, "decrypt");
    try {
      const pt = await subtle.decrypt({ name: "AES-GCM", iv: nonce, additionalData: u8(aad, "aad"), tagLength: 128 }, k, u8(ciphertext));
      return new Uint8Array(pt);
    } catch {
      throw new DecryptionError("AES-256-GCM authentication failed");
    }
  }

  async generateSigningKeypair() {
    return exportPair(await subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]));
  }

  async sign(privateKey, message) {
    const key = await importOkp("pkcs8", privateKey, "Ed25519", ["sign"]);
    return new Uint8Array(await subtle.sign("Ed25519", key, u8(message, "message")));
  }

  async verify(publicKey, message, signature) {
    const key = await importOkp("spki", publicKey, "Ed25519", ["verify"]);
    let ok = false;
    try {
      ok = await subtle.verify("Ed25519", key, u8(signature, "signature"), u8(message, "message"));
    } catch {
      ok = false;
    }
    if (!ok) throw new InvalidSignatureError("Ed25519 signature verification failed");
  }

  async generateKemKeypair() {
    return exportPair(await subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]));
  }

  /** RFC 9180 Encap(pkR); `ephemeralPrivateKey` (PKCS#8) exists only for known-answer tests. */
  async kemEncapsulate(publicKey, { ephemeralPrivateKey = null } = {}) {
    const recipient = await importOkp("spki", publicKey, "X25519", []);
    const eph = ephemeralPrivateKey === null
      ? await subtle.generateKey({ name: "X25519" }, true, ["deriveBits"])
      : await ephemeralPair(ephemeralPrivateKey);
    let dh;
    try {
      dh = new Uint8Array(await subtle.deriveBits({ name: "X25519", public: recipient }, eph.privateKey, 256));
    } catch {
      // WebCrypto refuses an all-zero result, i.e. a small-order recipient key.
      throw new KeyFormatError("X25519 recipient key is of small order");
    }
    const enc = new Uint8Array(await subtle.exportKey("raw", eph.publicKey));
    const pkR = new Uint8Array(await subtle.exportKey("raw", recipient));
    return { sharedSecret: await dhkemExtractAndExpand(dh, concatBytes(enc, pkR)), encapsulatedKey: enc };
  }

  async kemDecapsulate(privateKey, encapsulatedKey) {
    const sk = await importOkp("pkcs8", privateKey, "X25519", ["deriveBits"]);
    const enc = u8(encapsulatedKey, "encapsulated key");
    if (enc.length !== 32) throw new DecryptionError("X25519 encapsulated key must be 32 bytes");
    let dh;
    try {
      const pkE = await subtle.importKey("raw", enc, { name: "X25519" }, true, []);
      dh = new Uint8Array(await subtle.deriveBits({ name: "X25519", public: pkE }, sk, 256));
    } catch {
      throw new DecryptionError("X25519 decapsulation failed");
    }
    // The JWK form of a private OKP key carries its public half (x), which the
    // KEM context needs; PKCS#8 from WebCrypto does not.
    const jwk = await subtle.exportKey("jwk", sk);
    const pkR = b64urlToBytes(jwk.x);
    return dhkemExtractAndExpand(dh, concatBytes(enc, pkR));
  }
}

// -- GM ----------------------------------------------------------------------

const SM2_SIGNER_ID = "1234567812345678";
const SM2_N = BigInt("0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123");
// The exact DER that tongxin.crypto.sm2 (and `openssl genpkey -algorithm SM2`)
// writes: id-ecPublicKey with the SM2 curve OID, an uncompressed point, and in
// PKCS#8 an ECPrivateKey v1 with a 32-byte scalar and the public key in [1].
// Keys are matched against these fixed layouts byte for byte instead of being
// parsed, so anything else (another curve, another suite's key, a BER variant)
// is rejected rather than misread.
const SM2_SPKI_PREFIX = fromHex("3059301306072a8648ce3d020106082a811ccf5501822d034200");
const SM2_PKCS8_PREFIX = fromHex("308187020100301306072a8648ce3d020106082a811ccf5501822d046d306b0201010420");
const SM2_PKCS8_MIDDLE = fromHex("a144034200");

function startsWith(data, prefix, at = 0) {
  if (data.length < at + prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (data[at + i] !== prefix[i]) return false;
  return true;
}

function sm2PointHex(point) {
  const hex = toHex(point);
  if (point.length !== 65 || point[0] !== 4 || !sm2.verifyPublicKey(hex)) {
    throw new KeyFormatError("not a point on the SM2 curve");
  }
  return hex;
}

function sm2PublicFromDer(der) {
  der = u8(der, "key");
  if (der.length !== SM2_SPKI_PREFIX.length + 65 || !startsWith(der, SM2_SPKI_PREFIX)) {
    throw new KeyFormatError("not a SubjectPublicKeyInfo SM2 public key");
  }
  return sm2PointHex(der.subarray(SM2_SPKI_PREFIX.length));
}

function sm2PrivateFromDer(der) {
  der = u8(der, "key");
  const mid = SM2_PKCS8_PREFIX.length + 32;
  if (der.length !== mid + SM2_PKCS8_MIDDLE.length + 65 || !startsWith(der, SM2_PKCS8_PREFIX) || !startsWith(der, SM2_PKCS8_MIDDLE, mid)) {
    throw new KeyFormatError("not an unencrypted PKCS#8 SM2 private key");
  }
  const d = BigInt("0x" + toHex(der.subarray(SM2_PKCS8_PREFIX.length, mid)));
  if (d < 1n || d > SM2_N - 2n) throw new KeyFormatError("SM2 private key is out of range [1, n-2]");
  return {
    d: toHex(der.subarray(SM2_PKCS8_PREFIX.length, mid)),
    pub: sm2PointHex(der.subarray(mid + SM2_PKCS8_MIDDLE.length)),
  };
}

function sm2Keypair() {
  const { privateKey, publicKey } = sm2.generateKeyPairHex();
  const d = fromHex(privateKey.padStart(64, "0"));
  const pub = fromHex(publicKey);
  return {
    privateKey: concatBytes(SM2_PKCS8_PREFIX, d, SM2_PKCS8_MIDDLE, pub),
    publicKey: concatBytes(SM2_SPKI_PREFIX, pub),
  };
}

export class GMSuite {
  get name() { return "gm"; }
  get hashSize() { return 32; }
  get aeadKeySize() { return 16; }
  get aeadNonceSize() { return 12; }
  get aeadTagSize() { return 16; }

  async hash(data) {
    return fromHex(sm3(u8(data)));
  }

  async hmac(key, data) {
    return fromHex(sm3(u8(data), { key: u8(key, "key"), mode: "hmac" }));
  }

  async hmacVerify(key, data, tag) {
    if (!equalTags(await this.hmac(key, data), u8(tag, "tag"))) throw new InvalidMacError("HMAC tag does not match");
  }

  async hkdf(ikm, length, { salt = null, info = new Uint8Array(0) } = {}) {
    if (!(length > 0)) throw new RangeError("HKDF output length must be positive");
    // noble's hkdf treats an absent salt as HashLen zero bytes, like RFC 5869.
    return new Uint8Array(sm3Hkdf(u8(ikm, "ikm"), salt === null ? undefined : u8(salt, "salt"), u8(info, "info"), length));
  }

  #checkAead(key, nonce) {
    checkLength("SM4 key", u8(key, "key"), 16);
    checkLength("SM4 GCM nonce", u8(nonce, "nonce"), 12);
  }

  async aeadEncrypt(key, nonce, plaintext, aad = new Uint8Array(0)) {
    this.#checkAead(key, nonce);
    const { output, tag } = sm4.sm4(u8(plaintext), key, 1, {
      mode: "gcm", iv: nonce, associatedData: u8(aad, "aad"), output: "array", outputTag: true,
    });
    return concatBytes(output, tag);
  }

  async aeadDecrypt(key, nonce, ciphertext, aad = new Uint8Array(0)) {
    this.#checkAead(key, nonce);
    const data = u8(ciphertext);
    if (data.length < 16) throw new DecryptionError("SM4-GCM ciphertext is shorter than its tag");
    try {
      // The tag must always be passed: without one the library skips the check.
      return sm4.sm4(data.subarray(0, data.length - 16), key, 0, {
        mode: "gcm", iv: nonce, associatedData: u8(aad, "aad"), output: "array", tag: data.subarray(data.length - 16),
      });
    } catch {
      throw new DecryptionError("SM4-GCM authentication failed");
    }
  }

  async generateSigningKeypair() {
    return sm2Keypair();
  }

  async sign(privateKey, message) {
    const { d, pub } = sm2PrivateFromDer(privateKey);
    return fromHex(sm2.doSignature(u8(message, "message"), d, { der: true, hash: true, publicKey: pub, userId: SM2_SIGNER_ID }));
  }

  async verify(publicKey, message, signature) {
    const pub = sm2PublicFromDer(publicKey);
    let ok = false;
    try {
      ok = sm2.doVerifySignature(u8(message, "message"), toHex(u8(signature, "signature")), pub, { der: true, hash: true, userId: SM2_SIGNER_ID });
    } catch {
      ok = false;
    }
    if (!ok) throw new InvalidSignatureError("SM2 signature verification failed");
  }

  async generateKemKeypair() {
    // Same key type as signing; callers keep the two pairs separate.
    return sm2Keypair();
  }

  async kemEncapsulate(publicKey) {
    const pub = sm2PublicFromDer(publicKey);
    const secret = randomBytes(KEM_SHARED_SECRET_SIZE);
    const enc = sm2.doEncrypt(secret, pub, 1, { asn1: true });
    return { sharedSecret: secret, encapsulatedKey: fromHex(enc) };
  }

  async kemDecapsulate(privateKey, encapsulatedKey) {
    const { d } = sm2PrivateFromDer(privateKey);
    let secret;
    try {
      secret = sm2.doDecrypt(toHex(u8(encapsulatedKey, "encapsulated key")), d, 1, { output: "array", asn1: true });
    } catch {
      throw new DecryptionError("SM2 decryption failed");
    }
    // The library returns an empty result when C3 does not match.
    if (!secret || secret.length !== KEM_SHARED_SECRET_SIZE) {
      throw new DecryptionError("SM2 encapsulation does not hold a 32-byte secret");
    }
    return new Uint8Array(secret);
  }
}

const SUITES = { gm: GMSuite, international: InternationalSuite };
export const SUITE_NAMES = Object.keys(SUITES);

/** The suite called `name`; never substitutes another one. */
export function getSuite(name) {
  const Suite = SUITES[name];
  if (!Suite) throw new RangeError(`unknown crypto suite ${JSON.stringify(name)}; known suites: ${SUITE_NAMES.join(", ")}`);
  return new Suite();
}
