// 安全管理员: administrators and their second factor (TOTP enrolment with a QR
// code), role assignment, the audit signing key, retention and legal holds,
// escrow approvals.
import QRCode from "qrcode";
import { h, field, values, table } from "../dom.js";
import { formatDateTime, formatNumber } from "../../i18n/index.js";

function reporter(t, id) {
  const status = h("p", { class: "status", role: "status", id });
  return [status, (text, bad = false) => {
    status.textContent = text;
    status.classList.toggle("error", bad);
  }];
}

export async function admins(el, { api, t, session, errorText }) {
  const [status, say] = reporter(t, "admins-status");
  const list = h("div", { id: "admins-list" });
  const enrolment = h("section", { class: "panel enrol", id: "enrolment", "aria-live": "polite", hidden: true });

  async function resetTotp(name) {
    try {
      const r = await api.call("POST", `/users/${encodeURIComponent(name)}/totp`);
      const qr = await QRCode.toDataURL(r.uri, { margin: 1, width: 220, errorCorrectionLevel: "M" });
      enrolment.hidden = false;
      enrolment.replaceChildren(
        h("h2", {}, t("admins.enrolTitle", { name: r.username })),
        h("p", {}, t("admins.enrolHelp")),
        h("img", { src: qr, id: "totp-qr", width: 220, height: 220, alt: t("admins.qrAlt", { name: r.username }) }),
        h("dl", { class: "facts" },
          h("dt", {}, t("admins.secret")), h("dd", {}, h("code", { id: "totp-secret" }, r.secret)),
          h("dt", {}, t("admins.uri")), h("dd", {}, h("code", { id: "totp-uri", class: "wrap" }, r.uri))),
        h("p", { class: "warn" }, t("admins.onceOnly")),
        h("button", { type: "button", class: "secondary", onclick: () => { enrolment.hidden = true; enrolment.replaceChildren(); } },
          t("admins.enrolDone")));
      say(t("admins.enrolled", { name: r.username }));
      await load();
    } catch (err) {
      say(errorText(err), true);
    }
  }

  async function signOut(name) {
    try {
      const r = await api.call("POST", `/users/${encodeURIComponent(name)}/sign-out`);
      say(t("admins.signedOut", { name: r.username, n: formatNumber(r.revoked_tokens) }));
    } catch (err) {
      say(errorText(err), true);
    }
  }

  async function load() {
    const r = await api.call("GET", "/roles");
    list.replaceChildren(table(t("admins.caption"), [
      { head: t("users.username"), cell: (u) => u.username },
      { head: t("users.role"), cell: (u) => t(`role.${u.role}`) },
      { head: t("users.state"), cell: (u) => h("span", { class: `badge state-${u.state}` }, t(`state.${u.state}`)) },
      { head: t("admins.totp"), cell: (u) => (u.totp ? t("status.yes") : t("status.no")) },
      { head: t("admins.sms"), cell: (u) => (u.sms ? t("status.yes") : t("status.no")) },
      { head: t("users.actions"), cell: (u) => (u.id === session.userId ? h("span", { class: "muted" }, t("admins.self"))
        : [h("button", { type: "button", class: "secondary small", "data-totp": u.username,
          onclick: () => resetTotp(u.username) }, t("admins.resetTotp")),
        " ",
        h("button", { type: "button", class: "secondary small", "data-signout": u.username,
          onclick: () => signOut(u.username) }, t("admins.signOut"))]) },
    ], r.admins, t("users.none")));
    const sensitive = new Set(r.sensitive);
    perms.replaceChildren(table(t("admins.permCaption"), [
      { head: t("users.role"), cell: ([role]) => t(`role.${role}`) },
      { head: t("admins.operations"), cell: ([, ops]) => (ops.length ? ops.map((op) =>
        h("span", { class: sensitive.has(op) ? "op sensitive" : "op" }, op)) : "—") },
    ], Object.entries(r.roles), ""));
  }
  const perms = h("div", { id: "permissions" });

  const roleForm = h("form", { class: "panel inline-form", id: "assign-role" },
    h("h2", {}, t("admins.assign")),
    field(t("users.username"), { name: "username", required: true, autocomplete: "off", autocapitalize: "none" }),
    field(t("users.role"), { name: "role", options: ["user", "sysadmin", "secadmin", "auditor"].map((r) =>
      [r, t(`role.${r}`)]) }, "select"),
    h("button", { type: "submit", class: "primary" }, t("admins.assignSubmit")));
  roleForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(roleForm);
    try {
      const r = await api.call("PUT", `/users/${encodeURIComponent(v.username.trim().toLowerCase())}/role`, { role: v.role });
      say(t("admins.assigned", { name: r.username, before: t(`role.${r.before}`), role: t(`role.${r.role}`) }));
      roleForm.reset();
      await load();
    } catch (err) {
      say(errorText(err), true);
    }
  });
  el.append(h("p", { class: "lead" }, t("admins.lead")), status, enrolment, list, roleForm,
    h("section", { class: "panel" }, h("h2", {}, t("admins.permissions")), perms));
  await load();
}

