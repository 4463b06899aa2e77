// 审计管理员: the audit trail (filter by actor, event, outcome and time; paged),
// verifying the chain and signing its head, the 等保 compliance report (viewed
// and downloaded), and two-person escrow requests.
import { h, field, values, table, download } from "../dom.js";
import { formatDate, formatDateTime, formatNumber, getLanguage } from "../../i18n/index.js";
import { summarise } from "../auditfile.js";

// Audit records to the second.
const stamp = (ms) => formatDate(ms, { dateStyle: "medium", timeStyle: "medium" });

const PAGE = 50;
const BASE = new Set(["seq", "ts", "event", "actor", "actor_role", "target", "outcome", "source", "node", "prev", "hash"]);

function reporter(id) {
  const status = h("p", { class: "status", role: "status", id });
  return [status, (text, bad = false) => {
    status.textContent = text;
    status.classList.toggle("error", bad);
  }];
}

const toMs = (local) => (local ? String(new Date(local).getTime()) : "");

function outcomeBadge(t, outcome) {
  const cls = outcome === "ok" ? "state-active" : outcome === "denied" ? "state-locked" : "state-disabled";
  return h("span", { class: `badge ${cls}` }, t(`audit.outcome_${outcome}`) === `audit.outcome_${outcome}` ? outcome
    : t(`audit.outcome_${outcome}`));
}

