// Glue between the web client (main.js) and the E2EE device (protocol.js):
// policy from AUTH_OK, key setup on login, decrypting log entries into the
// shape the UI renders, sealing outgoing content, and a local cache of
// plaintexts (message keys are deleted once used, so history re-fetched after
// a reload only reads from this cache; the sender keeps its own copy too).
import {
  E2EEDevice, E2EEError, IdentityChangedError, NoSenderKeyError, NoSessionError, ReplayError, escrowKeyId, safetyNumber,
} from "./protocol.js";
import {
  DeviceNotSignedError, UnsignedDeviceError, UserKeyChangedError, accepted, deviceIsSigned, judgeListing, openBackup, sealBackup,
  signDevice,
} from "./cross_signing.js";
import { EscrowUntrustedError, advancePin, rootKeyId, statementFromAuth, verifyStatement } from "./escrow_trust.js";
import { MembershipLedger, UnannouncedMemberError, isMembership } from "./membership.js";
import { KeyStore } from "./store.js";
import { getSuite } from "./suite.js";
import { t } from "../i18n/index.js";

// A copy, not a view into a whole decoded message (see protocol.js).
const bytes = (v) => new Uint8Array(v ?? 0);
const sameBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * Text for an E2EE failure, shown in place of a message: a catalogue key that
 * reads in the page's language whenever it is shown (`${m.e2eeError}`), so a
 * language switch applies to messages already on screen.
 */
class FailureText {
  constructor(key) {
    this.key = key;
  }

  toString() {
    return t(this.key);
  }
}

export function failureText(err) {
  if (err instanceof UserKeyChangedError) return new FailureText("e2ee.failure.userKeyChanged");
  if (err instanceof IdentityChangedError) return new FailureText("e2ee.failure.identityChanged");
  if (err instanceof NoSessionError || err instanceof NoSenderKeyError) return new FailureText("e2ee.failure.noKey");
  if (err instanceof ReplayError) return new FailureText("e2ee.failure.replay");
  if (err instanceof UnannouncedMemberError) return new FailureText("e2ee.failure.unannounced");
  if (err instanceof UnsignedDeviceError) return new FailureText("e2ee.failure.unsigned");
  return new FailureText("e2ee.failure.generic");
}

export class WebE2EE {
  // `reason` and `notSigned` are kept as [catalogue key, values] and read in
  // the page's current language.
  #reason = null;
  #notSigned = null;

  get reason() {
    return this.#reason ? t(...this.#reason) : "";
  }

  set reason(v) {
    this.#reason = v || null;
  }

  get notSigned() {
    return this.#notSigned ? t(...this.#notSigned) : "";
  }

  set notSigned(v) {
    this.#notSigned = v || null;
  }

  /**
   * auth: the AUTH_OK payload. onChange() is called whenever status, pending
   * identity changes or escrow change (the UI re-renders its banners).
   */
  constructor(client, auth, onChange) {
    this.client = client;
    this.auth = auth;
    this.onChange = onChange;
    this.status = "off"; // off | starting | on | unavailable | error
    this.reason = "";
    this.required = !!auth.e2eeRequired;
    this.escrowOn = bytes(auth.escrowPublicKey).length > 0;
    this.pending = []; // [{userId, deviceId, newKey}]
    this.device = null;
    this.store = null;
    this.ledger = new MembershipLedger(null);
    this.started = Promise.resolve();
    this.inflight = new Map(); // "conv:seq" -> Promise of the entry's view
    this.notSigned = ""; // why this device is not signed by its user's key (§9.1)
    this.userKeyBackup = null; // the directory's sealed backup of the user key, if any
    this.deviceChanges = []; // [{userId, deviceId, change}] since the page loaded
  }