export async function keys(el, { api, t, errorText, ask }) {
  const [status, say] = reporter(t, "keys-status");
  const result = h("dl", { class: "facts", id: "rotation" });
  const button = h("button", { type: "button", class: "primary", id: "rotate-audit-key", onclick: async () => {
    const ok = await ask({ title: t("keys.confirmTitle"), help: t("keys.confirmHelp"), submit: t("keys.rotate"), fields: [] });
    if (!ok) return;
    try {
      const r = await api.call("POST", "/keys/audit/rotate");
      result.replaceChildren(
        h("dt", {}, t("keys.old")), h("dd", {}, h("code", {}, r.old_fingerprint || "—")),
        h("dt", {}, t("keys.new")), h("dd", {}, h("code", { id: "new-fingerprint" }, r.fingerprint)));
      say(t("keys.rotated"));
    } catch (err) {
      say(errorText(err), true);
    }
  } }, t("keys.rotate"));
  el.append(h("p", { class: "lead" }, t("keys.lead")),
    h("section", { class: "panel" }, h("h2", {}, t("keys.audit")), h("p", {}, t("keys.auditHelp")), button, result),
    status, h("p", { class: "help" }, t("keys.atRestNote")));
}

// The password and lockout policy in force (GET /policy), rule by rule against
// 等保's thresholds. It is set in the configuration, not here: the page says where.
export async function policy(el, { api, t }) {
  const p = await api.call("GET", "/policy");
  const unit = (key) => (key.endsWith("_days") ? t("policy.days") : /timeout|duration|window|ttl/.test(key) ? t("policy.seconds") : "");
  const verdict = (ok) => (ok === null ? h("span", { class: "muted" }, t("policy.noRule"))
    : h("span", { class: `badge ${ok ? "state-active" : "state-disabled"}` }, ok ? t("policy.meets") : t("policy.short")));
  el.append(h("p", { class: "lead" }, t("policy.lead")),
    h("p", { id: "policy-verdict", class: p.meets_dengbao ? "status" : "status error" },
      p.meets_dengbao ? t("policy.allMet") : t("policy.notAllMet")),
    table(t("policy.caption"), [
      { head: t("policy.setting"), cell: (r) => [h("div", {}, t(`policy.key.${r.key}`)), h("code", { class: "muted" }, `accounts.${r.key}`)] },
      { head: t("policy.value"), cell: (r) => `${formatNumber(r.value)} ${unit(r.key)}`.trim() },
      { head: t("policy.required"), cell: (r) => r.required || "—" },
      { head: t("policy.status"), cell: (r) => h("span", { "data-key": r.key }, verdict(r.ok)) },
    ], p.rules, "—"),
    h("p", { class: "help" }, t("policy.where")));
}

