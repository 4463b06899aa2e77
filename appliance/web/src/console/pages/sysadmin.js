// 系统管理员: ordinary accounts (list, create, disable, enable, unlock, reset the
// password, revoke sessions, delete), organisation units, groups, the node's status and
// every node of the installation.
import { h, field, values, table } from "../dom.js";
import { formatDateTime, formatList, formatNumber } from "../../i18n/index.js";
import { lineChart } from "../chart.js";
import * as history from "../history.js";
import { accountsFromCsv } from "../csv.js";

function stateBadge(t, state) {
  return h("span", { class: `badge state-${state}` }, t(`state.${state}`));
}

export async function users(el, { api, t, session, errorText, ask }) {
  const status = h("p", { class: "status", role: "status", id: "users-status" });
  const list = h("div", { id: "users-list" });
  const say = (text, bad = false) => {
    status.textContent = text;
    status.classList.toggle("error", bad);
  };
  async function act(u, action, label) {
    try {
      if (action === "delete") {
        const ok = await ask({ title: t("users.deleteTitle", { name: u.username }), help: t("users.deleteHelp"),
          submit: t("users.delete"), fields: [] });
        if (!ok) return;
        await api.call("DELETE", `/users/${encodeURIComponent(u.username)}`);
      } else if (action === "password") {
        const v = await ask({ title: t("users.resetTitle", { name: u.username }), help: t("users.resetHelp"),
          submit: t("users.reset"), fields: [{ name: "password", label: t("users.newPassword"), type: "password",
            autocomplete: "new-password" }] });
        if (!v) return;
        await api.call("POST", `/users/${encodeURIComponent(u.username)}/password`, { password: v.password });
      } else {
        await api.call("POST", `/users/${encodeURIComponent(u.username)}/${action}`);
      }
      say(t("users.done", { action: label, name: u.username }));
      await load();
    } catch (err) {
      say(errorText(err), true);
    }
  }
  async function load() {
    const { users: rows } = await api.call("GET", "/users");
    const actions = (u) => {
      if (u.role !== "user") return h("span", { class: "muted" }, t("users.adminManaged"));
      const b = (action, label, cls = "secondary") => h("button", { type: "button", class: `${cls} small`,
        "data-action": action, "data-user": u.username, onclick: () => act(u, action, label) }, label);
      return h("div", { class: "row-actions" },
        u.state === "disabled" ? b("enable", t("users.enable")) : b("disable", t("users.disable")),
        u.state === "locked" ? b("unlock", t("users.unlock")) : null,
        b("password", t("users.reset")), b("revoke-tokens", t("users.revoke")),
        b("delete", t("users.delete"), "danger"));
    };
    list.replaceChildren(table(t("users.caption"), [
      { head: t("users.username"), cell: (u) => u.username },
      { head: t("users.displayName"), cell: (u) => u.display_name || "—" },
      { head: t("users.role"), cell: (u) => t(`role.${u.role}`) },
      { head: t("users.unit"), cell: (u) => u.unit_path || "—" },
      { head: t("users.state"), cell: (u) => stateBadge(t, u.state) },
      { head: t("users.factor"), cell: (u) => (u.totp ? t("users.factorTotp") : u.sms ? t("users.factorSms") : "—") },
      { head: t("users.created"), cell: (u) => formatDateTime(u.created_at) },
      { head: t("users.actions"), cell: actions },
    ], rows, t("users.none")));
    list.setAttribute("data-count", String(rows.length));
  }
  const form = h("form", { class: "panel inline-form", id: "create-user" },
    h("h2", {}, t("users.create")),
    field(t("users.username"), { name: "username", required: true, autocomplete: "off", autocapitalize: "none" }),
    field(t("users.displayName"), { name: "display_name", autocomplete: "off" }),
    field(t("users.initialPassword"), { name: "password", type: "password", required: true,
      autocomplete: "new-password" }),
    h("button", { type: "submit", class: "primary" }, t("users.createSubmit")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(form);
    try {
      const u = await api.call("POST", "/users", v);
      form.reset();
      say(t("users.created1", { name: u.username }));
      await load();
    } catch (err) {
      say(errorText(err), true);
    }
  });
  el.append(h("p", { class: "lead" }, t("users.lead", { name: session.username })), form,
    importForm(api, t, errorText, load), status, list);
  await load();
}