  /**
   * KEYS_FETCH through the §9.1 rules: only devices their user's key signed
   * (or of a user without a user key) reach the protocol; every change is
   * kept for the UI.
   */
  async #fetchTrusted(fields) {
    const listing = await this.client.fetchKeys(fields);
    const users = [...new Set(fields.userIds || [])];
    const devices = await judgeListing(this.device.suite, this.store, listing, users, (c) => {
      this.deviceChanges.push(c);
      if (c.change === "unsigned") console.warn("tongxin: refusing unsigned device", c.userId, c.deviceId);
      this.onChange();
    });
    return { ...listing, devices };
  }

  /**
   * §9.1 for this device after its keys are published: pin the user's key
   * and note whether this device is signed by it. A user without a user key
   * stays as before (this client makes none until the user sets a
   * passphrase, createUserKey()).
   */
  async #crossSignStatus(status) {
    // Set once, when known: a render in between (any onChange while this
    // awaits) must not see the device signed for a moment, which drops the
    // passphrase form and the half-typed passphrase with it.
    this.userKeyBackup = bytes(status.userKeyBackup);
    this.notSigned = await this.#notSignedReason(bytes(status.userKey), bytes(status.deviceSignature));
  }

  async #notSignedReason(userKey, deviceSignature) {
    if (!userKey.length) return "";
    const pinned = await this.store.get(`ukpin:${this.auth.userId}`);
    if (pinned && !sameBytes(bytes(pinned), userKey)) return ["e2ee.reason.pinnedMismatch"];
    if (!pinned) await this.store.put(`ukpin:${this.auth.userId}`, userKey);
    const identity = await this.device.identityPublicKey();
    if (await deviceIsSigned(this.device.suite, userKey, this.auth.userId, this.auth.deviceId, identity, deviceSignature)) return "";
    return this.userKeyBackup.length ? ["e2ee.reason.needPassphrase"] : ["e2ee.reason.noBackup"];
  }

  /**
   * The safety number with `peerId` (§9, §9.1): each side is that user's key
   * when one is known, else their devices' identity keys; the SDK computes
   * the same digits.
   */
  async safetyNumber(peerId) {
    const me = this.auth.userId;
    await this.#fetchTrusted({ userIds: [peerId, me], withoutOneTimePrekeys: true });
    const keys = async (uid) => {
      const userKey = await this.store.get(`ukpin:${uid}`);
      if (userKey?.length) return [bytes(userKey)];
      const pinned = (await this.device.pinnedKeys(uid)).map(bytes);
      return uid === me ? [await this.device.identityPublicKey(), ...pinned] : pinned;
    };
    return safetyNumber(this.device.suite, me, await keys(me), peerId, await keys(peerId));
  }

  async verifiedNumber(peerId) {
    return (await this.store.get(`verified:${peerId}`)) || "";
  }

  async markVerified(peerId, number) {
    await this.store.put(`verified:${peerId}`, number);
  }

  /** Open the user key's backup and sign this device with it (§9.1). */
  async restoreUserKey(passphrase) {
    const status = await this.client.publishKeys({});
    const key = await openBackup(this.device.suite, this.auth.userId, bytes(status.userKey), bytes(status.userKeyBackup), passphrase);
    const identity = await this.device.identityPublicKey();
    const deviceSignature = await signDevice(this.device.suite, key.privateKey, this.auth.userId, this.auth.deviceId, identity);
    await this.#crossSignStatus(await this.client.publishKeys({ deviceSignature }));
    this.onChange();
  }

  /** Make the user's key on this device (the user has none) with a backup under `passphrase`. */
  async createUserKey(passphrase) {
    const suite = this.device.suite;
    const pair = await suite.generateSigningKeypair();
    const identity = await this.device.identityPublicKey();
    const userKeyBackup = await sealBackup(suite, this.auth.userId, pair, passphrase);
    const deviceSignature = await signDevice(suite, pair.privateKey, this.auth.userId, this.auth.deviceId, identity);
    await this.#crossSignStatus(await this.client.publishKeys({ userKey: pair.publicKey, deviceSignature, userKeyBackup }));
    this.onChange();
  }

  get on() {
    return this.status === "on";
  }

  /**
   * A new connection of the same user and device: keep the device (its queue,
   * so nothing runs twice at once) and re-check the directory.
   */
  resume(client, auth) {
    this.client = client;
    this.auth = auth;
    this.required = !!auth.e2eeRequired;
    this.escrowOn = bytes(auth.escrowPublicKey).length > 0;
    if (!this.device || this.device.suiteName !== auth.cryptoSuite) return this.start();
    this.started = (async () => {
      try {
        this.device.escrow = await this.#escrow(this.device.suite);
        await this.#crossSignStatus(await this.device.setup());
        this.status = "on";
        this.reason = "";
        this.#escrowVerdict();
      } catch (err) {
        console.error("tongxin: E2EE setup failed", err);
        this.status = "error";
        this.reason = ["e2ee.reason.startFailed", { error: err.message || String(err) }];
      }
      this.onChange();
    })();
    return this.started;
  }

  /**
   * The escrow key to wrap to, checked against the organisation root (§10.1):
   * an untrusted one is kept (so the page can say which) but sealing refuses
   * while `escrowRefusal` says why.
   */
  async #escrow(suite) {
    this.escrowRefusal = "";
    if (!this.escrowOn) return null;
    const publicKey = bytes(this.auth.escrowPublicKey);
    const keyId = this.auth.escrowKeyId || (await escrowKeyId(suite, publicKey));
    try {
      const root = await this.#orgRoot(suite);
      const st = statementFromAuth(this.auth);
      if (!st) throw new EscrowUntrustedError(`the server announced escrow key ${keyId} without the organisation root's statement for it`);
      await verifyStatement(suite, root, st, Date.now(), escrowKeyId);
      const { pin, changed } = advancePin(await this.store.get("escrowpin"), st);
      await this.store.put("escrowpin", pin);
      if (changed) this.escrowChanged = { keyId: st.keyId, sequence: st.sequence };
    } catch (err) {
      if (!(err instanceof E2EEError)) throw err;
      console.warn("tongxin: refusing the escrow key:", err.message);
      this.escrowRefusal = err.message;
    }
    return { publicKey, keyId };
  }

  /**
   * The organisation root: the one this browser pinned, or on first use the
   * one the node names in /api/v1/info. A different one later is refused.
   */
  async #orgRoot(suite) {
    let served = null;
    try {
      const res = await fetch("/api/v1/info", { cache: "no-store", signal: AbortSignal.timeout(5000) });
      const info = await res.json();
      if (info.org_root_public_key) served = Uint8Array.from(atob(info.org_root_public_key), (c) => c.charCodeAt(0));
    } catch {
      /* this origin may be down: the pinned root still answers */
    }
    let root = await this.store.get("orgroot");
    if (root && served && !sameBytes(bytes(root), served)) {
      throw new EscrowUntrustedError(`the server now names another organisation root (${(await rootKeyId(suite, served)).slice(0, 16)}…) than this browser pinned (${(await rootKeyId(suite, bytes(root))).slice(0, 16)}…)`);
    }
    if (!root) {
      if (!served) throw new EscrowUntrustedError("compliance escrow is on but the server names no organisation root (e2ee.org_root_public_key_file): the escrow key cannot be checked");
      root = served;
      await this.store.put("orgroot", root);
    }
    this.orgRootFingerprint = await rootKeyId(suite, bytes(root));
    return bytes(root);
  }

  /** After key setup: an untrusted escrow key stops sending, and the banner says why. */
  #escrowVerdict() {
    if (this.escrowRefusal) {
      this.status = "error";
      this.reason = ["e2ee.reason.escrowUntrusted", { error: this.escrowRefusal }];
    }
  }

  /** Set up keys; `started` resolves when done (whatever the outcome). */
  start() {
    this.started = this.#start();
    return this.started;
  }

  async #start() {
    const suiteName = this.auth.cryptoSuite;
    if (!suiteName) return; // the server does not offer E2EE
    this.status = "starting";
    let suite;
    try {
      suite = getSuite(suiteName);
    } catch (err) {
      this.fail("unavailable", ["e2ee.reason.noSuite", { suite: suiteName }]);
      return;
    }
    try {
      // Ed25519 and X25519 in WebCrypto are recent (the international suite needs them).
      await suite.generateSigningKeypair();
      await suite.generateKemKeypair();
    } catch (err) {
      this.fail("unavailable", ["e2ee.reason.noWebCrypto", { error: err.message || String(err) }]);
      return;
    }
    try {
      this.store = await KeyStore.open(this.auth.userId, this.auth.deviceId);
      this.ledger = new MembershipLedger(this.store);
      const escrow = await this.#escrow(suite);
      this.device = new E2EEDevice({
        suite, store: this.store, userId: this.auth.userId, deviceId: this.auth.deviceId, escrow,
        transport: {
          publish: (fields) => this.client.publishKeys(fields),
          fetch: (fields) => this.#fetchTrusted(fields),
        },
        onIdentityChange: (err) => {
          this.pending = this.pending.filter((p) => !(p.userId === err.userId && p.deviceId === err.deviceId));
          this.pending.push({ userId: err.userId, deviceId: err.deviceId, newKey: err.newKey });
          this.onChange();
        },
      });
      await this.#crossSignStatus(await this.device.setup());
      this.pending = await this.device.pendingIdentityChanges();
      this.status = "on";
      this.#escrowVerdict();
    } catch (err) {
      console.error("tongxin: E2EE setup failed", err);
      this.fail("error", ["e2ee.reason.startFailed", { error: err.message || String(err) }]);
      return;
    }
    this.onChange();
  }

  fail(status, reason) {
    this.status = status;
    this.reason = reason;
    this.onChange();
  }

  /**
   * May plaintext go out because E2EE cannot run here? Only when it failed to
   * start (the banner says so) and the server does not require it.
   */
  get plaintextAllowed() {
    return !this.required;
  }

  get failed() {
    return this.status === "unavailable" || this.status === "error";
  }

  async acceptIdentity(change) {
    await this.device.acceptIdentity(change.userId, change.deviceId, change.newKey);
    this.pending = this.pending.filter((p) => p !== change);
    this.onChange();
  }

  // ---- cache ----------------------------------------------------------------

  async cached(convId, seq) {
    return this.store ? this.store.get(`plain:${convId}:${seq}`) : undefined;
  }

  async remember(convId, seq, view) {
    if (this.store) await this.store.put(`plain:${convId}:${seq}`, view);
  }

  /**
   * Keep what this device is about to send under its client_msg_id, before
   * sending: a SYNC or DELIVER may bring the entry back before the ACK does.
   */
  async rememberSent(convId, clientMsgId, view) {
    if (this.store) await this.store.put(`sent:${convId}:${clientMsgId}`, view);
  }

  /** The UI content of a Payload: {text} or {file, attachment}, or {control}. */
  static view(payload) {
    if (payload.senderKey) return { control: true };
    if (payload.attachment) {
      const a = payload.attachment;
      return {
        file: { fileId: a.fileId, name: a.name, size: Number(a.size) || 0, contentType: a.contentType || "" },
        attachment: { fileId: a.fileId, key: bytes(a.key), nonce: bytes(a.nonce), digest: bytes(a.digest) },
      };
    }
    return { text: payload.text || "" };
  }

  async #view(convId, m, plain) {
    let view = await this.cached(convId, m.seq);
    if (view) return view;
    if (!this.device) throw new E2EEError("end-to-end encryption is not running on this device");
    if (m.senderId === this.auth.userId && m.senderDevice === this.auth.deviceId) {
      view = this.store && (await this.store.get(`sent:${convId}:${m.clientMsgId}`));
      if (!view) throw new E2EEError("sent from this device, and its local copy is gone");
    } else {
      if (!(await accepted(this.store, m.senderId, m.senderDevice))) {
        // A device not seen yet: the directory says whether its user's key signed it.
        await this.#fetchTrusted({ userIds: [m.senderId], withoutOneTimePrekeys: true });
        if (!(await accepted(this.store, m.senderId, m.senderDevice))) throw new UnsignedDeviceError(m.senderId, m.senderDevice);
      }
      view = WebE2EE.view(await this.device.open({ ...m, content: plain }));
    }
    await this.remember(convId, m.seq, view);
    return view;
  }

  /**
   * Replace encrypted contents of `msgs` in place by what they say: sets
   * m.e2ee (true), m.hidden for control messages, or m.e2eeError (text) when
   * they do not open. Never throws.
   */
  async decrypt(convId, msgs) {
    for (const m of msgs) {
      if (m.kind === 4 /* SYSTEM */) {
        const s = m.system || {};
        if (isMembership(m)) await this.ledger.apply(convId, m).catch((err) => console.warn(err));
        // MEMBERS_ADDED, MEMBERS_REMOVED, MEMBER_LEFT rotate our sender key (§7).
        if (this.device && [2, 3, 4].includes(s.kind)) {
          const removed = s.kind === 2 ? [] : [...(s.userIds || []), ...(s.kind === 4 && s.actorId ? [s.actorId] : [])];
          await this.device.noteMembershipChange(convId, Number(m.seq), removed).catch((err) => console.warn(err));
        }
        continue;
      }
      if (!m.content?.encrypted || m.e2ee) continue;
      const plain = m.content;
      m.e2ee = true;
      try {
        // One attempt per entry at a time: the same entry often arrives twice at
        // once (DELIVER and a SYNC page), and a second open would be a replay.
        const key = `${convId}:${m.seq}`;
        let attempt = this.inflight.get(key);
        if (!attempt) {
          attempt = this.#view(convId, m, plain).finally(() => this.inflight.delete(key));
          this.inflight.set(key, attempt);
        }
        const view = await attempt;
        if (view.control) m.hidden = true;
        else m.content = view.file ? { file: view.file, attachment: view.attachment } : { text: view.text };
      } catch (err) {
        if (!(err instanceof E2EEError)) console.error("tongxin: unexpected decrypt failure", err);
        else console.warn("tongxin: cannot decrypt", convId, m.seq, err.name, err.message);
        m.e2eeError = failureText(err);
      }
    }
    return msgs;
  }

  /**
   * Seal content ({text} or {attachment}) for a conversation. `conv` has kind,
   * peerId and memberIds; `sendControl(bytes)` sends a sender-key distribution
   * first when a group needs one. Returns the Content to SEND ({encrypted}),
   * or null when the peer has no E2EE device and the server allows plaintext.
   */
  async seal(conv, payload, sendControl) {
    if (!this.on) throw new E2EEError(this.reason || t("errors.e2eeNotRunning"));
    if (this.notSigned) throw new DeviceNotSignedError(this.notSigned);
    if (this.escrowRefusal) throw new EscrowUntrustedError(this.escrowRefusal);
    let envelope;
    if (conv.kind === 2 /* GROUP */) {
      await this.#checkMembers(conv);
      envelope = await this.device.sealGroup(conv.id, payload, conv.memberIds, conv.lastSeq, sendControl);
    } else {
      const res = await this.device.sealPairwise(conv.id, payload, [conv.peerId]);
      // A peer that never published keys (a client without E2EE) gets plaintext where
      // the server allows it; the message then shows no lock. A peer whose key changed
      // is listed, so it never falls back.
      if (!res.listedUsers.has(conv.peerId) && this.plaintextAllowed && !payload.attachment) return null;
      if (!res.users.has(conv.peerId)) throw new E2EEError("no device of the recipient can receive encrypted messages yet (or its key changed)");
      envelope = res.envelope;
    }
    return { encrypted: envelope };
  }

  /**
   * Refuse a group whose listed members the conversation log did not all
   * announce (§7.1). Reads the log only when the list and the record differ.
   */
  async #checkMembers(conv) {
    await this.ledger.load(conv.id);
    if (this.ledger.unannounced(conv.id, conv.memberIds).length === 0) return;
    let afterSeq = this.ledger.groups.get(conv.id)?.checkedSeq ?? 0;
    const entries = [];
    for (;;) {
      const page = await this.client.sync(conv.id, { afterSeq });
      const msgs = page.messages || [];
      entries.push(...msgs);
      if (msgs.length) afterSeq = Number(msgs.at(-1).seq);
      if (!page.hasMore || !msgs.length) break;
    }
    await this.ledger.replay(conv.id, entries, conv.memberIds);
    const ghosts = this.ledger.unannounced(conv.id, conv.memberIds);
    if (ghosts.length) throw new UnannouncedMemberError(conv.id, ghosts);
  }
}
