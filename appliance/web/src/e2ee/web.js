// Glue between the web client (main.js) and the E2EE device (protocol.js):
// policy from AUTH_OK, key setup on login, decrypting log entries into the
// shape the UI renders, sealing outgoing content, and a local cache of
// plaintexts (message keys are deleted once used, so history re-fetched after
// a reload only reads from this cache; the sender keeps its own copy too).
import {
  E2EEDevice, E2EEError, IdentityChangedError, NoSenderKeyError, NoSessionError, ReplayError, escrowKeyId,
} from "./protocol.js";
import { MembershipLedger, UnannouncedMemberError, isMembership } from "./membership.js";
import { KeyStore } from "./store.js";
import { getSuite } from "./suite.js";

// A copy, not a view into a whole decoded message (see protocol.js).
const bytes = (v) => new Uint8Array(v ?? 0);

/** Human text for an E2EE failure, shown in place of a message. */
export function failureText(err) {
  if (err instanceof IdentityChangedError) return "Cannot decrypt: the sender's security key changed";
  if (err instanceof NoSessionError || err instanceof NoSenderKeyError) return "Cannot decrypt: this device has no key for this message";
  if (err instanceof ReplayError) return "Cannot decrypt: message key already used";
  if (err instanceof UnannouncedMemberError) return err.message;
  return "Cannot decrypt this message";
}

export class WebE2EE {
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
        await this.device.setup();
        this.status = "on";
        this.reason = "";
      } catch (err) {
        console.error("tongxin: E2EE setup failed", err);
        this.status = "error";
        this.reason = `end-to-end encryption could not start: ${err.message || err}`;
      }
      this.onChange();
    })();
    return this.started;
  }

  async #escrow(suite) {
    if (!this.escrowOn) return null;
    const publicKey = bytes(this.auth.escrowPublicKey);
    return { publicKey, keyId: this.auth.escrowKeyId || (await escrowKeyId(suite, publicKey)) };
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
      this.fail("unavailable", `end-to-end encryption needs a suite this browser build lacks (${suiteName})`);
      return;
    }
    try {
      // Ed25519 and X25519 in WebCrypto are recent (the international suite needs them).
      await suite.generateSigningKeypair();
      await suite.generateKemKeypair();
    } catch (err) {
      this.fail("unavailable", `end-to-end encryption needs Ed25519 and X25519 in this browser's WebCrypto (${err.message || err})`);
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
          fetch: (fields) => this.client.fetchKeys(fields),
        },
        onIdentityChange: (err) => {
          this.pending = this.pending.filter((p) => !(p.userId === err.userId && p.deviceId === err.deviceId));
          this.pending.push({ userId: err.userId, deviceId: err.deviceId, newKey: err.newKey });
          this.onChange();
        },
      });
      await this.device.setup();
      this.pending = await this.device.pendingIdentityChanges();
      this.status = "on";
    } catch (err) {
      console.error("tongxin: E2EE setup failed", err);
      this.fail("error", `end-to-end encryption could not start: ${err.message || err}`);
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
    if (!this.on) throw new E2EEError(this.reason || "end-to-end encryption is not running");
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