export async function retention(el, { api, t, errorText }) {
  const [status, say] = reporter(t, "retention-status");
  const view = h("div", { id: "retention-view" });
  const holdsBox = h("div", { id: "holds" });
  async function release(hold) {
    try {
      await api.call("DELETE", `/holds/${hold.id}`);
      say(t("retention.released", { id: hold.id }));
      await load();
    } catch (err) {
      say(errorText(err), true);
    }
  }
  function show(r) {
    const days = (d) => (d > 0 ? t("retention.days", { n: formatNumber(d) }) : t("retention.forever"));
    view.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, t("retention.audit")), h("dd", { id: "audit-days" }, days(r.audit_retention_days),
        r.audit_retention_override ? ` · ${t("retention.override")}` : ""),
      Object.entries(r.message_policies).map(([scope, d]) => [
        h("dt", {}, scope === "default" ? t("retention.messagesDefault") : t("retention.messagesFor", { scope })),
        h("dd", {}, days(d))]),
      h("dt", {}, t("retention.lastRun")),
      h("dd", {}, r.last_run ? formatDateTime(r.last_run.started_at || r.last_run.finished_at || 0) : "—")));
    holdsBox.replaceChildren(table(t("retention.holdsCaption"), [
      { head: "#", cell: (x) => String(x.id) },
      { head: t("retention.kind"), cell: (x) => t(`retention.kind_${x.kind}`) },
      { head: t("retention.target"), cell: (x) => x.target },
      { head: t("retention.reason"), cell: (x) => x.reason },
      { head: t("retention.since"), cell: (x) => formatDateTime(x.created_at) },
      { head: t("users.actions"), cell: (x) => h("button", { type: "button", class: "secondary small",
        "data-release": String(x.id), onclick: () => release(x) }, t("retention.release")) },
    ], r.holds, t("retention.noHolds")));
  }
  async function load() {
    show(await api.call("GET", "/retention"));
  }
  const holdForm = h("form", { class: "panel inline-form", id: "hold-form" },
    h("h2", {}, t("retention.newHold")),
    field(t("retention.kind"), { name: "kind", options: [["user", t("retention.kind_user")],
      ["conversation", t("retention.kind_conversation")]] }, "select"),
    field(t("retention.targetHelp"), { name: "target", required: true, autocomplete: "off" }),
    field(t("retention.reason"), { name: "reason", required: true, autocomplete: "off" }),
    h("button", { type: "submit", class: "primary" }, t("retention.setHold")));
  holdForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const x = await api.call("POST", "/holds", values(holdForm));
      holdForm.reset();
      say(t("retention.holdSet", { id: x.id }));
      await load();
    } catch (err) {
      say(errorText(err), true);
    }
  });
  const auditForm = h("form", { class: "panel inline-form", id: "audit-retention-form" },
    h("h2", {}, t("retention.setAudit")),
    field(t("retention.auditDays"), { name: "days", type: "number", min: "1", step: "1", required: true }),
    field(t("retention.reason"), { name: "reason", autocomplete: "off" }),
    h("button", { type: "submit", class: "primary" }, t("retention.save")));
  auditForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(auditForm);
    try {
      show(await api.call("PUT", "/retention", { audit_retention_days: Number(v.days), reason: v.reason }));
      say(t("retention.saved"));
    } catch (err) {
      say(errorText(err), true);
    }
  });
  el.append(h("p", { class: "lead" }, t("retention.lead")), status,
    h("section", { class: "panel" }, h("h2", {}, t("retention.policies")), view),
    h("section", { class: "panel" }, h("h2", {}, t("retention.holds")), holdsBox),
    holdForm, auditForm);
  await load();
}

export async function approvals(el, { api, t, errorText }) {
  const [status, say] = reporter(t, "approvals-status");
  const form = h("form", { class: "panel inline-form", id: "approve-form" },
    h("h2", {}, t("approvals.title")),
    field(t("approvals.requestId"), { name: "request_id", required: true, autocomplete: "off", spellcheck: "false" }),
    field(t("approvals.share"), { name: "share", required: true, autocomplete: "off", spellcheck: "false" }, "textarea"),
    h("button", { type: "submit", class: "primary" }, t("approvals.approve")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(form);
    try {
      const r = await api.call("POST", `/e2ee/escrow-requests/${encodeURIComponent(v.request_id.trim())}/approve`,
        { share: v.share.trim() });
      form.reset();
      say(t("approvals.approved", { id: r.request_id, n: formatNumber(r.entries) }));
    } catch (err) {
      say(errorText(err), true);
    }
  });
  el.append(h("p", { class: "lead" }, t("approvals.lead")), form, status);
}