export async function audit(el, { api, t, errorText }) {
  const [status, say] = reporter("audit-status");
  const results = h("div", { id: "audit-records" });
  const pager = h("div", { class: "pager" });
  const verifyBox = h("section", { class: "panel", id: "verify-result", "aria-live": "polite", hidden: true });
  let cursors = [0]; // the "before" of each page seen (0: from the newest); the last is the current page
  let query = {};
  let next = null;
  // Loads overlap (a clear's reload, then a search): only the newest may draw the
  // table, or the page could show another query's records than it downloads.
  let generation = 0;

  const filters = h("form", { class: "panel filters", id: "audit-filters" },
    h("h2", {}, t("audit.filters")),
    field(t("audit.actor"), { name: "actor", autocomplete: "off", autocapitalize: "none", placeholder: t("audit.actorHint") }),
    field(t("audit.event"), { name: "event", autocomplete: "off", autocapitalize: "none", placeholder: t("audit.eventHint") }),
    field(t("audit.outcome"), { name: "outcome", options: [["", t("audit.any")], ["ok", t("audit.outcome_ok")],
      ["denied", t("audit.outcome_denied")], ["failed", t("audit.outcome_failed")]] }, "select"),
    field(t("audit.from"), { name: "from", type: "datetime-local", step: "1" }),
    field(t("audit.to"), { name: "to", type: "datetime-local", step: "1" }),
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary" }, t("audit.search")),
      h("button", { type: "reset", class: "secondary" }, t("audit.clear"))));

  async function load() {
    const mine = ++generation;
    const before = cursors[cursors.length - 1];
    const q = new URLSearchParams({ order: "desc", before: String(before), limit: String(PAGE) });
    for (const [k, v] of Object.entries(query)) if (v) q.set(k, v);
    results.setAttribute("aria-busy", "true");
    let r;
    try {
      r = await api.call("GET", `/audit?${q}`);
    } finally {
      if (mine === generation) results.removeAttribute("aria-busy");
    }
    if (mine !== generation) return; // a newer load draws the table
    next = r.more ? r.next_before : null;
    const details = (rec) => {
      const extra = Object.entries(rec).filter(([k]) => !BASE.has(k));
      const text = extra.map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
      // Long details (a reason with a path, a summary) are cut in the table; the whole text is its title.
      return extra.length ? h("code", { class: "details", title: text.length > 200 ? text : null },
        text.length > 200 ? `${text.slice(0, 200)}…` : text) : "";
    };
    results.replaceChildren(table(t("audit.caption"), [
      { head: "#", cell: (x) => String(x.seq) },
      { head: t("audit.time"), cell: (x) => stamp(x.ts) },
      { head: t("audit.event"), cell: (x) => h("code", {}, x.event) },
      { head: t("audit.actor"), cell: (x) => [x.actor || "—", x.actor_role ? h("div", { class: "muted" }, t(`role.${x.actor_role}`)) : null] },
      // Data, not text: an operation or event name may look like a catalogue key.
      { head: t("audit.target"), cell: (x) => (x.target ? h("span", { translate: "no" }, x.target) : "—") },
      { head: t("audit.outcome"), cell: (x) => outcomeBadge(t, x.outcome) },
      { head: t("audit.details"), cell: details },
    ], r.records, t("audit.none")));
    results.setAttribute("data-count", String(r.records.length));
    pager.replaceChildren(
      h("button", { type: "button", class: "secondary", id: "audit-prev", disabled: cursors.length < 2,
        onclick: () => { cursors.pop(); load().catch((e) => say(errorText(e), true)); } }, t("audit.prev")),
      h("span", { id: "audit-page" }, t("audit.page", { n: formatNumber(cursors.length) })),
      h("button", { type: "button", class: "secondary", id: "audit-next", disabled: next === null,
        onclick: () => { cursors.push(next); load().catch((e) => say(errorText(e), true)); } }, t("audit.next")));
  }
  // The whole result of the search shown (every page, not only this one) as a file:
  // GET /audit/download with the same filters, newest first like the pages. The node
  // stops at its cap and ends the file with a marker, which is told here in words.
  const downloads = h("div", { class: "toolbar", id: "audit-downloads" },
    ["jsonl", "csv"].map((fmt) => h("button", { type: "button", class: "secondary", id: `audit-download-${fmt}`,
      onclick: async (ev) => {
        const button = ev.currentTarget;
        const q = new URLSearchParams({ format: fmt, order: "desc" });
        for (const [k, v] of Object.entries(query)) if (v) q.set(k, v);
        button.disabled = true;
        say(t("audit.downloading"));
        try {
          const text = await api.fetchFile(`/audit/download?${q}`);
          const stampNow = new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
          const name = `tongxin-audit-${stampNow}.${fmt}`;
          download(name, fmt === "csv" ? "text/csv" : "application/x-ndjson", text);
          const { count, truncated } = summarise(fmt, text);
          say(truncated ? t("audit.downloadCapped", { n: formatNumber(count) })
            : t("audit.downloaded", { n: formatNumber(count), file: name }), truncated);
        } catch (err) {
          say(errorText(err), true);
        } finally {
          button.disabled = false;
        }
      } }, t(`audit.download_${fmt}`))),
    h("p", { class: "help" }, t("audit.downloadHint")));
  filters.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(filters);
    query = { actor: v.actor.trim(), event: v.event.trim(), outcome: v.outcome, from_ms: toMs(v.from), to_ms: toMs(v.to) };
    cursors = [0];
    try {
      await load();
      say("");
    } catch (err) {
      say(errorText(err), true);
    }
  });
  filters.addEventListener("reset", () => {
    query = {};
    cursors = [0];
    setTimeout(() => load().catch((e) => say(errorText(e), true)));
  });

  async function verify() {
    try {
      const r = await api.call("POST", "/audit/verify");
      verifyBox.hidden = false;
      verifyBox.replaceChildren(
        h("h2", {}, t("audit.verifyTitle")),
        h("p", { id: "verify-verdict", class: r.ok ? "verdict ok" : "verdict bad" }, r.ok ? t("audit.chainOk") : t("audit.chainBad")),
        h("dl", { class: "facts" },
          h("dt", {}, t("audit.range")), h("dd", { id: "verify-range" }, `${r.first_seq} – ${r.last_seq}`),
          h("dt", {}, t("audit.hot")), h("dd", {}, formatNumber(r.hot_records)),
          h("dt", {}, t("audit.archived")), h("dd", {}, formatNumber(r.archived_records)),
          h("dt", {}, t("audit.heads")), h("dd", {}, `${formatNumber(r.heads_verified)} / ${formatNumber(r.heads_total)}`),
          h("dt", {}, t("audit.lastSigned")), h("dd", {}, r.latest_signed_seq ? `#${r.latest_signed_seq} · ${formatDateTime(r.latest_signed_ts)}` : "—"),
          h("dt", {}, t("audit.keys")), h("dd", {}, r.key_fingerprints.map((k) => h("code", { class: "wrap" }, k)))),
        r.problems.length ? h("ul", { class: "problems" }, r.problems.map((p) =>
          h("li", { "data-kind": p.kind }, `${p.where} #${p.seq} ${p.kind}: ${p.message}`))) : null,
        r.problems.some((p) => /trusted-key|not-pinned/.test(p.kind)) ? h("p", { class: "help", id: "pin-hint" }, t("audit.pinHint")) : null);
    } catch (err) {
      say(errorText(err), true);
    }
  }
  async function sign() {
    try {
      const r = await api.call("POST", "/audit/sign");
      say(t("audit.signed", { seq: r.seq }));
    } catch (err) {
      say(errorText(err), true);
    }
  }
  el.append(h("p", { class: "lead" }, t("audit.lead")),
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "primary", id: "verify-chain", onclick: verify }, t("audit.verify")),
      h("button", { type: "button", class: "secondary", id: "sign-head", onclick: sign }, t("audit.sign"))),
    verifyBox, filters, downloads, status, results, pager);
  await load();
}