// Accounts from a CSV file (username, display name, initial password): one POST /users
// per row, so each is checked and audited (user.create) like any other creation.
function importForm(api, t, errorText, reload) {
  const results = h("ul", { class: "import-results", id: "import-results", "aria-live": "polite" });
  const summary = h("p", { class: "status", role: "status", id: "import-status" });
  const form = h("form", { class: "panel inline-form", id: "import-users" },
    h("h2", {}, t("users.import")),
    h("p", { class: "help", id: "import-help" }, t("users.importHelp")),
    field(t("users.importFile"), { name: "file", type: "file", accept: ".csv,text/csv", required: true,
      "aria-describedby": "import-help" }),
    h("button", { type: "submit", class: "secondary" }, t("users.importSubmit")),
    summary, results);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = form.querySelector("input[type=file]").files[0];
    if (!file) return;
    const accounts = accountsFromCsv(await file.text());
    results.replaceChildren();
    let created = 0;
    for (const [i, acc] of accounts.entries()) {
      let line;
      try {
        const u = await api.call("POST", "/users", acc);
        created++;
        line = h("li", { class: "ok" }, t("users.importOk", { row: i + 1, name: u.username }));
      } catch (err) {
        line = h("li", { class: "error" }, t("users.importFailed", { row: i + 1, name: acc.username || "—", error: errorText(err) }));
      }
      results.append(line);
    }
    summary.textContent = t("users.importDone", { created, total: accounts.length });
    form.querySelector("input[type=file]").value = "";
    await reload();
  });
  return form;
}

export async function status(el, { api, t }) {
  const [health, ready, info] = await Promise.all(["/healthz", "/readyz", "/api/v1/info"].map(api.publicGet));
  const r = ready.body || {};
  const row = (k, v, id) => [h("dt", {}, k), h("dd", { id }, v)];
  const ok = (flag) => h("span", { class: `badge ${flag ? "state-active" : "state-disabled"}` },
    flag ? t("status.yes") : t("status.no"));
  el.append(h("p", { class: "lead" }, t("status.lead")),
    h("section", { class: "panel", "aria-labelledby": "st-node" },
      h("h2", { id: "st-node" }, t("status.node")),
      h("dl", { class: "facts" },
        row(t("status.nodeId"), r.node || health.body.node || "—", "st-node-id"),
        row(t("status.version"), health.body.version || info.body.version || "—", "st-version"),
        row(t("status.site"), r.site || "—", "st-site"),
        row(t("status.role"), t(`status.siteRole.${r.role === "standby" ? "standby" : "active"}`), "st-role"),
        row(t("status.ready"), ok(ready.status === 200 && r.ready), "st-ready"),
        row(t("status.store"), ok(Boolean(r.store)), "st-store"),
        row(t("status.registration"), info.body.self_registration ? t("status.on") : t("status.off"), "st-reg"),
        row(t("status.passwordMin"), String(info.body.password_min_length ?? "—"), "st-pwmin"))),
    h("section", { class: "panel", "aria-labelledby": "st-ep" },
      h("h2", { id: "st-ep" }, t("status.endpoints")),
      (info.body.endpoints || []).length ? h("ul", { id: "st-endpoints" }, info.body.endpoints.map((e) =>
        h("li", {}, typeof e === "string" ? e : JSON.stringify(e)))) : h("p", { class: "muted" }, t("status.noEndpoints"))),
    await nodesPanel(api, t),
    await siteAndEvidence(api, t),
    liveCharts(api, t));
}

// Every active node of the installation (GET /nodes): each node rewrites its replication
// heartbeat row in the shared database every site.heartbeat_interval, with its version,
// open connections and start time; on the embedded SQLite store the list is this node.
// Read again every NODES_POLL_MS while the page is open, like the DR copy below.
const NODES_POLL_MS = 10000;

async function nodesPanel(api, t) {
  const section = h("section", { class: "panel", "aria-labelledby": "st-nodes" },
    h("h2", { id: "st-nodes" }, t("status.nodes")));
  let body;
  try {
    body = await api.call("GET", "/nodes");
  } catch {
    section.append(h("p", { class: "muted", id: "nodes-list" }, t("status.nodesUnavailable")));
    return section;
  }
  let current = nodesTable(t, body);
  const problem = h("p", { class: "status error", role: "status", id: "nodes-status", hidden: true });
  section.append(current, problem, h("p", { class: "help" }, body.source === "self" ? t("status.nodesSelf")
    : t("status.nodesNote", { n: formatNumber(body.stale_after_s, { maximumFractionDigits: 1 }) })));
  async function tick() {
    if (!section.isConnected) return; // the page was left
    try {
      const next = await api.call("GET", "/nodes");
      const fresh = nodesTable(t, next);
      current.replaceWith(fresh);
      current = fresh;
      problem.textContent = "";
      problem.hidden = true;
    } catch (err) {
      // The database may be down for a while (503): say so, keep the last reading and try
      // again. Signed out (401, handled by the API layer) or anything else: stop.
      if (err.status !== 503) return;
      problem.textContent = t("status.nodesStale503");
      problem.hidden = false;
    }
    setTimeout(tick, NODES_POLL_MS);
  }
  setTimeout(tick, NODES_POLL_MS);
  return section;
}

