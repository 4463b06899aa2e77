// The Tongxin protocol client for browsers, mirroring the Python SDK
// (tongxin/client/__init__.py): requests are matched to answers by the header
// seq (client seqs start at 1 on each connection and increase per message);
// server pushes carry seq 0 and arrive through on("push").
import { pb, e2eePb, T, enumName } from "./pb.js";
import { Reassembler, encodeMessage, MAX_SEQ, WireError, FLAG_COMPRESSED, FLAG_FRAGMENT } from "./wire.js";

const REQUEST_TIMEOUT_MS = 30000;

// Payload type of each frame type the server sends.
const DECODERS = {
  [T.AUTH_OK]: pb.AuthResponse,
  [T.ACK]: pb.Ack,
  [T.DELIVER]: pb.Message,
  [T.SYNC_RESULT]: pb.SyncResponse,
  [T.RECEIPT]: pb.Receipt,
  [T.PRESENCE]: pb.PresenceUpdate,
  [T.TYPING]: pb.Typing,
  [T.ERROR]: pb.Error,
  [T.PING]: pb.Ping,
  [T.PONG]: pb.Pong,
  [T.CONV_INFO]: pb.Conversation,
  [T.CONV_LIST_RESULT]: pb.ConversationList,
  [T.USER_LIST]: pb.UserList,
  [T.KEYS_STATUS]: e2eePb.KeyStatus,
  [T.KEYS_BUNDLES]: e2eePb.KeyBundles,
};

export class TongxinError extends Error {
  constructor(err) {
    super(`${enumName(pb.ErrorCode, err.code)}: ${err.message}`);
    this.code = err.code;
    this.codeName = enumName(pb.ErrorCode, err.code);
    this.serverMessage = err.message;
    this.retryAfterMs = err.retryAfterMs || 0;
    this.fatal = !!err.fatal;
  }
}

export class ConnectionClosed extends Error {
  constructor(code, reason = "") {
    super(`connection closed (${code ?? "not open"}) ${reason}`.trim());
    this.code = code;
    this.reason = reason;
  }
}

