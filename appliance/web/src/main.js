// Tongxin web client: state, protocol handling and DOM rendering. No framework:
// the page is small, and each part re-renders itself from `state`.
import QRCode from "qrcode";

import { Client, TongxinError, ConnectionClosed, newId } from "./client.js";
import { pb, T, E, enumName } from "./pb.js";
import { FilesApi, FilesError, humanSize } from "./files.js";
import { icon } from "./icons.js";
import { WebE2EE } from "./e2ee/web.js";
import { backoffDelay, entryLabel, entryList, ownEntry } from "./entries.js";
import {
  LANGUAGE_EVENT, formatDate, formatList, formatNumber, formatTime, getLanguage, initI18n, setLanguage, t, translateDom,
} from "./i18n/index.js";
import en from "./i18n/en.json";
import zhCN from "./i18n/zh-CN.json";

const KIND = pb.MessageKind;
const SYS = pb.SystemEvent.Kind;
const RK = pb.ReceiptKind;
const CK = pb.ConversationKind;
const PAGE = 50;
const PREVIEW_LIMIT = 40;
const TYPING_TTL_MS = 6000;
const LS = { device: "tongxin.device", token: "tongxin.token", user: "tongxin.username" };

// ---- tiny DOM helpers ----------------------------------------------------------

const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