function nodesTable(t, body) {
  const list = body.nodes || [];
  const dash = (v) => (v === null || v === undefined || v === "" ? "—" : v);
  const name = (n) => h("span", {}, n.node_id, n.self ? h("span", { class: "muted" }, ` (${t("status.nodeThis")})`) : null,
    n.address && n.address !== n.node_id ? h("span", { class: "muted" }, ` · ${n.address}`) : null);
  const badge = (n) => h("span", { class: `badge ${n.state === "live" ? "state-active" : "state-disabled"}` },
    t(n.state === "live" ? "status.nodeLive" : "status.nodeStale"));
  const live = list.filter((n) => n.state === "live").length;
  return h("div", { id: "nodes-list", "data-count": String(list.length), "data-live": String(live) },
    h("p", { class: "lead", id: "nodes-summary" }, t("status.nodesSummary", { n: formatNumber(list.length), live: formatNumber(live) })),
    table(t("status.nodes"), [
      { head: t("status.site"), cell: (n) => dash(n.site) },
      { head: t("status.nodeName"), cell: name },
      { head: t("status.version"), cell: (n) => dash(n.version) },
      { head: t("status.nodeConnections"), cell: (n) => (typeof n.connections === "number" ? formatNumber(n.connections) : "—") },
      { head: t("status.nodeStarted"), cell: (n) => (n.started_at ? formatDateTime(new Date(n.started_at)) : "—") },
      { head: t("status.nodeLastSeen"), cell: (n) => t("status.secondsAgo", { n: formatNumber(n.age_s, { maximumFractionDigits: n.age_s < 10 ? 1 : 0 }) }) },
      { head: t("status.nodeState"), cell: badge },
    ], list, t("status.nodesNone")));
}

// The site, its database endpoint, and the newest backup, restore test and DR drill (GET /site).
async function siteAndEvidence(api, t) {
  const section = h("section", { class: "panel", "aria-labelledby": "st-dr" }, h("h2", { id: "st-dr" }, t("status.dr")));
  let s;
  try {
    s = await api.call("GET", "/site");
  } catch {
    section.append(h("p", { class: "muted" }, t("status.drUnavailable")));
    return section;
  }
  const row = (k, v, id) => [h("dt", {}, k), h("dd", { id }, v)];
  const when = (ms) => formatDateTime(new Date(ms));
  const outcome = (e) => h("span", { class: `badge ${e.ok ? "state-active" : "state-disabled"}` }, e.ok ? t("status.ok") : t("status.failed"));
  const item = (e, detail) => (e ? h("span", {}, outcome(e), " ", when(e.finished_at), detail ? ` · ${detail}` : "") : h("span", { class: "muted" }, t("status.never")));
  const ev = s.evidence || {};
  const backup = ev.backup && ev.backup.ok ? t("status.backupDetail", { id: ev.backup.id || "", size: formatNumber(Math.round((ev.backup.bytes || 0) / 1024)) }) : (ev.backup && ev.backup.error) || "";
  const restore = ev.restore ? (ev.restore.ok ? t("status.restoreDetail", { id: ev.restore.backup || "" }) : ev.restore.error || "") : "";
  const drill = ev["dr-drill"] ? t("status.drillDetail", { rpo: formatNumber(ev["dr-drill"].rpo_seconds ?? NaN), rto: formatNumber(ev["dr-drill"].rto_seconds ?? NaN) }) : "";
  section.append(h("dl", { class: "facts" },
    row(t("status.site"), s.site || "—", "dr-site"),
    row(t("status.role"), t(`status.siteRole.${s.role === "standby" ? "standby" : "active"}`), "dr-role"),
    row(t("status.database"), s.database ? t("status.databaseEndpoint", { endpoint: s.database.endpoint, index: s.database.index }) : t(`status.storage.${s.storage === "mysql" ? "mysql" : "sqlite"}`), "dr-db"),
    row(t("status.heartbeat"), s.heartbeat_written_at ? when(s.heartbeat_written_at) : "—", "dr-heartbeat"),
    row(t("status.lastBackup"), item(ev.backup, backup), "dr-backup"),
    row(t("status.lastRestore"), item(ev.restore, restore), "dr-restore"),
    row(t("status.lastDrill"), item(ev["dr-drill"], drill), "dr-drill")),
  h("p", { class: "help" }, t("status.drNote")),
  drCopy(api, t, s));
  return section;
}