function reportHtml(title, body) {
  return `<!doctype html><html lang="${getLanguage()}"><head><meta charset="utf-8"><title>${title}</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}.badge{font-weight:bold}.sr-only{position:absolute;left:-9999px}</style>
</head><body>${body}</body></html>`;
}

export async function report(el, { api, t, errorText }) {
  const [status, say] = reporter("report-status");
  const view = h("div", { id: "report-view" });
  let data = null;
  async function load() {
    data = await api.call("GET", "/report");
    const s = data.summary;
    // The server writes every finding in Chinese (findings_zh) and English (findings).
    const zh = getLanguage() === "zh-CN";
    const findings = (i) => (zh && i.findings_zh?.length === i.findings.length ? i.findings_zh : i.findings);
    const statusBadge = (st) => h("span", { class: `badge report-${st}` }, t(`report.status_${st}`));
    view.replaceChildren(
      h("h2", { id: "report-title" }, data.title),
      h("p", {}, data.standard),
      h("dl", { class: "facts" },
        h("dt", {}, t("report.generated")), h("dd", {}, `${formatDateTime(data.generated_at)} · ${data.generated_by}`),
        h("dt", {}, t("report.node")), h("dd", {}, `${data.node_id || data.host} · ${data.version}`),
        h("dt", {}, t("report.summary")), h("dd", { id: "report-summary" },
          t("report.summaryText", { pass: formatNumber(s.pass), fail: formatNumber(s.fail), gap: formatNumber(s.gap) })),
        h("dt", {}, t("report.chain")), h("dd", {}, data.audit_verify.ok ? t("audit.chainOk") : t("audit.chainBad"))),
      table(t("report.caption"), [
        { head: t("report.item"), cell: (i) => [h("strong", {}, i.id), h("div", { class: "muted" }, i.clause)] },
        { head: t("report.requirement"), cell: (i) => [h("div", { class: "muted" }, i.category), h("div", {}, i.title)] },
        { head: t("report.status"), cell: (i) => statusBadge(i.status) },
        { head: t("report.evidence"), cell: (i) => h("ul", { class: "evidence" },
          // The evidence as the node recorded it: settings, events and operations by name.
          findings(i).map((f) => h("li", { class: "finding" }, f)), i.evidence.map((e) => h("li", { translate: "no" }, e))) },
      ], data.items, "—"));
  }
  const fileStamp = () => new Date(data.generated_at).toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
  el.append(h("p", { class: "lead" }, t("report.lead")),
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "secondary", id: "report-refresh", onclick: () => load().then(() => say(t("report.refreshed")), (e) => say(errorText(e), true)) }, t("report.refresh")),
      h("button", { type: "button", class: "primary", id: "report-download-html", onclick: () =>
        download(`tongxin-dengbao-report-${fileStamp()}.html`, "text/html", reportHtml(data.title, view.innerHTML)) }, t("report.downloadHtml")),
      h("button", { type: "button", class: "secondary", id: "report-download-json", onclick: () =>
        download(`tongxin-dengbao-report-${fileStamp()}.json`, "application/json", JSON.stringify(data, null, 2)) }, t("report.downloadJson"))),
    status, view);
  await load();
}