function rafOnce(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

function toast(text, kind = "error") {
  const el = h("div", { class: `toast ${kind}`, role: "status", text });
  $("toasts").append(el);
  setTimeout(() => el.remove(), 5000);
}

// Codes whose server message names the specific cause (which user, which
// field): shown after the catalogue's text. The server's words are English.
const DETAIL_CODES = new Set(["INVALID_ARGUMENT", "CONFLICT", "FORBIDDEN", "NOT_FOUND", "GROUP_FULL", "INTERNAL"]);

/** The catalogue's text for a server error code (protocol ErrorCode or files API "error"). */
function codeText(codeName, detail) {
  const key = `codes.${codeName}`;
  const message = t(key, { defaultValue: "" });
  if (!message) return detail || codeName || t("codes.ERROR_CODE_UNSPECIFIED");
  if (detail && DETAIL_CODES.has(codeName)) return t("errors.withDetail", { message, detail });
  return message;
}

function errText(err) {
  if (err instanceof TongxinError) return codeText(err.codeName, err.serverMessage);
  if (err instanceof ConnectionClosed) return t("errors.notConnected");
  if (err instanceof FilesError) {
    if (err.status === 0) return t("errors.network");
    return err.code ? codeText(err.code, err.message) : t("errors.http", { status: err.status });
  }
  if (err?.name === "TimeoutError") return t("errors.timeout");
  return err?.message || String(err);
}

// Dates and times in the page's language (Intl): 16:05 / 4:05 PM today,
// 12月5日 16:05 / Dec 5, 4:05 PM before.
function fmtTime(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  if (d.toDateString() === new Date().toDateString()) return formatTime(d);
  return formatDate(d, { month: "short", day: "numeric", hour: "numeric", minute: "2-digit" });
}

function fmtDay(ms) {
  const d = new Date(ms);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return t("msg.today");
  const y = new Date(now);
  y.setDate(now.getDate() - 1);
  if (d.toDateString() === y.toDateString()) return t("msg.yesterday");
  return formatDate(d, { weekday: "short", month: "short", day: "numeric", year: "numeric" });
}

function initials(name) {
  // Chinese names: the given name (the last two characters), as Chinese IM avatars show it.
  const han = String(name || "").trim();
  if (/^[\u4e00-\u9fff]{2,4}$/.test(han)) return han.slice(-2);
  const parts = String(name || "?").trim().split(/[\s._-]+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0][0] + parts[1][0] : (parts[0] || "?").slice(0, 2);
  return s.toUpperCase();
}

function hue(str) {
  let x = 0;
  for (const c of String(str)) x = (x * 31 + c.charCodeAt(0)) % 360;
  return x;
}

// ---- state -------------------------------------------------------------------------

const state = {
  me: null, // { userId, username, displayName }
  token: localStorage.getItem(LS.token) || "",
  conn: "offline", // offline | connecting | online | replaced
  convs: new Map(), // id -> conversation (see upsertConv)
  logs: new Map(), // id -> { items: Map<seq, Message>, oldest, newest, hasOlder, loaded, loading }
  outbox: new Map(), // clientMsgId -> { convId, content, status, error, at }
  uploads: new Map(), // local id -> upload in progress
  users: new Map(), // userId -> { userId, username, displayName }
  presence: new Map(), // userId -> { online, lastSeenMs }
  open: null,
  editing: null, // { convId, seq }
  registering: false,
  e2ee: null, // WebE2EE of the current session (docs/e2ee.md)
  entries: [ownEntry(location)], // the installation's entries, this page's origin first
  entry: 0, // index of the entry in use
};

let client = null;
let reconnectTimer = null;
let reconnectAttempt = 0;
let loggingOut = false;
const files = new FilesApi(location.origin, () => state.token);

function deviceId() {
  let id = localStorage.getItem(LS.device);
  if (!id) {
    id = `web-${newId().slice(0, 16)}`;
    localStorage.setItem(LS.device, id);
  }
  return id;
}

/** The other entries of the installation (server.client_endpoints), asked of this origin. */
async function loadEntries() {
  try {
    const res = await fetch("/api/v1/info", { cache: "no-store", signal: AbortSignal.timeout(5000) });
    if (!res.ok) return;
    const info = await res.json();
    const current = state.entries[state.entry];
    state.entries = entryList(ownEntry(location), info.endpoints);
    state.entry = Math.max(0, state.entries.indexOf(current));
  } catch {
    /* this origin is down: keep the list we have */
  }
}

/**
 * A connected Client on the first entry that accepts the WebSocket, trying
 * them in order from `from` round the list once. A refused, standby (503) or
 * silent entry is skipped.
 */
async function connectEntry(from) {
  let last = null;
  const n = state.entries.length;
  for (let i = 0; i < n; i++) {
    const index = (from + i) % n;
    const c = new Client(state.entries[index], { deviceId: deviceId() });
    try {
      await c.connect(index === from ? 10000 : 5000);
      return { c, index };
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

function online() {
  return client && !client.closed && state.conn === "online";
}

// ---- users, names, presence ------------------------------------------------------

const userQueue = new Set();
const flushUsers = debounce(async () => {
  if (!online()) return;
  const ids = [...userQueue].slice(0, 500);
  ids.forEach((id) => userQueue.delete(id));
  if (!ids.length) return;
  try {
    for (const u of await client.users(ids)) state.users.set(u.userId, u);
    touch();
  } catch (err) {
    console.warn("user lookup failed", err);
  }
  renderAll();
  if (userQueue.size) flushUsers();
}, 30);

function wantUser(id) {
  if (id && !state.users.has(id) && !userQueue.has(id)) {
    userQueue.add(id);
    flushUsers();
  }
}

function userName(id) {
  if (state.me && id === state.me.userId) return state.me.displayName || state.me.username;
  const u = state.users.get(id);
  if (!u) {
    wantUser(id);
    return "…";
  }
  return u.displayName || u.username;
}

let presenceKey = "";
const refreshPresence = debounce(async () => {
  if (!online()) return;
  const ids = new Set();
  for (const c of state.convs.values()) {
    if (c.peerId) ids.add(c.peerId);
    for (const uid of c.members.keys()) ids.add(uid);
  }
  ids.delete(state.me.userId);
  const list = [...ids].sort().slice(0, 1000);
  const key = list.join(",");
  if (key === presenceKey) return;
  presenceKey = key;
  try {
    applyPresence(await client.subscribePresence(list));
  } catch (err) {
    presenceKey = "";
    console.warn("presence subscription failed", err);
  }
}, 100);

function applyPresence(update) {
  for (const e of update.entries) {
    state.presence.set(e.userId, { online: e.status === pb.PresenceStatus.ONLINE, lastSeenMs: e.lastSeenMs });
    wantUser(e.userId);
  }
  renderAll();
}

function isOnline(uid) {
  return !!state.presence.get(uid)?.online;
}

// ---- conversations -----------------------------------------------------------------

function upsertConv(c) {
  let conv = state.convs.get(c.conversationId);
  if (!conv) {
    conv = {
      id: c.conversationId, kind: c.kind, name: "", lastSeq: 0, myReadSeq: 0, peerId: "",
      memberCount: 0, createdAtMs: 0, members: new Map(), preview: null, previewSeq: 0,
      typing: new Map(),
    };
    state.convs.set(conv.id, conv);
  }
  conv.kind = c.kind || conv.kind;
  if (c.name) conv.name = c.name;
  conv.lastSeq = Math.max(conv.lastSeq, c.lastSeq || 0);
  conv.myReadSeq = Math.max(conv.myReadSeq, c.myReadSeq || 0);
  if (c.peerId) conv.peerId = c.peerId;
  if (c.memberCount) conv.memberCount = c.memberCount;
  if (c.createdAtMs) conv.createdAtMs = c.createdAtMs;
  if (c.members?.length) touch();
  for (const m of c.members || []) {
    const cur = conv.members.get(m.userId) || { readSeq: 0, deliveredSeq: 0, role: 0 };
    cur.readSeq = Math.max(cur.readSeq, m.readSeq || 0);
    cur.deliveredSeq = Math.max(cur.deliveredSeq, m.deliveredSeq || 0, cur.readSeq);
    cur.role = m.role || cur.role;
    conv.members.set(m.userId, cur);
    wantUser(m.userId);
  }
  if (conv.peerId) wantUser(conv.peerId);
  return conv;
}

function convTitle(conv) {
  if (conv.kind === CK.DIRECT) return conv.peerId ? userName(conv.peerId) : t("conv.direct");
  return conv.name || t("conv.group");
}

function unread(conv) {
  return Math.max(0, conv.lastSeq - conv.myReadSeq);
}

function lastActivity(conv) {
  return conv.preview?.sentAtMs || conv.createdAtMs || 0;
}

function logOf(convId) {
  let log = state.logs.get(convId);
  if (!log) {
    log = { items: new Map(), oldest: 0, newest: 0, hasOlder: true, loaded: false, loading: false };
    state.logs.set(convId, log);
  }
  return log;
}

function systemText(m) {
  const s = m.system || {};
  const who = userName(s.actorId || m.senderId);
  const names = formatList((s.userIds || []).map(userName));
  switch (s.kind) {
    case SYS.CREATED: {
      const conv = state.convs.get(m.conversationId);
      return conv?.kind === CK.DIRECT ? t("system.started", { who }) : t("system.createdGroup", { who, name: s.name });
    }
    case SYS.MEMBERS_ADDED: return t("system.added", { who, names });
    case SYS.MEMBERS_REMOVED: return t("system.removed", { who, names });
    case SYS.MEMBER_LEFT: return t("system.left", { names: names || who });
    case SYS.ROLE_CHANGED: return t("system.roleChanged", { who, names });
    case SYS.RENAMED: return t("system.renamed", { who, name: s.name });
    default: return t("system.updated");
  }
}

function previewText(m) {
  if (!m || m.hidden) return "";
  if (m.e2eeError) return t("preview.encrypted");
  if (m.kind === KIND.SYSTEM) return systemText(m);
  const mine = m.senderId === state.me?.userId;
  const group = state.convs.get(m.conversationId)?.kind === CK.GROUP;
  const line = (text) => (mine ? t("preview.mine", { text }) : group ? t("preview.theirs", { name: userName(m.senderId), text }) : text);
  if (m.kind === KIND.RECALLED || m.recalled) return mine ? t("preview.recalledMine") : t("preview.recalled", { name: userName(m.senderId) });
  if (m.unavailable) return line(t("preview.unavailable"));
  if (m.kind === KIND.EDITED) return line(m.content?.text || "");
  const c = m.content || {};
  if (c.file) return line(t("preview.file", { name: c.file.name }));
  if (c.text) return line(c.text);
  if (c.encrypted) return line(t("preview.encrypted"));
  return "";
}

/** Decrypt E2EE entries (and note membership changes), then addEntries. */
async function ingest(convId, msgs, opts) {
  if (state.e2ee) await state.e2ee.decrypt(convId, msgs);
  addEntries(convId, msgs, opts);
}

/** Apply log entries (from SYNC, DELIVER or our own ACKs) to the conversation. */
function addEntries(convId, msgs, { intoLog = true } = {}) {
  const conv = state.convs.get(convId);
  if (!conv) return;
  touch();
  const log = logOf(convId);
  for (const m of msgs) {
    conv.lastSeq = Math.max(conv.lastSeq, m.seq);
    if (m.senderId) wantUser(m.senderId);
    if (m.kind === KIND.SYSTEM) applySystem(conv, m);
    if (intoLog) {
      const target = m.targetSeq ? log.items.get(m.targetSeq) : null;
      if (m.kind === KIND.RECALLED && target) {
        target.recalled = true;
        target.content = null;
      } else if (m.kind === KIND.EDITED && target && !target.recalled) {
        // An encrypted edit that does not open leaves the message saying so, not the old text.
        if (m.e2eeError) target.e2eeError = m.e2eeError;
        else if (m.unavailable) target.unavailable = true; // the edit's stored copy is withheld
        else target.content = m.content;
        target.editedAtMs = m.sentAtMs;
      }
      log.items.set(m.seq, m);
      log.oldest = log.oldest ? Math.min(log.oldest, m.seq) : m.seq;
      log.newest = Math.max(log.newest, m.seq);
    }
    if (m.seq >= conv.previewSeq && !m.hidden) {
      conv.previewSeq = m.seq;
      conv.preview = m;
    }
    if (m.senderId && m.senderId !== state.me.userId) conv.typing.delete(m.senderId);
  }
}

function applySystem(conv, m) {
  const s = m.system || {};
  if (s.kind === SYS.CREATED || s.kind === SYS.MEMBERS_ADDED) {
    for (const uid of s.userIds || []) {
      if (!conv.members.has(uid)) conv.members.set(uid, { readSeq: 0, deliveredSeq: 0, role: 0 });
    }
    refreshPresence();
  } else if (s.kind === SYS.MEMBERS_REMOVED || s.kind === SYS.MEMBER_LEFT) {
    for (const uid of s.userIds || []) conv.members.delete(uid);
  } else if (s.kind === SYS.RENAMED && s.name) {
    conv.name = s.name;
  }
}

async function loadConversations() {
  const list = await client.conversations();
  for (const c of list) upsertConv(c);
  renderAll();
  refreshPresence();
  // Previews (and so the list order) come from each conversation's newest entries.
  const need = [...state.convs.values()]
    .filter((c) => c.lastSeq > c.previewSeq)
    .sort((a, b) => b.lastSeq - a.lastSeq)
    .slice(0, PREVIEW_LIMIT);
  for (let i = 0; i < need.length; i += 8) {
    await Promise.all(need.slice(i, i + 8).map(async (conv) => {
      try {
        const res = await client.sync(conv.id, { beforeSeq: conv.lastSeq + 1, limit: 3 });
        await ingest(conv.id, res.messages, { intoLog: false });
      } catch (err) {
        console.warn("preview failed", conv.id, err);
      }
    }));
    renderList();
  }
  // Whatever reached this device is delivered.
  for (const conv of state.convs.values()) if (unread(conv) > 0) queueReceipt(conv.id, RK.DELIVERED, conv.lastSeq);
}

const refreshConversations = debounce(() => {
  if (online()) loadConversations().catch((err) => console.warn("conversation list failed", err));
}, 200);

// ---- history ------------------------------------------------------------------------

async function loadLatest(conv) {
  const log = logOf(conv.id);
  if (log.loading) return;
  log.loading = true;
  try {
    const res = await client.sync(conv.id, { beforeSeq: conv.lastSeq + 1, limit: PAGE });
    await ingest(conv.id, res.messages);
    log.hasOlder = res.hasMore;
    log.loaded = true;
    if (res.lastSeq > log.newest) await catchUp(conv, true);
  } finally {
    log.loading = false;
  }
}

/** Fetch everything after the newest entry we hold, page by page. */
async function catchUp(conv, already = false) {
  const log = logOf(conv.id);
  if (!log.loaded || (log.loading && !already)) return;
  for (let i = 0; i < 50; i++) {
    const res = await client.sync(conv.id, { afterSeq: log.newest });
    await ingest(conv.id, res.messages);
    if (!res.hasMore || !res.messages.length) break;
  }
}

async function loadOlder() {
  const conv = state.convs.get(state.open);
  if (!conv || !online()) return;
  const log = logOf(conv.id);
  if (!log.loaded || !log.hasOlder || log.loading) return;
  log.loading = true;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  try {
    const res = await client.sync(conv.id, { beforeSeq: log.oldest, limit: PAGE });
    await ingest(conv.id, res.messages);
    log.hasOlder = res.hasMore;
  } catch (err) {
    toast(t("errors.loadOlder", { error: errText(err) }));
  } finally {
    log.loading = false;
  }
  renderMessages({ keepFromBottom: fromBottom, force: true });
}

async function refreshDirectView(conv) {
  if (conv.kind !== CK.DIRECT || !conv.peerId) return;
  try {
    // CONV_CREATE of an existing direct conversation returns it, with the
    // members' receipt cursors (CONV_LIST carries none).
    upsertConv(await client.direct(conv.peerId));
    renderChat();
  } catch (err) {
    console.warn("direct view failed", err);
  }
}

async function openConv(id) {
  const conv = state.convs.get(id);
  if (!conv) return;
  if (state.editing && state.editing.convId !== id) cancelEdit();
  stopTyping();
  state.open = id;
  $("main").classList.add("has-open");
  renderAll();
  forceBottom = true;
  const log = logOf(id);
  try {
    if (!log.loaded) await loadLatest(conv);
    else await catchUp(conv);
  } catch (err) {
    toast(t("errors.loadMessages", { error: errText(err) }));
  }
  if (state.open !== id) return;
  forceBottom = true;
  renderChat();
  refreshDirectView(conv);
  refreshPresence();
  if (window.matchMedia("(min-width: 721px)").matches) $("text").focus();
}

function closeConv() {
  stopTyping();
  state.open = null;
  $("main").classList.remove("has-open");
  renderAll();
}

// ---- receipts ------------------------------------------------------------------------

const receiptQueue = new Map(); // `${conv}|${kind}` -> seq
const sentReceipt = new Map();
const flushReceipts = debounce(() => {
  if (!online()) return;
  for (const [key, seq] of receiptQueue) {
    if ((sentReceipt.get(key) || 0) >= seq) continue;
    const [convId, kind] = key.split("|");
    try {
      client.receipt(convId, Number(kind), seq);
      sentReceipt.set(key, seq);
    } catch {
      return; // resent after reconnect
    }
  }
  receiptQueue.clear();
}, 250);

function queueReceipt(convId, kind, seq) {
  const key = `${convId}|${kind}`;
  if ((receiptQueue.get(key) || 0) < seq) receiptQueue.set(key, seq);
  flushReceipts();
}

/** READ receipt for what the open conversation displays. */
function markRead() {
  const conv = state.convs.get(state.open);
  if (!conv || document.visibilityState !== "visible" || !nearBottom()) return;
  const seq = logOf(conv.id).newest;
  if (seq > conv.myReadSeq) {
    conv.myReadSeq = seq;
    queueReceipt(conv.id, RK.READ, seq);
    renderList();
  }
}

/** What a delivery status (ownStatus) reads as; the status itself stays in data-status. */
function statusText(status) {
  const by = /^read by (\d+)$/.exec(status);
  if (by) return t("status.readBy", { n: formatNumber(Number(by[1])) });
  return { sent: t("status.sent"), delivered: t("status.delivered"), read: t("status.read") }[status] || status;
}

function ownStatus(conv, seq) {
  const others = [...conv.members.entries()].filter(([uid]) => uid !== state.me.userId);
  if (conv.kind === CK.DIRECT) {
    const peer = conv.members.get(conv.peerId);
    if (peer && peer.readSeq >= seq) return "read";
    if (peer && peer.deliveredSeq >= seq) return "delivered";
    return "sent";
  }
  const read = others.filter(([, m]) => m.readSeq >= seq).length;
  if (read) return read === others.length ? "read" : `read by ${read}`;
  if (others.some(([, m]) => m.deliveredSeq >= seq)) return "delivered";
  return "sent";
}

// ---- sending ----------------------------------------------------------------------

function sendContent(convId, content, clientMsgId = newId()) {
  const item = { clientMsgId, convId, content, status: "sending", error: "", at: Date.now() };
  state.outbox.set(clientMsgId, item);
  touch();
  forceBottom = true;
  renderAll();
  trySend(item);
}

/** What the UI shows of content, without the E2EE-only attachment key. */
function plainContent(content) {
  return content.file ? { file: content.file } : { text: content.text };
}

/**
 * The Content to put on the wire for `content` ({text} or {file[, attachment]}):
 * sealed when E2EE runs, plaintext only when the server offers no E2EE or
 * allows plaintext and E2EE could not start here (the banner says so). A
 * sealing failure is never answered with plaintext.
 */
async function outgoing(convId, content) {
  const e = state.e2ee;
  await e?.started; // never plaintext while keys are still being set up
  if (!e || e.status === "off" || (e.failed && e.plaintextAllowed && !content.attachment)) {
    return { content: plainContent(content), e2ee: false };
  }
  if (!e.on) throw new Error(e.reason || t("errors.e2eeRequired"));
  const conv = state.convs.get(convId);
  const info = { id: convId, kind: conv.kind, peerId: conv.peerId, lastSeq: conv.lastSeq, memberIds: [] };
  if (conv.kind === CK.GROUP) {
    const c = await client.request(T.CONV_GET, pb.GetConversation, { conversationId: convId });
    upsertConv(c);
    info.memberIds = (c.members || []).map((m) => m.userId);
  }
  const payload = content.attachment
    ? { attachment: { ...content.attachment, name: content.file.name, size: content.file.size, contentType: content.file.contentType } }
    : { text: content.text };
  const sealed = await e.seal(info, payload, async (envelope) => {
    // A sender-key distribution: a control message in the same conversation.
    const id = newId();
    await e.rememberSent(convId, id, { control: true });
    await client.send(convId, { encrypted: envelope }, id);
  });
  if (!sealed) return { content: plainContent(content), e2ee: false };
  return { content: sealed, e2ee: true };
}

async function trySend(item) {
  if (!online()) return; // sent on reconnect
  item.status = "sending";
  try {
    const wire = await outgoing(item.convId, item.content);
    // Message keys are single-use and the sender is not a recipient: this device keeps its own plaintext.
    if (wire.e2ee) await state.e2ee.rememberSent(item.convId, item.clientMsgId, item.content);
    const ack = await client.send(item.convId, wire.content, item.clientMsgId);
    state.outbox.delete(item.clientMsgId);
    if (wire.e2ee) await state.e2ee.remember(item.convId, ack.seq, item.content);
    addEntries(item.convId, [{
      conversationId: item.convId, seq: ack.seq, senderId: state.me.userId, senderDevice: client.deviceId,
      clientMsgId: item.clientMsgId, sentAtMs: ack.sentAtMs, kind: KIND.CHAT, content: item.content,
      recalled: false, editedAtMs: 0, e2ee: wire.e2ee,
    }]);
    renderAll();
    markRead();
  } catch (err) {
    if (err instanceof ConnectionClosed) return; // stays queued; resent on reconnect
    if (err instanceof TongxinError && (err.code === E.RATE_LIMITED || err.code === E.UNAVAILABLE)) {
      setTimeout(() => trySend(item), err.retryAfterMs || 1000);
      return;
    }
    item.status = "failed";
    item.error = errText(err);
    renderMessages({ force: true });
  }
}

function resendOutbox() {
  for (const item of state.outbox.values()) if (item.status === "sending") trySend(item);
}

let typingSentAt = 0;
let typingStopTimer = null;

function onComposerInput() {
  const conv = state.convs.get(state.open);
  const box = $("text");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
  if (!conv || !online() || state.editing) return;
  if (!box.value.trim()) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (now - typingSentAt > 3000) {
    typingSentAt = now;
    try {
      client.typing(conv.id, true);
    } catch {
      /* offline */
    }
  }
  clearTimeout(typingStopTimer);
  typingStopTimer = setTimeout(stopTyping, 5000);
}

function stopTyping() {
  clearTimeout(typingStopTimer);
  if (!typingSentAt) return;
  typingSentAt = 0;
  if (state.open && online()) {
    try {
      client.typing(state.open, false);
    } catch {
      /* offline */
    }
  }
}

async function onSubmit(ev) {
  ev.preventDefault();
  const conv = state.convs.get(state.open);
  const box = $("text");
  const text = box.value.trim();
  if (!conv || !text) return;
  if (state.editing) {
    const { convId, seq } = state.editing;
    try {
      const wire = await outgoing(convId, { text });
      const editId = newId();
      if (wire.e2ee) await state.e2ee.rememberSent(convId, editId, { text });
      const ack = await client.editContent(convId, seq, wire.content, editId);
      if (wire.e2ee) await state.e2ee.remember(convId, ack.seq, { text });
      addEntries(convId, [{
        conversationId: convId, seq: ack.seq, senderId: state.me.userId, kind: KIND.EDITED, targetSeq: seq,
        content: { text }, sentAtMs: ack.sentAtMs, e2ee: wire.e2ee,
      }]);
      cancelEdit();
      renderAll();
      markRead();
    } catch (err) {
      toast(t("errors.edit", { error: errText(err) }));
    }
    return;
  }
  box.value = "";
  box.style.height = "auto";
  stopTyping();
  sendContent(conv.id, { text });
}

function startEdit(convId, m) {
  state.editing = { convId, seq: m.seq };
  $("edit-bar").hidden = false;
  const box = $("text");
  box.value = m.content?.text || "";
  box.focus();
  onComposerInput();
}

function cancelEdit() {
  state.editing = null;
  $("edit-bar").hidden = true;
  $("text").value = "";
}

async function recall(convId, m) {
  try {
    const ack = await client.recall(convId, m.seq);
    addEntries(convId, [{
      conversationId: convId, seq: ack.seq, senderId: state.me.userId, kind: KIND.RECALLED, targetSeq: m.seq,
      sentAtMs: ack.sentAtMs,
    }]);
    renderAll();
    markRead();
  } catch (err) {
    toast(err instanceof TongxinError && err.code === E.RECALL_WINDOW_EXPIRED
      ? t("errors.recallTooLate") : t("errors.recall", { error: errText(err) }));
  }
}

// ---- files ------------------------------------------------------------------------------

function sendFiles(list) {
  const conv = state.convs.get(state.open);
  if (!conv) return;
  for (const file of list) {
    const up = { id: newId(), convId: conv.id, file, phase: "starting", done: 0, total: file.size, status: "active", error: "" };
    state.uploads.set(up.id, up);
    runUpload(up);
  }
  forceBottom = true;
  renderMessages({ force: true });
}

async function runUpload(up) {
  up.status = "active";
  up.error = "";
  up.abort = new AbortController();
  renderMessages({ force: true });
  try {
    const e = state.e2ee;
    await e?.started;
    if (e && e.failed && !e.plaintextAllowed) throw new Error(e.reason || t("errors.e2eeRequired"));
    let upload = up.file;
    let sealed = null;
    if (e?.on) {
      // §8: encrypted before upload; the server sees neither name, type nor key.
      up.phase = "encrypting";
      paintUpload(up);
      sealed = await e.device.encryptAttachment(new Uint8Array(await up.file.arrayBuffer()));
      upload = new File([sealed.blob], "e2ee.bin", { type: "application/octet-stream" });
    }
    const info = await files.upload(upload, up.convId, (p) => {
      up.phase = p.phase;
      up.done = p.done;
      up.total = p.total;
      paintUpload(up);
    }, up.abort.signal);
    state.uploads.delete(up.id);
    if (sealed) {
      sendContent(up.convId, {
        file: { fileId: info.file_id, name: up.file.name, size: up.file.size, contentType: up.file.type || "" },
        attachment: { fileId: info.file_id, key: sealed.key, nonce: sealed.nonce, digest: sealed.digest },
      }, `f-${up.id}`);
      return;
    }
    sendContent(up.convId, {
      file: {
        fileId: info.file_id, name: info.name, size: info.size, contentType: info.content_type || "",
        sha256: info.sha256 || "", sm3: info.sm3 || "",
      },
    }, `f-${up.id}`);
  } catch (err) {
    if (err.name === "AbortError") {
      state.uploads.delete(up.id);
    } else {
      up.status = "failed";
      up.error = errText(err);
      up.network = err instanceof FilesError && err.status === 0;
      if (err instanceof FilesError && err.code === "NO_FILES_API") toast(t("errors.noFiles"));
    }
    renderMessages({ force: true });
  }
}

function uploadLabel(up) {
  const pct = up.total ? Math.floor((100 * up.done) / up.total) : 100;
  if (up.status === "failed") return t("upload.stopped", { error: up.error });
  const step = {
    encrypting: t("upload.encrypting"), hashing: t("upload.hashing"), uploading: t("upload.uploading"),
    verifying: t("upload.verifying"), done: t("upload.done"),
  }[up.phase] || t("upload.starting");
  return t("upload.progress", { step, pct: formatNumber(pct), size: humanSize(up.total) });
}

function paintUpload(up) {
  const el = document.querySelector(`[data-upload="${up.id}"]`);
  if (!el) return renderMessages({ force: true });
  const pct = up.total ? (100 * up.done) / up.total : 100;
  el.querySelector("progress").value = pct;
  el.querySelector(".up-label").textContent = uploadLabel(up);
}

async function download(info, link, attachment = null) {
  const label = link.textContent;
  try {
    const progress = (done, total) => {
      link.textContent = total
        ? t("download.percent", { pct: formatNumber(Math.floor((100 * done) / total)) })
        : t("download.bytes", { size: humanSize(done) });
    };
    if (attachment) {
      // §8: check the digest and open after download; only plaintext is saved.
      if (!state.e2ee?.device) throw new Error(t("errors.e2eeNotRunning"));
      const blob = await files.fetchBlob(info, progress);
      const plain = await state.e2ee.device.decryptAttachment(attachment, new Uint8Array(await blob.arrayBuffer()));
      files.save(new Blob([plain], { type: info.contentType || "application/octet-stream" }), info.name);
      return;
    }
    await files.download(info, progress);
  } catch (err) {
    toast(t("errors.download", { error: errText(err) }));
  } finally {
    link.textContent = label;
  }
}

// ---- rendering ----------------------------------------------------------------------------

let forceBottom = false;

function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 60;
}

const renderAll = rafOnce(() => {
  renderMe();
  renderList();
  renderChat();
});

function renderMe() {
  const st = $("conn-status");
  st.dataset.state = state.conn;
  st.textContent = {
    online: t("conn.online"), connecting: t("conn.connecting"), offline: t("conn.offline"), replaced: t("conn.replaced"),
  }[state.conn];
  $("offline-banner").hidden = state.conn === "online" || state.conn === "replaced" || !state.me;
  $("replaced-banner").hidden = state.conn !== "replaced";
  const moved = state.entry !== 0 && state.conn === "online" && !!state.me;
  $("entry-banner").hidden = !moved;
  if (moved) $("entry-banner").textContent = t("banner.entry", { name: entryLabel(state.entries[state.entry]) });
  renderE2EE();
  if (!state.me) return;
  $("me-name").textContent = state.me.displayName || state.me.username;
  const av = $("me-avatar");
  av.textContent = initials(state.me.displayName || state.me.username);
  av.style.background = `hsl(${hue(state.me.userId)} 55% 45%)`;
}

/** Try again to open the messages that did not (e.g. after accepting a changed key). */
async function redecryptFailed() {
  for (const [convId, log] of state.logs) {
    const failed = [...log.items.values()].filter((m) => m.e2eeError && m.content?.encrypted);
    for (const m of failed) {
      m.e2ee = false;
      delete m.e2eeError;
    }
    if (failed.length) await state.e2ee.decrypt(convId, failed);
  }
  touch();
  renderAll();
}

/** E2EE state line, escrow indicator, failure and identity-change banners. */
function renderE2EE() {
  const e = state.me ? state.e2ee : null;
  const line = $("e2ee-state");
  line.hidden = !e || e.status === "off";
  line.dataset.state = e?.status || "off";
  line.dataset.escrow = e?.escrowOn ? "on" : "off";
  if (e && e.status !== "off") {
    let label = e.on ? t("e2ee.on") : e.status === "starting" ? t("e2ee.starting") : t("e2ee.off");
    // Without IndexedDB (some private windows) keys live in memory: a reload is a new device.
    if (e.on && e.store && !e.store.persistent) label = t("e2ee.memoryOnly", { label });
    line.replaceChildren(icon("lock"), ` ${label}`,
      e.escrowOn ? h("span", { id: "escrow-indicator", class: "escrow", title: t("e2ee.escrowTitle"), text: ` · ${t("e2ee.escrowOn")}` }) : "");
  }
  const off = $("e2ee-off-banner");
  off.hidden = !e || !(e.status === "unavailable" || e.status === "error");
  if (!off.hidden) {
    off.textContent = t(e.required ? "e2ee.blocked" : "e2ee.unencrypted", { reason: e.reason });
  }
  const warn = $("identity-banner");
  const pending = e?.pending || [];
  warn.hidden = !pending.length;
  warn.replaceChildren(...pending.map((p) => h("div", { class: "identity-change", "data-user": p.userId, "data-device": p.deviceId },
    `${t("e2ee.identityChanged", { name: userName(p.userId), device: p.deviceId })} `,
    h("button", {
      class: "link accept-identity", text: t("e2ee.acceptKey"),
      onclick: () => e.acceptIdentity(p).then(redecryptFailed, (err) => toast(t("errors.accept", { error: errText(err) }))),
    }))));
  renderDeviceTrust(e);
}

/**
 * Cross-signing (docs/e2ee.md 9.1): this device unsigned (a form for the key
 * backup passphrase), and devices that claim to be someone's without their
 * user key's signature (nothing is sent to them).
 */
let restoreForm = null; // kept across renders: a re-render must not wipe a half-typed passphrase

function renderDeviceTrust(e) {
  const banner = $("device-banner");
  const unsigned = (e?.deviceChanges || []).filter((c) => c.change === "unsigned");
  banner.hidden = !e || (!e.notSigned && !unsigned.length);
  if (banner.hidden) {
    banner.replaceChildren();
    return;
  }
  const kids = unsigned.map((c) => h("div", { class: "unsigned-device", "data-user": c.userId, "data-device": c.deviceId },
    t("e2ee.unsignedDevice", { device: c.deviceId, name: userName(c.userId) })));
  if (e.notSigned) {
    if (!restoreForm) {
      const input = h("input", {
        id: "backup-passphrase", type: "password", autocomplete: "off",
        "data-i18n-aria-label": "e2ee.passphrase", "data-i18n-placeholder": "e2ee.passphrase",
        "aria-label": t("e2ee.passphrase"), placeholder: t("e2ee.passphrase"),
      });
      const why = h("span", { class: "why" });
      restoreForm = h("form", { id: "restore-key", class: "restore-key" },
        why, " ", input, " ", h("button", { type: "submit", class: "link", "data-i18n": "e2ee.verifyDevice", text: t("e2ee.verifyDevice") }));
      restoreForm.onsubmit = (ev) => {
        ev.preventDefault();
        state.e2ee.restoreUserKey(input.value).then(
          () => toast(t("toast.deviceSigned"), "info"),
          (err) => toast(t("errors.verifyDevice", { error: errText(err) })));
      };
    }
    restoreForm.querySelector(".why").textContent = t("common.sentence", { text: e.notSigned });
    kids.unshift(restoreForm);
  } else {
    restoreForm = null;
  }
  banner.replaceChildren(...kids);
}

function avatar(title, id, presenceUid) {
  const el = h("span", { class: "avatar", style: `background:hsl(${hue(id)} 55% 45%)`, text: initials(title) });
  if (presenceUid !== undefined) {
    el.append(h("span", { class: `dot ${isOnline(presenceUid) ? "on" : ""}`, title: isOnline(presenceUid) ? t("chat.online") : t("chat.offline") }));
  }
  return el;
}

function typingNames(conv) {
  const now = Date.now();
  const names = [];
  for (const [uid, until] of conv.typing) {
    if (until > now) names.push(userName(uid));
    else conv.typing.delete(uid);
  }
  return names;
}

function renderList() {
  const ul = $("conv-list");
  const convs = [...state.convs.values()].sort((a, b) => lastActivity(b) - lastActivity(a) || b.lastSeq - a.lastSeq);
  ul.replaceChildren(...convs.map((conv) => {
    const title = convTitle(conv);
    const n = unread(conv);
    const typing = typingNames(conv);
    const pending = [...state.outbox.values()].some((o) => o.convId === conv.id);
    return h("li", {},
      h("button", {
        class: `conv ${state.open === conv.id ? "active" : ""} ${n ? "has-unread" : ""}`,
        "data-conv": conv.id, "data-title": title, onclick: () => openConv(conv.id),
      },
      avatar(title, conv.peerId || conv.id, conv.kind === CK.DIRECT ? conv.peerId : undefined),
      h("span", { class: "conv-main" },
        h("span", { class: "conv-top" },
          h("span", { class: "conv-title", text: title }),
          h("span", { class: "conv-time", text: fmtTime(lastActivity(conv)) })),
        h("span", { class: "conv-bottom" },
          typing.length
            ? h("span", {
              class: "conv-preview typing",
              text: conv.kind === CK.GROUP ? t("conv.typingNames", { names: formatList(typing) }) : t("conv.typing"),
            })
            : h("span", { class: "conv-preview", text: pending ? t("conv.sending") : previewText(conv.preview) }),
          n ? h("span", { class: "badge", "aria-label": t("conv.unread", { n: formatNumber(n) }), text: n > 99 ? "99+" : String(n) }) : null))));
  }));
  $("conv-empty").hidden = state.convs.size > 0;
  renderOnline();
}

function renderOnline() {
  const ids = new Set();
  for (const c of state.convs.values()) {
    if (c.peerId) ids.add(c.peerId);
    for (const uid of c.members.keys()) ids.add(uid);
  }
  ids.delete(state.me?.userId);
  const on = [...ids].filter(isOnline).sort((a, b) => userName(a).localeCompare(userName(b)));
  const box = $("online");
  box.hidden = on.length === 0;
  box.replaceChildren(h("span", { class: "online-label", text: t("nav.online") }), ...on.map((uid) =>
    h("button", { class: "chip", "data-user": uid, title: t("nav.messageUser", { name: userName(uid) }), onclick: () => startDirect(uid) },
      h("span", { class: "dot on" }), userName(uid))));
}

function renderChat() {
  const conv = state.convs.get(state.open);
  $("chat-empty").hidden = !!conv;
  $("chat-pane").hidden = !conv;
  if (!conv) return;
  const title = convTitle(conv);
  $("chat-title").textContent = title;
  const av = $("chat-avatar");
  av.replaceWith(Object.assign(avatar(title, conv.peerId || conv.id, conv.kind === CK.DIRECT ? conv.peerId : undefined), { id: "chat-avatar" }));
  const typing = typingNames(conv);
  let sub;
  let presence = "";
  if (conv.kind === CK.DIRECT) {
    const p = state.presence.get(conv.peerId);
    presence = typing.length ? "typing" : p?.online ? "online" : "offline";
    sub = typing.length ? t("chat.typing") : p?.online ? t("chat.online")
      : p?.lastSeenMs ? t("chat.lastSeen", { time: fmtTime(p.lastSeenMs) }) : t("chat.offline");
  } else {
    const count = conv.memberCount || conv.members.size;
    const on = [...conv.members.keys()].filter((u) => u !== state.me.userId && isOnline(u)).length;
    const members = count === 1 ? t("chat.memberOne") : t("chat.members", { n: formatNumber(count) });
    sub = on ? t("chat.membersOnline", { members, n: formatNumber(on) }) : members;
    presence = on ? "online" : "offline";
  }
  const e = state.e2ee;
  $("verify-btn").hidden = !(conv.kind === CK.DIRECT && e?.on);
  const subEl = $("chat-sub");
  subEl.textContent = sub;
  subEl.dataset.presence = presence; // online | offline | typing (the browser test reads it)
  subEl.classList.toggle("typing", typing.length > 0);
  const typingEl = $("typing");
  typingEl.textContent = !typing.length ? ""
    : typing.length > 1 ? t("chat.typingMany", { names: formatList(typing) }) : t("chat.typingOne", { name: typing[0] });
  typingEl.dataset.typing = typing.join("\n");
  renderMessages();
}

function messageBody(conv, m) {
  if (m.e2eeError && !m.recalled) {
    return h("div", { class: "text e2ee-error", title: t("msg.e2eeErrorTitle") },
      icon("lock"), ` ${m.e2eeError}`);
  }
  if (m.recalled) {
    return h("div", { class: "text recalled", text: m.senderId === state.me.userId ? t("msg.recalledMine") : t("msg.recalled") });
  }
  if (m.unavailable) {
    // The server withheld it (Message.unavailable, docs/protocol.md): never show it as empty text.
    return h("div", { class: "text recalled", title: t("msg.unavailableTitle"), text: t("msg.unavailable") });
  }
  const c = m.content || {};
  if (c.file) {
    const f = c.file;
    const link = h("a", {
      class: "download", href: `/api/v1/files/${encodeURIComponent(f.fileId)}`, download: f.name, text: t("msg.download"),
      onclick: (ev) => {
        ev.preventDefault();
        download(f, ev.currentTarget, c.attachment || null);
      },
    });
    return h("div", { class: "file" },
      icon("file", "file-icon"),
      h("span", { class: "file-meta" }, h("span", { class: "file-name", text: f.name }),
        h("span", { class: "file-size", text: humanSize(Number(f.size) || 0) })),
      link);
  }
  if (c.encrypted) return h("div", { class: "text muted" }, icon("lock"), ` ${t("msg.encrypted")}`);
  return h("div", { class: "text", text: c.text || "" });
}

function messageEl(conv, m, showSender) {
  const own = m.senderId === state.me.userId;
  const status = own && !m.recalled ? ownStatus(conv, m.seq) : "";
  const canAct = own && !m.recalled && (m.content?.text || m.content?.file);
  const bubble = h("div", { class: "bubble" },
    showSender && !own ? h("div", { class: "sender", style: `color:hsl(${hue(m.senderId)} 55% 38%)`, text: userName(m.senderId) }) : null,
    messageBody(conv, m),
    h("div", { class: "meta" },
      m.e2ee && !m.e2eeError && !m.recalled ? h("span", { class: "e2ee-lock", title: t("e2ee.on"), "aria-label": t("e2ee.on") }, icon("lock")) : null,
      m.editedAtMs && !m.recalled ? h("span", { class: "edited", text: t("msg.edited") }) : null,
      h("span", { class: "time", "data-ms": m.sentAtMs, text: fmtTime(m.sentAtMs) }),
      status ? h("span", { class: `status ${status.startsWith("read") ? "read" : status}`, text: statusText(status) }) : null));
  const row = h("div", {
    class: `msg ${own ? "own" : "theirs"}`, "data-seq": m.seq, "data-sender": m.senderId,
    "data-status": status || null,
  }, bubble);
  if (canAct) {
    row.append(h("button", {
      class: "more", title: t("msg.actions"), "aria-label": t("msg.actions"),
      onclick: (ev) => {
        ev.stopPropagation();
        openMenu(ev.currentTarget, conv, m);
      },
    }, icon("more")));
  }
  return row;
}

// Bumped by every change that shows in the message list, so that pushes
// that do not (typing, presence) leave it alone: re-rendering would drop a
// text selection the reader is making.
let msgVersion = 0;
let renderedKey = "";
const touch = () => msgVersion++;

function renderMessages({ keepFromBottom = 0, force = false } = {}) {
  const conv = state.convs.get(state.open);
  const box = $("messages");
  if (!conv) return;
  const key = `${conv.id}:${msgVersion}`;
  if (!force && key === renderedKey && !forceBottom) return;
  renderedKey = key;
  const stick = forceBottom || nearBottom();
  forceBottom = false;
  const log = logOf(conv.id);
  const kids = [];
  if (log.loaded && log.hasOlder) {
    kids.push(h("button", { class: "older", id: "load-older", text: log.loading ? t("common.loading") : t("msg.loadOlder"), onclick: loadOlder }));
  } else if (log.loaded) {
    kids.push(h("div", { class: "start", text: t("msg.start") }));
  } else {
    kids.push(h("div", { class: "start", text: t("common.loading") }));
  }
  const seqs = [...log.items.keys()].sort((a, b) => a - b);
  let day = "";
  let prevSender = "";
  for (const seq of seqs) {
    const m = log.items.get(seq);
    if (m.kind !== KIND.CHAT && m.kind !== KIND.SYSTEM) continue;
    if (m.hidden) continue; // E2EE control message (sender-key distribution)
    const d = fmtDay(m.sentAtMs);
    if (d !== day) {
      day = d;
      prevSender = "";
      kids.push(h("div", { class: "day", text: d }));
    }
    if (m.kind === KIND.SYSTEM) {
      kids.push(h("div", { class: "system", "data-seq": m.seq, text: systemText(m) }));
      prevSender = "";
      continue;
    }
    kids.push(messageEl(conv, m, conv.kind === CK.GROUP && prevSender !== m.senderId));
    prevSender = m.senderId;
  }
  for (const item of state.outbox.values()) {
    if (item.convId !== conv.id) continue;
    const pseudo = { senderId: state.me.userId, content: item.content, sentAtMs: item.at };
    kids.push(h("div", { class: `msg own pending ${item.status}`, "data-client-id": item.clientMsgId },
      h("div", { class: "bubble" }, messageBody(conv, pseudo),
        h("div", { class: "meta" },
          item.status === "failed"
            ? h("span", { class: "status failed" }, `${t("msg.notSent", { error: item.error })} · `,
              h("button", { class: "link retry", text: t("msg.retry"), onclick: () => trySend(item) }))
            : h("span", { class: "status", text: t("msg.sending") })))));
  }
  for (const up of state.uploads.values()) {
    if (up.convId !== conv.id) continue;
    const pct = up.total ? (100 * up.done) / up.total : 100;
    kids.push(h("div", { class: `msg own upload ${up.status}`, "data-upload": up.id },
      h("div", { class: "bubble" },
        h("div", { class: "file" }, icon("file", "file-icon"),
          h("span", { class: "file-meta" }, h("span", { class: "file-name", text: up.file.name }),
            h("span", { class: "up-label", text: uploadLabel(up) }))),
        h("progress", { max: "100", value: String(pct) }),
        h("div", { class: "meta" },
          up.status === "failed"
            ? h("button", { class: "link", text: t("upload.resume"), onclick: () => runUpload(up) })
            : h("button", { class: "link", text: t("common.cancel"), onclick: () => up.abort?.abort() }),
          up.status === "failed" ? h("button", { class: "link", text: t("upload.dismiss"), onclick: () => { state.uploads.delete(up.id); renderMessages({ force: true }); } }) : null))));
  }
  box.replaceChildren(...kids);
  if (keepFromBottom) box.scrollTop = box.scrollHeight - keepFromBottom;
  else if (stick) box.scrollTop = box.scrollHeight;
  markRead();
}

// ---- message menu ----------------------------------------------------------------------

function openMenu(anchor, conv, m) {
  const menu = $("menu");
  const items = [];
  if (m.content?.text) {
    items.push(h("button", { role: "menuitem", "data-action": "edit", text: t("menu.edit"), onclick: () => { closeMenu(); startEdit(conv.id, m); } }));
  }
  items.push(h("button", { role: "menuitem", "data-action": "recall", class: "danger", text: t("menu.recall"), onclick: () => { closeMenu(); recall(conv.id, m); } }));
  menu.replaceChildren(...items);
  menu.hidden = false;
  const r = anchor.getBoundingClientRect();
  const w = menu.offsetWidth;
  menu.style.top = `${Math.min(r.bottom + 4, window.innerHeight - menu.offsetHeight - 8)}px`;
  menu.style.left = `${Math.max(8, Math.min(r.right - w, window.innerWidth - w - 8))}px`;
}

function closeMenu() {
  $("menu").hidden = true;
}

// ---- new chat dialog ------------------------------------------------------------------------

async function startDirect(ref) {
  try {
    const conv = upsertConv(await client.direct(ref));
    refreshPresence();
    await openConv(conv.id);
    return true;
  } catch (err) {
    toast(t("errors.startChat", { error: errText(err) }));
    return false;
  }
}

function setupDialog() {
  const dlg = $("new-dialog");
  const tabs = dlg.querySelectorAll("[data-tab]");
  const show = (name) => {
    for (const t of tabs) t.setAttribute("aria-selected", String(t.dataset.tab === name));
    $("direct-form").hidden = name !== "direct";
    $("group-form").hidden = name !== "group";
    $("dialog-error").textContent = "";
    (name === "direct" ? $("direct-user") : $("group-name")).focus();
  };
  for (const t of tabs) t.addEventListener("click", () => show(t.dataset.tab));
  $("new-chat").addEventListener("click", () => {
    $("direct-form").reset();
    $("group-form").reset();
    dlg.showModal();
    show("direct");
  });
  for (const b of dlg.querySelectorAll("[data-close]")) b.addEventListener("click", () => dlg.close());
  $("direct-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const ref = $("direct-user").value.trim();
    if (!ref) return;
    try {
      const conv = upsertConv(await client.direct(ref));
      dlg.close();
      refreshPresence();
      openConv(conv.id);
    } catch (err) {
      $("dialog-error").textContent = err instanceof TongxinError && err.code === E.NOT_FOUND
        ? t("dialog.noSuchUser", { name: ref }) : errText(err);
    }
  });
  $("group-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("group-name").value.trim();
    const members = $("group-members").value.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
    if (!name) return;
    try {
      const c = await client.createGroup(name, members);
      const conv = upsertConv(c);
      dlg.close();
      refreshPresence();
      openConv(conv.id);
    } catch (err) {
      $("dialog-error").textContent = errText(err);
    }
  });
}

// ---- pushes ---------------------------------------------------------------------------------------

// Deliveries are decrypted one after another, in arrival order.
let deliverQueue = Promise.resolve();

function onPush(type, msg) {
  switch (type) {
    case T.DELIVER:
      deliverQueue = deliverQueue.then(() => onDeliver(msg)).catch((err) => console.error("deliver failed", err));
      return undefined;
    case T.RECEIPT: return onReceipt(msg);
    case T.PRESENCE: return applyPresence(msg);
    case T.TYPING: return onTyping(msg);
    case T.ERROR:
      console.warn("server error", enumName(pb.ErrorCode, msg.code), msg.message, "ref seq", msg.refSeq);
      if (msg.fatal) toast(t("errors.connection", { error: codeText(enumName(pb.ErrorCode, msg.code), msg.message) }));
      return undefined;
    default: return undefined;
  }
}

async function onDeliver(m) {
  if (state.e2ee) await state.e2ee.decrypt(m.conversationId, [m]);
  const conv = state.convs.get(m.conversationId);
  if (!conv) {
    refreshConversations(); // a conversation we did not know: someone started it
    return;
  }
  const log = logOf(conv.id);
  if (log.loaded && m.seq > log.newest + 1 && !log.loading) {
    // A gap: keep the entry, then fetch what we missed from the last one we
    // held (entries are keyed by seq, so duplicates collapse).
    const held = log.newest;
    addEntries(conv.id, [m]);
    log.newest = held;
    catchUp(conv).then(renderAll, (err) => console.warn("catch-up failed", err));
  } else {
    addEntries(conv.id, [m], { intoLog: log.loaded || log.loading });
  }
  if (m.kind === KIND.SYSTEM && m.system?.kind === SYS.MEMBERS_REMOVED && (m.system.userIds || []).includes(state.me.userId)) {
    toast(t("toast.removed", { name: convTitle(conv) }), "info");
  }
  if (m.senderId !== state.me.userId) queueReceipt(conv.id, RK.DELIVERED, m.seq);
  renderAll();
}

function onReceipt(r) {
  const conv = state.convs.get(r.conversationId);
  if (!conv) return;
  touch();
  if (r.userId === state.me.userId) {
    if (r.kind === RK.READ) conv.myReadSeq = Math.max(conv.myReadSeq, r.seq); // another device of mine
  } else {
    const m = conv.members.get(r.userId) || { readSeq: 0, deliveredSeq: 0, role: 0 };
    if (r.kind === RK.READ) m.readSeq = Math.max(m.readSeq, r.seq);
    m.deliveredSeq = Math.max(m.deliveredSeq, r.seq);
    conv.members.set(r.userId, m);
  }
  renderAll();
}

function onTyping(t) {
  const conv = state.convs.get(t.conversationId);
  if (!conv || t.userId === state.me.userId) return;
  if (t.typing) conv.typing.set(t.userId, Date.now() + TYPING_TTL_MS);
  else conv.typing.delete(t.userId);
  wantUser(t.userId);
  renderAll();
  setTimeout(renderAll, TYPING_TTL_MS + 50);
}

// ---- session -------------------------------------------------------------------------------------

async function startSession(authenticate, from = 0) {
  clearTimeout(reconnectTimer);
  state.conn = "connecting";
  renderMe();
  const { c, index } = await connectEntry(from);
  let auth;
  try {
    auth = await authenticate(c);
  } catch (err) {
    c.close();
    throw err;
  }
  if (client && client !== c) client.close();
  client = c;
  state.entry = index;
  window.tongxinEntry = c.url; // the browser test reads which entry is in use
  window.tongxinStats = c.stats;
  window.tongxinLimits = { maxFramePayload: c.maxFramePayload, maxMessageSize: auth.maxMessageSize };
  c.on("push", onPush);
  c.on("wireError", (err) => {
    console.error("wire error", err);
    c.close(4000, "client could not decode a frame");
  });
  c.on("close", (ev) => onClosed(c, ev));
  if (state.me && state.me.userId !== auth.userId) resetData();
  state.me = { userId: auth.userId, username: auth.username, displayName: auth.displayName };
  const same = state.e2ee && state.e2ee.auth.userId === auth.userId && state.e2ee.auth.deviceId === auth.deviceId;
  if (same) {
    await state.e2ee.resume(c, auth);
  } else {
    state.e2ee = new WebE2EE(c, auth, () => {
      touch();
      renderAll();
    });
    window.tongxinE2EE = state.e2ee; // the browser test reads status and escrow
    await state.e2ee.start();
  }
  state.token = auth.token;
  localStorage.setItem(LS.token, auth.token);
  localStorage.setItem(LS.user, auth.username);
  localStorage.setItem(LS.device, auth.deviceId);
  state.conn = "online";
  reconnectAttempt = 0;
  presenceKey = "";
  showMain();
  await loadConversations();
  const conv = state.convs.get(state.open);
  if (conv) {
    await catchUp(conv).catch(() => {});
    refreshDirectView(conv);
  }
  for (const key of receiptQueue.keys()) sentReceipt.delete(key);
  flushReceipts();
  resendOutbox();
  renderAll();
}

function resetData() {
  state.convs.clear();
  state.logs.clear();
  state.outbox.clear();
  state.uploads.clear();
  state.users.clear();
  state.presence.clear();
  state.open = null;
  sentReceipt.clear();
  receiptQueue.clear();
}

function onClosed(c, ev) {
  if (c !== client) return;
  if (loggingOut) return;
  if (ev.code === 4009) {
    state.conn = "replaced"; // the same device id connected again (another tab)
    renderMe();
    return;
  }
  state.conn = "offline";
  renderAll();
  scheduleReconnect();
}

/** The first round goes out at once to the next entry; later rounds back off. */
function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(reconnect, backoffDelay(reconnectAttempt++));
}