// The DR copy is read again every STANDBY_POLL_MS while the page is open: a reading asks
// every standby's /readyz (up to 2 s each, concurrently), so not as often as the node's
// own counters; 10 s is well inside the 15 s at which a row turns red.
const STANDBY_POLL_MS = 10000;
const LAG_KEEP = 60; // ten minutes of readings

// The standbys' table, replaced at each reading, and a chart of the largest lag any
// standby reported (the DR copy is as far behind as its slowest reachable node).
function drCopy(api, t, s) {
  let current = standbys(t, s);
  if (!current || !(s.standbys || []).length) return current;
  const chart = lineChart(t("status.chartDrLag"), { color: "#7c2d12" });
  const value = h("p", { class: "chart-value", id: "chart-dr-lag" });
  // The readings before a reload of the page (history.js), of this site's standbys.
  const kept = { owner: s.site || "", names: ["lag"], keep: LAG_KEEP, maxAgeMs: LAG_KEEP * STANDBY_POLL_MS };
  const points = history.restore(sessionStorage, "drLag", { ...kept, now: Date.now() }).series.lag;
  const record = (site) => {
    const lags = (site.standbys || [])
      .filter((sb) => sb.reachable && !sb.error && typeof sb.replication_lag_seconds === "number")
      .map((sb) => sb.replication_lag_seconds);
    if (lags.length) points.push({ t: Date.now(), v: Math.max(...lags) });
    points.splice(0, Math.max(0, points.length - LAG_KEEP));
    history.save(sessionStorage, "drLag", { ...kept, now: Date.now(), series: { lag: points } });
    const text = lags.length
      ? t("status.drLagNow", { n: formatNumber(Math.max(...lags), { maximumFractionDigits: 1 }) })
      : t("status.drLagNone");
    chart.update(points, text);
    value.textContent = text;
  };
  record(s);
  const wrap = h("div", {}, current,
    h("div", { class: "charts" }, h("figure", {}, h("figcaption", {}, t("status.chartDrLag")), chart.el, value)));
  async function tick() {
    if (!wrap.isConnected) return; // the page was left
    let next;
    try {
      next = await api.call("GET", "/site");
    } catch {
      return; // signed out, or the node went away: stop reading
    }
    const fresh = standbys(t, next);
    if (fresh) {
      current.replaceWith(fresh);
      current = fresh;
    }
    record(next);
    setTimeout(tick, STANDBY_POLL_MS);
  }
  setTimeout(tick, STANDBY_POLL_MS);
  return wrap;
}

// A DR copy further behind than this is shown red. 15 s is the RPO target of a DR
// takeover (docs/architecture.md) and the default of the DrReplicationLagHigh alert
// (role monitoring, monitoring_alert_replication_lag): the console turns red when the
// alert fires, not at a number of its own. Normal lag is about a heartbeat (1 s).
const STANDBY_LAG_LIMIT_S = 15;

// The DR copy as its standby nodes report it (GET /site's standbys: each one's /readyz,
// read by this node at each reading of the page): a row per standby with its lag, how long the
// copy has not moved, and a badge that is red when it is unreachable, reports an error
// or lags more than STANDBY_LAG_LIMIT_S.
function standbys(t, s) {
  const list = s.standbys || [];
  if (!list.length) {
    // A single-site install has no DR copy to speak of; a multi-site one should list it.
    return s.site ? h("p", { class: "muted", id: "dr-standbys" }, t("status.noStandbys")) : null;
  }
  const secs = (v) => (v === null || v === undefined ? "—"
    : t("status.seconds", { n: formatNumber(v, { maximumFractionDigits: 1 }) }));
  const badge = (sb) => {
    const lag = sb.replication_lag_seconds;
    const [cls, text] = !sb.reachable ? ["state-disabled", t("status.standbyUnreachable")]
      : sb.error ? ["state-disabled", t("status.standbyError")]
        : lag === null || lag === undefined ? ["state-locked", t("status.standbyNoReading")]
          : lag > STANDBY_LAG_LIMIT_S ? ["state-disabled", t("status.standbyBehind", { n: formatNumber(STANDBY_LAG_LIMIT_S) })]
            : ["state-active", t("status.standbyOk")];
    return h("span", {}, h("span", { class: `badge ${cls}` }, text), sb.error ? h("span", { class: "muted" }, ` ${sb.error}`) : null);
  };
  const wrap = h("div", { id: "dr-standbys", "data-count": String(list.length) },
    h("h3", {}, t("status.standbys")),
    table(t("status.standbys"), [
      { head: t("status.standbyNode"), cell: (sb) => (sb.node ? `${sb.site || "—"} · ${sb.node}` : sb.url) },
      { head: t("status.standbyLag"), cell: (sb) => secs(sb.replication_lag_seconds) },
      { head: t("status.standbySilent"), cell: (sb) => secs(sb.replication_silent_seconds) },
      { head: t("status.standbyState"), cell: badge },
    ], list, t("status.noStandbys")),
    h("p", { class: "help" }, t("status.standbyNote", { n: formatNumber(STANDBY_LAG_LIMIT_S) })));
  return wrap;
}