// Export one user's or one conversation's messages for a time range (POST /export,
// signed by the node's audit key), then download its three files.
export async function exportPage(el, { api, t, errorText }) {
  const [status, say] = reporter("export-status");
  const result = h("div", { id: "export-result" });
  const form = h("form", { class: "form-grid", id: "export-form" },
    field(t("export.user"), { name: "user", autocomplete: "off", placeholder: t("export.userHint") }),
    field(t("export.conversation"), { name: "conversation_id", autocomplete: "off" }),
    field(t("export.from"), { name: "from", type: "datetime-local" }),
    field(t("export.to"), { name: "to", type: "datetime-local" }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "export-run" }, t("export.run"))));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(form);
    if (!v.user && !v.conversation_id) {
      say(t("export.needTarget"), true);
      return;
    }
    const body = v.user ? { user: v.user.trim() } : { conversation_id: v.conversation_id.trim() };
    if (v.from) body.from_ms = Number(toMs(v.from));
    if (v.to) body.to_ms = Number(toMs(v.to));
    say(t("export.running"));
    try {
      const r = await api.call("POST", "/export", body);
      const m = r.manifest;
      const file = (m.files || [])[0] || {};
      const names = ["messages.jsonl", "manifest.json", "manifest.sig"];
      const files = {};
      for (const name of names) files[name] = await api.fetchFile(`/exports/${m.export_id}/${name}`);
      result.replaceChildren(h("dl", { class: "facts" },
        h("dt", {}, t("export.id")), h("dd", { id: "export-id" }, m.export_id),
        h("dt", {}, t("export.records")), h("dd", { id: "export-records" }, formatNumber(m.records)),
        h("dt", {}, t("export.digest")), h("dd", { class: "mono" }, t("export.digestValue", { sm3: file.sm3 || "—", n: formatNumber(file.bytes || 0) })),
        h("dt", {}, t("export.where")), h("dd", { class: "mono" }, r.path)),
      h("div", { class: "toolbar" }, names.map((name) =>
        h("button", { type: "button", class: "secondary", "data-file": name, onclick: () => {
          // Fetched with the export: a download started after an await loses the
          // click's user activation, and browsers may then refuse it.
          download(`${m.export_id}-${name}`, name.endsWith(".jsonl") ? "application/x-ndjson" : "application/json", files[name]);
          say(t("export.downloaded", { name }));
        } }, t("export.download", { name })))),
      h("p", { class: "help" }, t("export.verifyHint")));
      say(t("export.done", { n: formatNumber(m.records) }));
    } catch (e) {
      say(errorText(e), true);
    }
  });
  el.append(h("p", { class: "lead" }, t("export.lead")), form, status, result);
}

const MINE = "tongxin.console.escrow";