async function reconnect() {
  if (!state.token) return showLogin();
  // Round robin: after a drop, the entry after the one lost is tried first.
  const from = state.conn === "offline" && client ? (state.entry + 1) % state.entries.length : state.entry;
  try {
    await startSession((c) => c.resume(state.token), from);
  } catch (err) {
    if (err instanceof TongxinError && [E.TOKEN_EXPIRED, E.TOKEN_INVALID, E.TOKEN_REVOKED, E.AUTH_FAILED, E.NOT_FOUND].includes(err.code)) {
      localStorage.removeItem(LS.token);
      state.token = "";
      showLogin(t("login.sessionEnded"));
      return;
    }
    state.conn = "offline";
    renderMe();
    scheduleReconnect();
  }
}

async function logout() {
  loggingOut = true;
  try {
    if (online()) client.logout(true);
  } catch {
    /* closing anyway */
  }
  setTimeout(() => client?.close(), 500);
  localStorage.removeItem(LS.token);
  state.token = "";
  resetData();
  state.me = null;
  state.e2ee = null; // its keys stay in IndexedDB for the next login on this device
  showLogin();
  setTimeout(() => { loggingOut = false; }, 600);
}

function showLogin(message = "") {
  clearTimeout(reconnectTimer);
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  const u = $("login-form").elements.username;
  if (!u.value) u.value = localStorage.getItem(LS.user) || "";
  (u.value ? $("login-form").elements.password : u).focus();
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  renderAll();
}