// Connections and messages per second, from GET /node every few seconds while the page is open.
const POLL_MS = 2000;
const KEEP = 90; // three minutes of points

function liveCharts(api, t) {
  const conn = lineChart(t("status.chartConnections"));
  const rate = lineChart(t("status.chartMessages"), { color: "#14532d" });
  const ack = lineChart(t("status.chartAck"), { color: "#7c2d12" });
  const ackText = h("p", { class: "chart-value", id: "chart-ack" });
  const connText = h("p", { class: "chart-value", id: "chart-connections" });
  const rateText = h("p", { class: "chart-value", id: "chart-messages" });
  const section = h("section", { class: "panel", "aria-labelledby": "st-live" },
    h("h2", { id: "st-live" }, t("status.live")),
    h("div", { class: "charts" },
      h("figure", {}, h("figcaption", {}, t("status.chartConnections")), conn.el, connText),
      h("figure", {}, h("figcaption", {}, t("status.chartMessages")), rate.el, rateText),
      h("figure", {}, h("figcaption", {}, t("status.chartAck")), ack.el, ackText)),
    h("p", { class: "help" }, t("status.metricsNote")));
  let conns = [];
  let rates = [];
  let acks = []; // mean ACK latency of the ACKs between two polls, in ms
  let last = null;
  let kept = null; // where the history is kept across a reload (history.js), once the node is known
  async function tick() {
    if (!section.isConnected && last) return; // the page was left
    try {
      const n = await api.call("GET", "/node");
      if (!kept) {
        // The first answer names the node: its points from before a reload come back.
        kept = { owner: n.node, names: ["connections", "messages", "ack"], keep: KEEP, maxAgeMs: KEEP * POLL_MS };
        const before = history.restore(sessionStorage, "node", { ...kept, now: n.ts });
        ({ connections: conns, messages: rates, ack: acks } = before.series);
        last = before.extra && before.extra.ts < n.ts ? before.extra : null;
        section.setAttribute("data-restored", String(conns.length));
      }
      // A restarted node counts from zero again: no rate across that.
      if (last && (n.messages_stored < last.messages_stored || n.ack_latency_count < last.ack_latency_count)) last = null;
      conns.push({ t: n.ts, v: n.connections });
      if (last && n.ts > last.ts) rates.push({ t: n.ts, v: Math.max(0, (n.messages_stored - last.messages_stored) * 1000 / (n.ts - last.ts)) });
      if (last && n.ack_latency_count > last.ack_latency_count) {
        acks.push({ t: n.ts, v: (n.ack_latency_sum_s - last.ack_latency_sum_s) * 1000 / (n.ack_latency_count - last.ack_latency_count) });
      }
      last = n;
      conns.splice(0, Math.max(0, conns.length - KEEP));
      rates.splice(0, Math.max(0, rates.length - KEEP));
      acks.splice(0, Math.max(0, acks.length - KEEP));
      history.save(sessionStorage, "node", { ...kept, now: n.ts, series: { connections: conns, messages: rates, ack: acks },
        extra: { ts: n.ts, messages_stored: n.messages_stored, ack_latency_sum_s: n.ack_latency_sum_s, ack_latency_count: n.ack_latency_count } });
      const c = t("status.connectionsNow", { n: formatNumber(n.connections), auth: formatNumber(n.authenticated) });
      const r = t("status.messagesNow", { n: formatNumber(rates.length ? rates[rates.length - 1].v : 0, { maximumFractionDigits: 1 }),
        total: formatNumber(n.messages_stored) });
      const a = acks.length ? t("status.ackNow", { ms: formatNumber(acks[acks.length - 1].v, { maximumFractionDigits: 1 }) }) : t("status.ackNone");
      conn.update(conns, c);
      rate.update(rates, r);
      ack.update(acks, a);
      connText.textContent = c;
      rateText.textContent = r;
      ackText.textContent = a;
    } catch {
      return; // signed out, or the node went away: stop polling
    }
    setTimeout(tick, POLL_MS);
  }
  tick();
  return section;
}