export async function escrow(el, { api, t, errorText }) {
  const [status, say] = reporter("escrow-status");
  const mine = h("div", { id: "escrow-mine" });
  const result = h("div", { id: "escrow-result" });
  const stored = () => JSON.parse(sessionStorage.getItem(MINE) || "[]");
  function showMine() {
    mine.replaceChildren(table(t("escrow.mineCaption"), [
      { head: t("escrow.requestId"), cell: (r) => h("code", {}, r.request_id) },
      { head: t("escrow.conversation"), cell: (r) => r.conversation_id },
      { head: t("escrow.range"), cell: (r) => `${formatDateTime(r.from_ms)} – ${formatDateTime(r.to_ms)}` },
      { head: t("users.actions"), cell: (r) => h("button", { type: "button", class: "secondary small",
        onclick: () => collect(r.request_id) }, t("escrow.collect")) },
    ], stored(), t("escrow.none")));
  }
  async function collect(id) {
    try {
      const r = await api.call("GET", `/e2ee/escrow-requests/${encodeURIComponent(id)}`);
      sessionStorage.setItem(MINE, JSON.stringify(stored().filter((x) => x.request_id !== id)));
      showMine();
      result.replaceChildren(h("h2", {}, t("escrow.resultTitle", { id })), table(t("escrow.resultCaption"), [
        { head: "#", cell: (x) => String(x.seq) },
        { head: t("audit.time"), cell: (x) => formatDateTime(x.sent_at_ms) },
        { head: t("escrow.sender"), cell: (x) => x.sender_id },
        { head: t("escrow.content"), cell: (x) => x.error || x.text || (x.attachment ? x.attachment.name : x.kind) },
      ], r.entries, t("escrow.noEntries")));
    } catch (err) {
      say(errorText(err), true);
    }
  }
  const form = h("form", { class: "panel inline-form", id: "escrow-form" },
    h("h2", {}, t("escrow.new")),
    field(t("escrow.conversation"), { name: "conversation_id", required: true, autocomplete: "off", spellcheck: "false" }),
    field(t("audit.from"), { name: "from", type: "datetime-local", required: true, step: "1" }),
    field(t("audit.to"), { name: "to", type: "datetime-local", required: true, step: "1" }),
    field(t("escrow.reason"), { name: "reason", required: true, autocomplete: "off" }),
    field(t("escrow.share"), { name: "share", required: true, autocomplete: "off", spellcheck: "false" }, "textarea"),
    h("button", { type: "submit", class: "primary" }, t("escrow.submit")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(form);
    const body = { conversation_id: v.conversation_id.trim(), from_ms: Number(toMs(v.from)), to_ms: Number(toMs(v.to)),
      reason: v.reason.trim(), share: v.share.trim() };
    try {
      const r = await api.call("POST", "/e2ee/escrow-requests", body);
      sessionStorage.setItem(MINE, JSON.stringify([...stored(), r]));
      form.reset();
      showMine();
      say(t("escrow.requested", { id: r.request_id }));
    } catch (err) {
      say(errorText(err), true);
    }
  });
  const collectForm = h("form", { class: "panel inline-form", id: "collect-form" },
    field(t("escrow.requestId"), { name: "request_id", required: true, autocomplete: "off", spellcheck: "false" }),
    h("button", { type: "submit", class: "secondary" }, t("escrow.collect")));
  collectForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    collect(values(collectForm).request_id.trim());
  });
  el.append(h("p", { class: "lead" }, t("escrow.lead")), form, status,
    h("section", { class: "panel" }, h("h2", {}, t("escrow.mine")), mine, collectForm), result);
  showMine();
}