function renderLoginTexts() {
  const on = state.registering;
  $("login-submit").textContent = on ? t("login.registerSubmit") : t("login.submit");
  $("login-title-sub").textContent = on ? t("login.registerSubtitle") : t("login.subtitle");
  $("switch-text").textContent = on ? t("login.haveAccount") : t("login.newHere");
  $("switch-mode").textContent = on ? t("login.toLogin") : t("login.createAccount");
}

function setRegistering(on) {
  state.registering = on;
  const f = $("login-form");
  $("display-name-row").hidden = !on;
  renderLoginTexts();
  f.elements.password.autocomplete = on ? "new-password" : "current-password";
  $("login-error").textContent = "";
}

async function onLogin(ev) {
  ev.preventDefault();
  const f = ev.currentTarget;
  const username = f.elements.username.value.trim();
  const password = f.elements.password.value;
  const displayName = f.elements.displayName.value.trim();
  const btn = $("login-submit");
  btn.disabled = true;
  $("login-error").textContent = "";
  try {
    await startSession((c) => state.registering ? c.register(username, password, displayName) : c.login(username, password));
    f.elements.password.value = "";
  } catch (err) {
    state.conn = "offline";
    let text = errText(err);
    if (err instanceof TongxinError) {
      if (err.code === E.AUTH_FAILED) text = t("login.wrongPassword");
      else if (err.code === E.ACCOUNT_LOCKED) text = t("login.locked");
      else if (err.code === E.PASSWORD_EXPIRED) text = t("login.passwordExpired");
      else if (err.code === E.REGISTRATION_DISABLED) {
        text = t("login.registrationDisabled");
        setRegistering(false);
        $("switch-row").hidden = true;
      }
    } else if (err instanceof ConnectionClosed) {
      text = t("login.unreachable");
    }
    $("login-error").textContent = text.charAt(0).toUpperCase() + text.slice(1);
  } finally {
    btn.disabled = false;
  }
}

