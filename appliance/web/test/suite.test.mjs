// Node tests of the web client's crypto suites (src/e2ee/suite.js), run with
// `node --test test/` from appliance/web.
//
// Standalone they check round trips, tamper rejection and the RFC 9180 A.1
// DHKEM(X25519) vector. When tests/unit/test_web_crypto_interop.py runs them it
// sets TONGXIN_INTEROP_IN to a JSON file of keys, signatures, encapsulations
// and ciphertexts made by the Python suites (tongxin.crypto.suite); the tests
// then open and verify those, and write their own to TONGXIN_INTEROP_OUT for
// the Python side to open.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { after, describe, test } from "node:test";

import {
  DecryptionError,
  InvalidMacError,
  InvalidSignatureError,
  KeyFormatError,
  SUITE_NAMES,
  fromHex,
  getSuite,
  randomBytes,
  toHex,
} from "../src/e2ee/suite.js";

const te = new TextEncoder();

for (const name of SUITE_NAMES) {
  describe(`${name} suite`, () => {
    const suite = getSuite(name);

    test("signatures verify and fail closed on any change", async () => {
      const pair = await suite.generateSigningKeypair();
      const msg = te.encode("prekey bundle");
      const sig = await suite.sign(pair.privateKey, msg);
      await suite.verify(pair.publicKey, msg, sig);
      await assert.rejects(suite.verify(pair.publicKey, te.encode("prekey bundlE"), sig), InvalidSignatureError);
      const bad = sig.slice();
      bad[bad.length - 1] ^= 1;
      await assert.rejects(suite.verify(pair.publicKey, msg, bad), InvalidSignatureError);
      const other = await suite.generateSigningKeypair();
      await assert.rejects(suite.verify(other.publicKey, msg, sig), InvalidSignatureError);
    });

    test("KEM round trip; a tampered encapsulation is refused", async () => {
      const pair = await suite.generateKemKeypair();
      const { sharedSecret, encapsulatedKey } = await suite.kemEncapsulate(pair.publicKey);
      assert.equal(sharedSecret.length, 32);
      assert.deepEqual(await suite.kemDecapsulate(pair.privateKey, encapsulatedKey), sharedSecret);
      const again = await suite.kemEncapsulate(pair.publicKey);
      assert.notDeepEqual(again.sharedSecret, sharedSecret);
      if (name === "gm") {
        // SM2's C3 hash detects any change; X25519 has no integrity of its own
        // (a changed enc yields a different secret, which the AEAD then refuses).
        const bad = encapsulatedKey.slice();
        bad[bad.length - 1] ^= 1;
        await assert.rejects(suite.kemDecapsulate(pair.privateKey, bad), DecryptionError);
      } else {
        await assert.rejects(suite.kemDecapsulate(pair.privateKey, encapsulatedKey.subarray(1)), DecryptionError);
      }
    });

    test("AEAD round trip; ciphertext, AAD and nonce are authenticated", async () => {
      const key = randomBytes(suite.aeadKeySize);
      const nonce = randomBytes(suite.aeadNonceSize);
      const aad = te.encode("header");
      const pt = te.encode("你好, end-to-end");
      const ct = await suite.aeadEncrypt(key, nonce, pt, aad);
      assert.equal(ct.length, pt.length + suite.aeadTagSize);
      assert.deepEqual(await suite.aeadDecrypt(key, nonce, ct, aad), pt);
      const bad = ct.slice();
      bad[0] ^= 1;
      await assert.rejects(suite.aeadDecrypt(key, nonce, bad, aad), DecryptionError);
      await assert.rejects(suite.aeadDecrypt(key, nonce, ct, te.encode("other")), DecryptionError);
      await assert.rejects(suite.aeadDecrypt(key, randomBytes(suite.aeadNonceSize), ct, aad), DecryptionError);
      await assert.rejects(suite.aeadDecrypt(key, nonce, ct.subarray(0, 3), aad), DecryptionError);
      await assert.rejects(suite.aeadEncrypt(randomBytes(suite.aeadKeySize + 1), nonce, pt), RangeError);
    });

    test("HMAC verify refuses a wrong tag", async () => {
      const key = randomBytes(32);
      const tag = await suite.hmac(key, te.encode("m"));
      await suite.hmacVerify(key, te.encode("m"), tag);
      await assert.rejects(suite.hmacVerify(key, te.encode("n"), tag), InvalidMacError);
    });

    test("keys of the other suite are refused, not misused", async () => {
      const other = getSuite(name === "gm" ? "international" : "gm");
      const sig = await other.generateSigningKeypair();
      const kem = await other.generateKemKeypair();
      await assert.rejects(suite.sign(sig.privateKey, te.encode("x")), KeyFormatError);
      await assert.rejects(suite.kemEncapsulate(kem.publicKey), KeyFormatError);
      await assert.rejects(suite.kemDecapsulate(kem.privateKey, randomBytes(32)), KeyFormatError);
    });
  });
}