// 演练报告: every evidence file of the node (GET /evidence: backups, restore tests, DR
// drills), newest first; one opened shows its figures, its JSON (downloaded as it is
// on the node) and, for a drill, its HTML page rendered by the node in a frame that
// runs nothing (sandbox; the node's answer carries its own CSP).
export async function drills(el, { api, t, errorText }) {
  const [status, say] = reporter("drills-status");
  const list = h("div", { id: "drills-list" });
  const detail = h("section", { class: "panel", id: "drill-detail", "aria-live": "polite", hidden: true });
  const drillKind = (k) => (k === "dr" || k === "incity" ? t(`drills.drillKind_${k}`) : k || "—");
  const kindText = (r) => (r.type === "dr-drill" ? t("drills.type_drill", { kind: drillKind(r.kind) })
    : t(`drills.type_${r.type}`));
  const outcome = (r) => h("span", { class: `badge ${r.ok ? "state-active" : "state-disabled"}` },
    r.ok ? t("drills.ok") : t("drills.failed"));
  const seconds = (v) => (typeof v === "number" ? t("drills.seconds", { n: formatNumber(v) }) : "—");
  const when = (r) => (r.finished_at ? formatDateTime(r.finished_at) : "—");
  function what(r) {
    if (r.error) return h("span", { class: "error-text" }, r.error);
    if (r.type === "dr-drill") return t("drills.drillDetail", { rpo: seconds(r.rpo_seconds), rto: seconds(r.rto_seconds) });
    if (r.type === "backup") return t("drills.backupDetail", { id: r.id || "—", size: formatNumber(Math.round((r.bytes || 0) / 1024)) });
    return t("drills.restoreDetail", { id: r.backup || "—" });
  }
  async function open(r) {
    try {
      const d = await api.call("GET", `/evidence/${encodeURIComponent(r.file)}`);
      const row = (k, v, id) => [h("dt", {}, k), h("dd", { id }, v)];
      const frame = h("div", { id: "drill-html" });
      const problems = Array.isArray(d.problems) && d.problems.length
        ? h("ul", { id: "drill-problems" }, d.problems.map((p) => h("li", {}, p))) : t("drills.none");
      detail.hidden = false;
      detail.setAttribute("data-file", d.file);
      detail.replaceChildren(
        h("h2", { id: "drill-title" }, t("drills.detailTitle", { kind: kindText(d), when: when(d) })),
        h("dl", { class: "facts" },
          row(t("drills.file"), h("code", {}, d.file), "drill-file"),
          row(t("drills.outcome"), outcome(d), "drill-outcome"),
          d.type === "dr-drill" ? [row(t("drills.rpo"), seconds(d.rpo_seconds), "drill-rpo"),
            row(t("drills.rto"), seconds(d.rto_seconds), "drill-rto"),
            row(t("drills.rtoAll"), seconds(d.rto_all_users_seconds), "drill-rto-all"),
            row(t("drills.problems"), problems, "drill-problems-row")] : null,
          d.type === "backup" ? [row(t("drills.backupId"), d.id || "—", "drill-backup-id"),
            row(t("drills.size"), t("drills.kib", { n: formatNumber(Math.round((d.bytes || 0) / 1024)) }), "drill-size")] : null,
          d.type === "restore" ? row(t("drills.backupId"), d.backup || "—", "drill-backup-id") : null,
          row(t("drills.duration"), seconds(d.duration_seconds ?? d.report?.workload?.duration_seconds), "drill-duration"),
          d.error ? row(t("drills.error"), d.error, "drill-error") : null),
        h("div", { class: "toolbar" },
          h("button", { type: "button", class: "secondary", id: "drill-download", onclick: async () => {
            try {
              download(d.file, "application/json", await api.fetchFile(`/evidence/${encodeURIComponent(d.file)}?download=1`));
            } catch (err) {
              say(errorText(err), true);
            }
          } }, t("drills.downloadJson")),
          d.html ? h("button", { type: "button", class: "primary", id: "drill-open-html", onclick: async () => {
            try {
              const page = await api.fetchFile(`/evidence/${encodeURIComponent(d.file)}/html`);
              // sandbox="": no script, no form, no navigation of the console, its own origin.
              frame.replaceChildren(h("iframe", { class: "report-frame", sandbox: "", srcdoc: page, id: "drill-frame",
                title: t("drills.htmlTitle", { file: d.file }) }));
            } catch (err) {
              say(errorText(err), true);
            }
          } }, t("drills.openHtml")) : null),
        h("details", {}, h("summary", {}, t("drills.json")),
          h("pre", { class: "json", id: "drill-json", tabindex: "0" }, JSON.stringify(d.report, null, 2))),
        frame);
      say("");
    } catch (err) {
      say(errorText(err), true);
    }
  }
  const { records } = await api.call("GET", "/evidence");
  list.replaceChildren(table(t("drills.caption"), [
    { head: t("drills.kind"), cell: kindText },
    { head: t("drills.finished"), cell: when },
    { head: t("drills.outcome"), cell: outcome },
    { head: t("drills.detail"), cell: what },
    { head: t("drills.actions"), cell: (r) => (r.unreadable ? h("span", { class: "muted" }, t("drills.unreadable"))
      : h("button", { type: "button", class: "secondary small", "data-file": r.file,
        "aria-label": t("drills.openOf", { file: r.file }), onclick: () => open(r) }, t("drills.open"))) },
  ], records, t("drills.noneYet")));
  list.setAttribute("data-count", String(records.length));
  el.append(h("p", { class: "lead" }, t("drills.lead")), status, list, detail);
}