// ---- wiring ------------------------------------------------------------------------------

function init() {
  $("login-form").addEventListener("submit", onLogin);
  $("switch-mode").addEventListener("click", () => setRegistering(!state.registering));
  $("logout").addEventListener("click", logout);
  $("back").addEventListener("click", closeConv);
  $("composer").addEventListener("submit", onSubmit);
  const box = $("text");
  box.addEventListener("input", onComposerInput);
  box.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $("composer").requestSubmit();
    } else if (ev.key === "Escape" && state.editing) {
      cancelEdit();
    }
  });
  box.addEventListener("blur", stopTyping);
  $("edit-cancel").addEventListener("click", cancelEdit);
  $("file-input").addEventListener("change", (ev) => {
    const list = [...ev.target.files];
    ev.target.value = "";
    if (list.length) sendFiles(list);
  });
  $("attach").addEventListener("click", () => $("file-input").click());
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 80) loadOlder();
    markRead();
  }, { passive: true });
  document.addEventListener("visibilitychange", markRead);
  window.addEventListener("online", () => {
    // uploads cut off by the network go on by themselves when it is back
    for (const up of state.uploads.values()) if (up.status === "failed" && up.network) runUpload(up);
  });
  document.addEventListener("click", (ev) => {
    if (!$("menu").contains(ev.target)) closeMenu();
  });
  $("use-here").addEventListener("click", () => {
    state.conn = "connecting";
    reconnectAttempt = 0;
    reconnect();
  });
  setupDialog();
  setInterval(() => {
    // typing indicators expire without a message
    for (const c of state.convs.values()) if (c.typing.size) renderAll();
  }, 2000);
  const entries = loadEntries();
  if (state.token) {
    $("login").hidden = true;
    $("main").hidden = false;
    entries.finally(reconnect);
  } else {
    showLogin();
  }
}