// ---- 组织机构: the tree of organisation units (GET/POST /org, PATCH/DELETE /org/{id},
// PUT/DELETE /users/{name}/unit). The node checks every rule (unique sibling names,
// depth, no cycles, no deleting a unit with sub-units or members) and audits each change.

function unitPaths(units) {
  const byId = new Map(units.map((u) => [u.id, u]));
  const path = (u, seen = new Set()) => {
    if (!u.parent_id || seen.has(u.id) || !byId.has(u.parent_id)) return [u.name];
    seen.add(u.id);
    return [...path(byId.get(u.parent_id), seen), u.name];
  };
  return new Map(units.map((u) => [u.id, path(u).join(" / ")]));
}

export async function org(el, { api, t, errorText, ask }) {
  const status = h("p", { class: "status", role: "status", id: "org-status" });
  const tree = h("div", { id: "org-tree", class: "panel" });
  const say = (text, bad = false) => {
    status.textContent = text;
    status.classList.toggle("error", bad);
  };
  let units = [];
  let people = [];
  const createParent = h("div");
  const moveFields = h("div");
  const assignFields = h("div");

  // The status line is written after the tree is read again: once it shows the outcome,
  // the page (tree and selects) shows the state after the change.
  async function run(fn, done) {
    let text = done;
    let bad = false;
    try {
      await fn();
    } catch (err) {
      [text, bad] = [errorText(err), true];
    }
    try {
      await load();
    } catch (err) {
      if (!bad) [text, bad] = [errorText(err), true];
    }
    say(text, bad);
  }

  async function rename(u) {
    const v = await ask({ title: t("org.renameTitle", { name: u.name }), submit: t("org.rename"),
      fields: [{ name: "name", label: t("org.name"), value: u.name }] });
    if (!v) return;
    await run(() => api.call("PATCH", `/org/${encodeURIComponent(u.id)}`, { name: v.name }),
      t("org.renamed", { name: v.name.trim() }));
  }

  async function remove(u) {
    const ok = await ask({ title: t("org.deleteTitle", { name: u.name }), help: t("org.deleteHelp"),
      submit: t("org.delete"), fields: [] });
    if (!ok) return;
    await run(() => api.call("DELETE", `/org/${encodeURIComponent(u.id)}`), t("org.deleted", { name: u.name }));
  }

  function render() {
    const children = new Map();
    for (const u of units) {
      if (!children.has(u.parent_id)) children.set(u.parent_id, []);
      children.get(u.parent_id).push(u);
    }
    const members = new Map();
    for (const p of people) {
      if (!p.unit_id) continue;
      if (!members.has(p.unit_id)) members.set(p.unit_id, []);
      members.get(p.unit_id).push(p);
    }
    const branch = (parentId) => {
      const kids = children.get(parentId) || [];
      if (!kids.length) return null;
      return h("ul", { class: "org-branch" }, kids.map((u) => {
        const who = members.get(u.id) || [];
        return h("li", { "data-unit": u.name, "data-unit-id": u.id },
          h("div", { class: "org-unit" },
            h("span", { class: "org-name" }, u.name), " ",
            h("span", { class: "badge", "data-members": String(u.member_count) }, t("org.memberCount", { n: formatNumber(u.member_count) })),
            who.length ? h("span", { class: "muted org-people" }, " ", formatList(who.map((p) => p.display_name || p.username))) : null,
            h("span", { class: "row-actions" },
              h("button", { type: "button", class: "secondary small", "data-action": "rename",
                "aria-label": t("org.renameTitle", { name: u.name }), onclick: () => rename(u) }, t("org.rename")),
              h("button", { type: "button", class: "danger small", "data-action": "delete",
                "aria-label": t("org.deleteTitle", { name: u.name }), onclick: () => remove(u) }, t("org.delete")))),
          branch(u.id));
      }));
    };
    tree.replaceChildren(h("h2", {}, t("org.tree")),
      units.length ? branch("") : h("p", { class: "muted" }, t("org.none")));
    tree.setAttribute("data-count", String(units.length));
    const paths = unitPaths(units);
    const unitOptions = [...paths].sort((a, b) => a[1].localeCompare(b[1], "zh-CN")).map(([id, p]) => [id, p]);
    const ordinary = people.filter((p) => p.role === "user").map((p) => [p.username,
      p.display_name && p.display_name !== p.username ? `${p.display_name}（${p.username}）` : p.username]);
    createParent.replaceChildren(field(t("org.parent"), { name: "parent_id", options: [["", t("org.top")], ...unitOptions] }, "select"));
    moveFields.replaceChildren(
      field(t("org.unit"), { name: "unit_id", required: true, options: unitOptions }, "select"),
      field(t("org.newParent"), { name: "parent_id", options: [["", t("org.top")], ...unitOptions] }, "select"));
    assignFields.replaceChildren(
      field(t("org.user"), { name: "username", required: true, options: ordinary }, "select"),
      field(t("org.unit"), { name: "unit_id", options: [["", t("org.noUnit")], ...unitOptions] }, "select"));
  }

  async function load() {
    const [o, u] = await Promise.all([api.call("GET", "/org"), api.call("GET", "/users")]);
    units = o.units;
    people = u.users;
    render();
  }

  const create = h("form", { class: "panel inline-form", id: "org-create" },
    h("h2", {}, t("org.create")),
    field(t("org.name"), { name: "name", required: true, autocomplete: "off" }),
    createParent,
    h("button", { type: "submit", class: "primary" }, t("org.createSubmit")));
  create.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(create);
    await run(async () => {
      await api.call("POST", "/org", { name: v.name, parent_id: v.parent_id || "" });
      create.querySelector("input[name=name]").value = "";
    }, t("org.created", { name: v.name.trim() }));
  });

  const move = h("form", { class: "panel inline-form", id: "org-move" },
    h("h2", {}, t("org.move")), moveFields,
    h("button", { type: "submit", class: "secondary" }, t("org.moveSubmit")));
  move.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(move);
    const name = (units.find((u) => u.id === v.unit_id) || {}).name || "";
    await run(() => api.call("PATCH", `/org/${encodeURIComponent(v.unit_id)}`, { parent_id: v.parent_id || "" }),
      t("org.moved", { name }));
  });

  const assign = h("form", { class: "panel inline-form", id: "org-assign" },
    h("h2", {}, t("org.assign")), assignFields,
    h("button", { type: "submit", class: "primary" }, t("org.assignSubmit")));
  assign.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(assign);
    const path = `/users/${encodeURIComponent(v.username)}/unit`;
    const unitName = (units.find((u) => u.id === v.unit_id) || {}).name || "";
    await run(() => (v.unit_id ? api.call("PUT", path, { unit_id: v.unit_id }) : api.call("DELETE", path)),
      v.unit_id ? t("org.assigned", { name: v.username, unit: unitName }) : t("org.unassigned", { name: v.username }));
  });

  el.append(h("p", { class: "lead" }, t("org.lead")), create, status, tree, assign, move);
  await load();
}