test("unknown suite names are refused", () => {
  assert.throws(() => getSuite("rsa"), RangeError);
});

test("international KEM reproduces RFC 9180 A.1 DHKEM(X25519, HKDF-SHA256)", async () => {
  // Raw X25519 keys wrapped in their fixed PKCS#8 / SPKI headers (RFC 8410).
  const pkcs8 = (raw) => fromHex("302e020100300506032b656e04220420" + raw);
  const spki = (raw) => fromHex("302a300506032b656e032100" + raw);
  const skE = "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736";
  const pkE = "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431";
  const skR = "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8";
  const pkR = "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d";
  const shared = "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc";
  const suite = getSuite("international");
  const enc = await suite.kemEncapsulate(spki(pkR), { ephemeralPrivateKey: pkcs8(skE) });
  assert.equal(toHex(enc.encapsulatedKey), pkE);
  assert.equal(toHex(enc.sharedSecret), shared);
  assert.equal(toHex(await suite.kemDecapsulate(pkcs8(skR), fromHex(pkE))), shared);
});

// -- cross-implementation (driven by the pytest) ------------------------------

const inPath = process.env.TONGXIN_INTEROP_IN;
const outPath = process.env.TONGXIN_INTEROP_OUT;
if (inPath) {
  const vectors = JSON.parse(readFileSync(inPath, "utf8"));
  const produced = {};
  after(() => {
    if (outPath) writeFileSync(outPath, JSON.stringify(produced, null, 1));
  });

  for (const [name, v] of Object.entries(vectors)) {
    describe(`interop: ${name} values made by Python`, () => {
      const suite = getSuite(name);
      const h = fromHex;

      test("Python's signature verifies, and not over another message", async () => {
        await suite.verify(h(v.sign.public), h(v.sign.message), h(v.sign.signature));
        await assert.rejects(suite.verify(h(v.sign.public), te.encode("other"), h(v.sign.signature)), InvalidSignatureError);
      });

      test("Python's encapsulation opens to Python's secret", async () => {
        assert.equal(toHex(await suite.kemDecapsulate(h(v.kem.private), h(v.kem.enc))), v.kem.secret);
      });

      test("Python's AEAD ciphertext opens, and JS encrypts to the same bytes", async () => {
        const { key, nonce, aad, plaintext, ciphertext } = v.aead;
        assert.equal(toHex(await suite.aeadDecrypt(h(key), h(nonce), h(ciphertext), h(aad))), plaintext);
        assert.equal(toHex(await suite.aeadEncrypt(h(key), h(nonce), h(plaintext), h(aad))), ciphertext);
      });

      test("hash, HMAC and HKDF agree with Python", async () => {
        assert.equal(toHex(await suite.hash(h(v.hash.data))), v.hash.digest);
        assert.equal(toHex(await suite.hmac(h(v.hmac.key), h(v.hmac.data))), v.hmac.tag);
        await suite.hmacVerify(h(v.hmac.key), h(v.hmac.data), h(v.hmac.tag));
        for (const k of v.hkdf) {
          const salt = k.salt === null ? null : h(k.salt);
          assert.equal(toHex(await suite.hkdf(h(k.ikm), k.length, { salt, info: h(k.info) })), k.okm);
        }
      });

      if (v.kem_known) {
        test("KEM with Python's ephemeral key gives Python's enc and secret", async () => {
          const k = v.kem_known;
          const enc = await suite.kemEncapsulate(h(k.recipient_public), { ephemeralPrivateKey: h(k.ephemeral_private) });
          assert.equal(toHex(enc.encapsulatedKey), k.enc);
          assert.equal(toHex(enc.sharedSecret), k.secret);
        });
      }

      test("JS makes values for Python to open", async () => {
        const sign = await suite.generateSigningKeypair();
        const message = te.encode(`signed in JS with ${name}`);
        const kem = await suite.kemEncapsulate(h(v.kem.public));
        const own = await suite.generateKemKeypair();
        const key = randomBytes(suite.aeadKeySize);
        const nonce = randomBytes(suite.aeadNonceSize);
        const plaintext = te.encode(`sealed in JS with ${name}`);
        const aad = te.encode("aad");
        produced[name] = {
          sign: { public: toHex(sign.publicKey), private: toHex(sign.privateKey), message: toHex(message),
                  signature: toHex(await suite.sign(sign.privateKey, message)) },
          kem: { enc: toHex(kem.encapsulatedKey), secret: toHex(kem.sharedSecret) },
          kem_own: { private: toHex(own.privateKey), public: toHex(own.publicKey) },
          aead: { key: toHex(key), nonce: toHex(nonce), aad: toHex(aad), plaintext: toHex(plaintext),
                  ciphertext: toHex(await suite.aeadEncrypt(key, nonce, plaintext, aad)) },
        };
      });
    });
  }
}