// ---- language (docs/web-client.md "Language") ---------------------------------------------

function renderLanguageSwitch() {
  const lang = getLanguage();
  for (const b of document.querySelectorAll(".lang-switch [data-lang]")) {
    b.setAttribute("aria-pressed", String(b.dataset.lang === lang));
  }
}

/** Everything on the page in the language just chosen. */
function applyLanguage() {
  translateDom();
  renderLoginTexts();
  renderLanguageSwitch();
  touch();
  renderAll();
}

async function start() {
  await initI18n({ "zh-CN": zhCN, en });
  for (const b of document.querySelectorAll(".lang-switch [data-lang]")) {
    b.addEventListener("click", () => setLanguage(b.dataset.lang));
  }
  window.addEventListener(LANGUAGE_EVENT, applyLanguage);
  applyLanguage();
  init();
}

start();

// ---- safety number (docs/e2ee.md 9 and 9.1) --------------------------------------------

async function openVerify() {
  const conv = state.convs.get(state.open);
  const e = state.e2ee;
  if (!conv || conv.kind !== CK.DIRECT || !e?.on) return;
  const dlg = $("verify-dialog");
  $("verify-title").textContent = t("verify.titleWith", { name: userName(conv.peerId) });
  $("safety-number").textContent = "…";
  $("verify-status").textContent = "";
  dlg.showModal();
  try {
    const number = await e.safetyNumber(conv.peerId);
    $("safety-number").textContent = number;
    $("safety-qr").src = await QRCode.toDataURL(safetyPayload(state.me.userId, conv.peerId, number), { margin: 1, width: 180 });
    const verified = await e.verifiedNumber(conv.peerId);
    const verifiedState = verified === number ? "verified" : verified ? "changed" : "unverified";
    $("verify-status").dataset.state = verifiedState;
    $("verify-status").textContent = { verified: t("verify.verified"), changed: t("verify.changed"), unverified: t("verify.notYet") }[verifiedState];
    $("mark-verified").onclick = async () => {
      await e.markVerified(conv.peerId, number);
      $("verify-status").dataset.state = "verified";
      $("verify-status").textContent = t("verify.verified");
    };
  } catch (err) {
    $("safety-number").textContent = "";
    $("verify-status").dataset.state = "failed";
    $("verify-status").textContent = t("verify.failed", { error: errText(err) });
  }
}

/** What the QR code holds: both user ids in order and the digits (a scanner compares them). */
function safetyPayload(a, b, number) {
  const [x, y] = [a, b].sort();
  return `tongxin-safety-number:v1:${x}:${y}:${number.replaceAll(" ", "")}`;
}

$("verify-btn").onclick = () => openVerify();
$("verify-dialog").querySelector("[data-close]").onclick = () => $("verify-dialog").close();