export function newId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export class Client {
  constructor(url, { deviceId = "", clientName = "tongxin-web" } = {}) {
    this.url = url;
    this.deviceId = deviceId;
    this.clientName = clientName;
    this.auth = null;
    this.maxFramePayload = 65536; // until AUTH_OK says otherwise
    this.reassembler = new Reassembler();
    this.pending = new Map();
    this.seq = 0;
    this.ws = null;
    this.closed = true;
    this.listeners = { push: [], close: [], wireError: [] };
    this.heartbeat = null;
    // Counters for diagnostics (the browser test reads them).
    this.stats = { framesIn: 0, fragmentsIn: 0, compressedIn: 0, messagesIn: 0, framesOut: 0, fragmentsOut: 0, messagesOut: 0 };
  }

  on(name, fn) {
    this.listeners[name].push(fn);
    return this;
  }

  emit(name, ...args) {
    for (const fn of this.listeners[name]) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`tongxin: ${name} listener failed`, err);
      }
    }
  }

  /** Open the WebSocket; an entry that refuses it (503 while standby) or does not
   * answer within timeoutMs rejects with ConnectionClosed. */
  connect(timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      let opened = false;
      const ws = new WebSocket(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      const timer = setTimeout(() => {
        if (opened) return;
        ws.onclose = null;
        ws.close();
        reject(new ConnectionClosed(null, "timed out"));
      }, timeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        opened = true;
        this.closed = false;
        resolve();
      };
      ws.onmessage = (ev) => this.onMessage(ev.data);
      ws.onclose = (ev) => {
        this.closed = true;
        this.stopHeartbeat();
        const exc = new ConnectionClosed(ev.code, ev.reason);
        for (const p of this.pending.values()) {
          clearTimeout(p.timer);
          p.reject(exc);
        }
        this.pending.clear();
        clearTimeout(timer);
        if (!opened) reject(exc);
        else this.emit("close", { code: ev.code, reason: ev.reason });
      };
    });
  }

  close(code = 1000, reason = "") {
    this.stopHeartbeat();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(code, reason);
  }

  nextSeq() {
    this.seq = this.seq >= MAX_SEQ ? 1 : this.seq + 1;
    return this.seq;
  }

  emitFrame(type, Msg, fields) {
    if (this.closed || !this.ws || this.ws.readyState !== WebSocket.OPEN) {
      throw new ConnectionClosed(null, "not connected");
    }
    const payload = Msg.encode(Msg.create(fields)).finish();
    const seq = this.nextSeq();
    // Fragments of one message go out back to back: WebSocket.send queues in order.
    const frames = encodeMessage(type, seq, payload, this.maxFramePayload);
    for (const frame of frames) this.ws.send(frame);
    this.stats.messagesOut++;
    this.stats.framesOut += frames.length;
    if (frames.length > 1) this.stats.fragmentsOut += frames.length;
    return seq;
  }

  /** Send a frame and resolve with the answer carrying the same seq ({type, msg}). */
  request(type, Msg, fields, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      let seq;
      try {
        seq = this.emitFrame(type, Msg, fields);
      } catch (err) {
        reject(err);
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        // Named so the UI can say "the server did not answer" in the page's language.
        reject(Object.assign(new Error(`no answer to ${enumName(T, type)} within ${timeoutMs} ms`), { name: "TimeoutError" }));
      }, timeoutMs);
      this.pending.set(seq, {
        timer,
        reject,
        resolve: (rtype, msg) => {
          if (rtype === T.ERROR) reject(new TongxinError(msg));
          else resolve(msg);
        },
      });
    });
  }

  /** A frame that has no answer; errors about it arrive as pushes. */
  notify(type, Msg, fields) {
    return this.emitFrame(type, Msg, fields);
  }

  onMessage(data) {
    if (!(data instanceof ArrayBuffer)) return; // the protocol is binary only
    this.stats.framesIn++;
    if (data.byteLength > 6) {
      const flags = new Uint8Array(data, 6, 1)[0];
      if (flags & FLAG_FRAGMENT) this.stats.fragmentsIn++;
      if (flags & FLAG_COMPRESSED && !(flags & FLAG_FRAGMENT && this.reassembler.partial)) this.stats.compressedIn++;
    }
    let whole;
    try {
      whole = this.reassembler.feed(data);
    } catch (err) {
      if (err instanceof WireError) {
        this.emit("wireError", err);
        return;
      }
      throw err;
    }
    if (!whole) return;
    this.stats.messagesIn++;
    const Dec = DECODERS[whole.type];
    if (!Dec) return;
    let msg;
    try {
      msg = Dec.decode(whole.payload);
    } catch (err) {
      this.emit("wireError", new WireError(`bad ${enumName(T, whole.type)} payload: ${err.message}`));
      return;
    }
    const p = whole.seq ? this.pending.get(whole.seq) : undefined;
    if (p) {
      this.pending.delete(whole.seq);
      clearTimeout(p.timer);
      p.resolve(whole.type, msg);
      return;
    }
    if (whole.type === T.PING) {
      try {
        this.notify(T.PONG, pb.Pong, { clientTimeMs: msg.clientTimeMs, serverTimeMs: Date.now() });
      } catch {
        /* closing */
      }
      return;
    }
    this.emit("push", whole.type, msg, whole.seq);
  }

  // ---- heartbeat --------------------------------------------------------

  startHeartbeat(intervalMs) {
    this.stopHeartbeat();
    const every = Math.max(1000, intervalMs || 30000);
    this.heartbeat = setInterval(() => {
      this.request(T.PING, pb.Ping, { clientTimeMs: Date.now() }, Math.min(every, 20000)).catch((err) => {
        if (err instanceof TongxinError) return; // e.g. rate limited: still alive
        // No PONG: the connection is dead even if the socket has not noticed.
        this.close(4100, "heartbeat timeout");
      });
    }, every);
  }

  stopHeartbeat() {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  // ---- auth ---------------------------------------------------------------

  adopt(auth) {
    this.auth = auth;
    this.deviceId = auth.deviceId;
    // Follow the server's limits so our frames are never refused for size.
    if (auth.maxFramePayload) this.maxFramePayload = auth.maxFramePayload;
    if (auth.maxMessageSize) this.reassembler.maxMessageSize = auth.maxMessageSize;
    this.startHeartbeat(auth.heartbeatIntervalMs);
    return auth;
  }

  async login(username, password) {
    return this.adopt(await this.request(T.AUTH, pb.AuthRequest, {
      password: { username, password }, deviceId: this.deviceId, clientName: this.clientName,
    }));
  }

  async resume(token) {
    return this.adopt(await this.request(T.AUTH, pb.AuthRequest, {
      token, deviceId: this.deviceId, clientName: this.clientName,
    }));
  }

  async register(username, password, displayName = "") {
    return this.adopt(await this.request(T.REGISTER, pb.RegisterRequest, {
      username, password, displayName, deviceId: this.deviceId,
    }));
  }

  logout(revokeToken = true) {
    return this.notify(T.LOGOUT, pb.Logout, { revokeToken });
  }

  // ---- conversations --------------------------------------------------------

  direct(user) {
    return this.request(T.CONV_CREATE, pb.CreateConversation, { kind: pb.ConversationKind.DIRECT, memberIds: [user] });
  }

  createGroup(name, members) {
    return this.request(T.CONV_CREATE, pb.CreateConversation, {
      kind: pb.ConversationKind.GROUP, name, memberIds: members,
    });
  }

  changeMembers(conversationId, op, userIds = [], role = 0, name = "") {
    return this.request(T.MEMBERS, pb.MemberChange, { conversationId, op, userIds, role, name });
  }

  async conversations() {
    const res = await this.request(T.CONV_LIST, pb.ListConversations, {});
    return res.conversations;
  }

  // ---- messages -----------------------------------------------------------

  send(conversationId, content, clientMsgId = newId()) {
    return this.request(T.SEND, pb.SendRequest, { conversationId, clientMsgId, content });
  }

  recall(conversationId, targetSeq, clientMsgId = newId()) {
    return this.request(T.RECALL, pb.RecallRequest, { conversationId, targetSeq, clientMsgId });
  }

  edit(conversationId, targetSeq, text, clientMsgId = newId()) {
    return this.editContent(conversationId, targetSeq, { text }, clientMsgId);
  }

  /** EDIT with any Content (an E2EE edit carries an encrypted envelope). */
  editContent(conversationId, targetSeq, content, clientMsgId = newId()) {
    return this.request(T.EDIT, pb.EditRequest, { conversationId, targetSeq, clientMsgId, content });
  }

  sync(conversationId, { afterSeq = 0, beforeSeq = 0, limit = 0 } = {}) {
    return this.request(T.SYNC, pb.SyncRequest, { conversationId, afterSeq, beforeSeq, limit });
  }

  receipt(conversationId, kind, seq) {
    return this.notify(T.RECEIPT, pb.Receipt, { conversationId, kind, seq });
  }

  typing(conversationId, typing = true) {
    return this.notify(T.TYPING, pb.Typing, { conversationId, typing });
  }

  subscribePresence(userIds) {
    return this.request(T.PRESENCE_SUB, pb.PresenceSubscribe, { userIds });
  }

  async users(refs) {
    const res = await this.request(T.USER_QUERY, pb.UserQuery, { userIds: refs });
    return res.users;
  }

  ping() {
    return this.request(T.PING, pb.Ping, { clientTimeMs: Date.now() });
  }

  // ---- E2EE key directory (docs/e2ee.md §3) ---------------------------------

  publishKeys(fields) {
    return this.request(T.KEYS_PUBLISH, e2eePb.PublishKeys, fields);
  }

  fetchKeys(fields) {
    return this.request(T.KEYS_FETCH, e2eePb.FetchKeys, fields);
  }
}
