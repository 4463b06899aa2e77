// A group's membership as the conversation log announced it (docs/e2ee.md
// §7.1). The member list comes from the server; a device that encrypted to
// whatever it says would encrypt to anyone the server put into the group.
// Every legitimate change is a SYSTEM entry every member's devices see, so a
// listed user no entry announced is refused. Same rules as the Python SDK
// (tongxin.e2ee.membership): the two are tested against the same cases.
import { E2EEError } from "./protocol.js";

const SYSTEM = 4;
const CREATED = 1;
const ADDED = 2;
const REMOVED = 3;
const LEFT = 4;

export class UnannouncedMemberError extends E2EEError {
  constructor(conversationId, userIds) {
    super(`the server lists ${userIds.join(", ")} as members of ${conversationId}, but no membership change in the conversation's log added them; refusing to encrypt`);
    this.conversationId = conversationId;
    this.userIds = userIds;
  }
}

export const isMembership = (m) => m.kind === SYSTEM && [CREATED, ADDED, REMOVED, LEFT].includes(m.system?.kind);

function change(convId, m, added, removed) {
  return { conversationId: convId, seq: Number(m.seq), actorId: m.system.actorId || "", added: [...added].sort(), removed: [...removed].sort(), firstSeen: false };
}

function applyTo(g, convId, m) {
  const s = m.system;
  const users = new Set(s.userIds || []);
  if (s.kind === CREATED) {
    const added = new Set([...users, ...(s.actorId ? [s.actorId] : [])]);
    g.members = new Set(added);
    return change(convId, m, added, []);
  }
  let added = [];
  let removed = [];
  if (s.kind === ADDED) added = [...users];
  else if (s.kind === REMOVED) removed = [...users];
  else if (s.kind === LEFT) removed = users.size ? [...users] : [s.actorId];
  for (const u of added) g.members.add(u);
  for (const u of removed) g.members.delete(u);
  return change(convId, m, added, removed);
}

export class MembershipLedger {
  /** store: a KeyStore (get/put) or null for memory only. */
  constructor(store) {
    this.store = store;
    this.groups = new Map(); // convId -> {members: Set, checkedSeq, applied: Set}
  }

  async load(convId) {
    if (!this.groups.has(convId) && this.store) {
      const g = await this.store.get(`members:${convId}`);
      if (g) this.groups.set(convId, { members: new Set(g.members), checkedSeq: g.checkedSeq, applied: new Set(g.applied) });
    }
    return this.groups.get(convId);
  }

  async #save(convId) {
    const g = this.groups.get(convId);
    if (g && this.store) {
      await this.store.put(`members:${convId}`, { members: [...g.members].sort(), checkedSeq: g.checkedSeq, applied: [...g.applied] });
    }
  }

  /** Listed users the log has not announced (all of them without a record). */
  unannounced(convId, listed) {
    const known = this.groups.get(convId)?.members ?? new Set();
    return [...new Set(listed)].filter((u) => !known.has(u)).sort();
  }

  /** A membership entry that arrived on its own; once per seq. */
  async apply(convId, m) {
    if (!isMembership(m)) return null;
    let g = await this.load(convId);
    if (!g) {
      if (m.system.kind !== CREATED) return null; // a delta waits for a replay
      g = { members: new Set(), checkedSeq: 0, applied: new Set() };
      this.groups.set(convId, g);
    }
    const seq = Number(m.seq);
    if (seq <= g.checkedSeq || g.applied.has(seq)) return null;
    g.applied.add(seq);
    const c = applyTo(g, convId, m);
    await this.#save(convId);
    return c;
  }

  /**
   * The log after the record's end (all of it the device may see, without a
   * record). Without a record and without CREATED first, the listed members
   * become the record, reported as firstSeen.
   */
  async replay(convId, entries, listed) {
    const sorted = [...entries].sort((a, b) => Number(a.seq) - Number(b.seq));
    let g = await this.load(convId);
    if (!g) {
      const first = sorted[0];
      if (first && isMembership(first) && first.system.kind === CREATED) {
        g = { members: new Set(), checkedSeq: 0, applied: new Set() };
        this.groups.set(convId, g);
      } else {
        const members = [...new Set(listed)].sort();
        this.groups.set(convId, { members: new Set(members), checkedSeq: sorted.length ? Number(sorted.at(-1).seq) : 0, applied: new Set() });
        await this.#save(convId);
        return [{ conversationId: convId, seq: 0, actorId: "", added: members, removed: [], firstSeen: true }];
      }
    }
    const changes = [];
    for (const m of sorted) {
      const seq = Number(m.seq);
      if (seq <= g.checkedSeq) continue;
      if (isMembership(m) && !g.applied.has(seq)) changes.push(applyTo(g, convId, m));
      g.checkedSeq = seq;
    }
    g.applied = new Set([...g.applied].filter((s) => s > g.checkedSeq));
    await this.#save(convId);
    return changes;
  }
}