// ---- 群组: group conversations, their names, sizes, creators and members (GET /groups,
// GET /groups/{id}/members). Never their messages: reading content is the auditor's,
// through a signed export or escrow, and audited as such.

const GROUP_PAGE = 50;

export async function groups(el, { api, t, errorText }) {
  const status = h("p", { class: "status", role: "status", id: "groups-status" });
  const list = h("div", { id: "groups-list" });
  const members = h("section", { class: "panel", id: "group-members", "aria-live": "polite", hidden: true });
  const more = h("button", { type: "button", class: "secondary", id: "groups-more", hidden: true }, t("groups.more"));
  let rows = [];
  let next = "";
  let query = "";

  async function show(g) {
    try {
      const m = await api.call("GET", `/groups/${encodeURIComponent(g.id)}/members`);
      members.hidden = false;
      members.setAttribute("data-group", g.id);
      members.replaceChildren(
        h("h2", { id: "group-members-title" }, t("groups.membersOf", { name: m.name, n: formatNumber(m.members.length) })),
        table(t("groups.membersCaption", { name: m.name }), [
          { head: t("groups.username"), cell: (x) => x.username || x.user_id },
          { head: t("groups.displayName"), cell: (x) => x.display_name || "—" },
          { head: t("groups.role"), cell: (x) => h("span", { class: "badge" }, t(`groups.role_${x.role}`)) },
        ], m.members, t("groups.noMembers")));
    } catch (err) {
      status.textContent = errorText(err);
      status.classList.add("error");
    }
  }

  function render() {
    list.replaceChildren(table(t("groups.caption"), [
      { head: t("groups.name"), cell: (g) => g.name },
      { head: t("groups.memberCount"), cell: (g) => formatNumber(g.member_count) },
      { head: t("groups.createdBy"), cell: (g) => g.created_by_username || g.created_by },
      { head: t("groups.createdAt"), cell: (g) => formatDateTime(g.created_at) },
      { head: t("groups.actions"), cell: (g) => h("button", { type: "button", class: "secondary small",
        "data-group": g.id, "aria-label": t("groups.showMembersOf", { name: g.name }), onclick: () => show(g) }, t("groups.showMembers")) },
    ], rows, query ? t("groups.noneMatching", { q: query }) : t("groups.none")));
    list.setAttribute("data-count", String(rows.length));
  }

  async function load(append) {
    try {
      const params = new URLSearchParams({ limit: String(GROUP_PAGE) });
      if (query) params.set("q", query);
      if (append && next) params.set("after", next);
      const r = await api.call("GET", `/groups?${params}`);
      rows = append ? [...rows, ...r.groups] : r.groups;
      next = r.next_after;
      more.hidden = !r.more;
      status.textContent = "";
      status.classList.remove("error");
      render();
    } catch (err) {
      status.textContent = errorText(err);
      status.classList.add("error");
    }
  }
  more.addEventListener("click", () => load(true));

  const search = h("form", { class: "panel inline-form", id: "groups-search", role: "search" },
    field(t("groups.search"), { name: "q", type: "search", autocomplete: "off" }),
    h("button", { type: "submit", class: "primary" }, t("groups.searchSubmit")));
  search.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    query = values(search).q.trim();
    members.hidden = true;
    await load(false);
  });
  el.append(h("p", { class: "lead" }, t("groups.lead")), search, status, list, more, members);
  await load(false);
}

// 配置: the node's effective configuration (GET /config), read-only, a table per section,
// with a filter on the key and the value. A secret is never sent: only whether it is set.
export async function config(el, { api, t }) {
  const c = await api.call("GET", "/config");
  const list = h("div", { id: "config-list" });
  const count = h("p", { class: "status", role: "status", id: "config-count" });
  const literal = (v) => (v === "" ? h("span", { class: "muted" }, t("config.empty"))
    : h("code", { class: "wrap" }, typeof v === "string" ? v : JSON.stringify(v)));
  const secret = (set) => h("span", { class: `badge ${set ? "state-active" : ""}`, "data-secret": set ? "set" : "unset" },
    set ? t("config.set") : t("config.unset"));
  const differs = (r) => (r.differs ? h("span", { class: "badge state-locked" }, t("config.changed"))
    : h("span", { class: "muted" }, t("config.default")));
  const name = (r) => h("code", { "data-key": r.key }, r.key);
  function render(q) {
    const needle = q.trim().toLowerCase();
    const match = (r) => !needle || r.key.toLowerCase().includes(needle)
      || (!r.redacted && String(r.value).toLowerCase().includes(needle));
    const shown = c.keys.filter(match);
    const sections = [...new Set(shown.map((r) => r.section))];
    list.replaceChildren(...sections.map((s) => {
      const title = s || t("config.general");
      const id = `cfg-${(s || "general").replace(/\./g, "-")}`;
      return h("section", { class: "panel", "aria-labelledby": id, "data-section": s || "general" },
        h("h2", { id }, title),
        table(t("config.caption", { section: title }), [
          { head: t("config.key"), cell: name },
          { head: t("config.value"), cell: (r) => (r.redacted ? secret(r.set) : literal(r.value)) },
          { head: t("config.defaultValue"), cell: (r) => (r.redacted ? h("span", { class: "muted" }, t("config.redacted")) : literal(r.default)) },
          { head: t("config.differs"), cell: differs },
        ], shown.filter((r) => r.section === s), t("config.none")));
    }));
    if (!shown.length) list.append(h("p", { class: "muted", id: "config-none" }, t("config.noneMatching", { q })));
    count.textContent = t("config.count", { shown: formatNumber(shown.length), total: formatNumber(c.keys.length),
      changed: formatNumber(c.keys.filter((r) => r.differs).length) });
  }
  const filter = field(t("config.filter"), { type: "search", id: "config-filter", autocomplete: "off" });
  filter.querySelector("input").addEventListener("input", (ev) => render(ev.target.value));
  el.append(h("p", { class: "lead" }, t("config.lead")),
    h("div", { class: "panel inline-form", role: "search" }, filter),
    count, list,
    h("section", { class: "panel", "aria-labelledby": "cfg-env" },
      h("h2", { id: "cfg-env" }, t("config.environment")),
      h("p", { class: "help" }, t("config.environmentHelp")),
      table(t("config.environment"), [
        { head: t("config.variable"), cell: (e) => h("code", { "data-env": e.name }, e.name) },
        { head: t("config.value"), cell: (e) => secret(e.set) },
      ], c.environment || [], t("config.none"))));
  render("");
}
