// 安全管理员: administrators and their second factor (TOTP enrolment with a QR
// code), role assignment, the keys (the at-rest master key and the audit signing
// key: status and rotation), retention and legal holds, escrow approvals.
import QRCode from "qrcode";
import { h, field, values, table } from "../dom.js";
import { formatDateTime, formatNumber } from "../../i18n/index.js";
import { formValues, policyChanges, reasonKey } from "../policy.js";

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
        h("span", { class: sensitive.has(op) ? "op sensitive" : "op", translate: "no" }, op)) : "—") },
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

// The keys: the at-rest master key (GET /keys/atrest: provider, where the key comes
// from, the current KEK, older KEKs and the data keys under each; POST
// /keys/atrest/rotate, step-up, runs on the node while this page reads its progress)
// and the audit signing key (GET /keys/audit: this node's fingerprint; POST
// /keys/audit/rotate, step-up).
const POLL_MS = 1000;

export async function keys(el, { api, t, errorText, ask }) {
  const [status, say] = reporter(t, "keys-status");
  const [atrestStatus, sayAtrest] = reporter(t, "atrest-status");
  const facts = h("dl", { class: "facts", id: "atrest-facts" });
  const progress = h("div", { id: "atrest-rotation", "aria-live": "polite" });
  let polling = false;

  const code = (text, attrs = {}) => h("code", attrs, text);
  const when = (ms) => (ms ? formatDateTime(ms) : "—");
  const badge = (good, text) => h("span", { class: `badge ${good ? "state-active" : "state-locked"}` }, text);

  function source(doc) {
    const src = doc.source || {};
    if (src.kind === "command") return [t("keys.sourceCommand"), " ", code("keys.kms_command")];
    return [t("keys.sourceFile"), " ", code(src.path || "", { class: "wrap" }),
      src.modified_at ? h("div", { class: "muted" }, t("keys.fileWritten", { time: when(src.modified_at) })) : null];
  }

  function showRotation(r) {
    if (!r) {
      progress.replaceChildren();
      return;
    }
    const states = { running: "keys.stateRunning", done: "keys.stateDone", partial: "keys.statePartial", failed: "keys.stateFailed" };
    const rows = [
      h("dt", {}, t("keys.rotationState")),
      h("dd", {}, h("span", { id: "atrest-rotation-state", "data-state": r.state,
        class: `badge ${r.state === "done" ? "state-active" : r.state === "running" ? "state-locked" : "state-disabled"}` },
      t(states[r.state] || "keys.stateFailed"))),
      h("dt", {}, t("keys.rotationStarted")), h("dd", {}, t("keys.startedBy", { time: when(r.started_at), name: r.by })),
      h("dt", {}, t("keys.rewrapped")),
      h("dd", {}, h("progress", { id: "atrest-progress", max: String(Math.max(r.total, 1)),
        value: String(r.state === "done" ? Math.max(r.total, 1) : r.rewrapped), "aria-label": t("keys.rewrapped") }), " ",
      t("keys.rewrappedOf", { n: formatNumber(r.rewrapped), total: formatNumber(r.total) })),
    ];
    if (r.kek) {
      rows.push(h("dt", {}, t("keys.oldKek")), h("dd", {}, code(r.old_kek || "—")),
        h("dt", {}, t("keys.newKek")), h("dd", {}, code(r.kek, { id: "atrest-new-kek" })));
    }
    if (r.retired?.length) rows.push(h("dt", {}, t("keys.retired")), h("dd", {}, r.retired.flatMap((k, i) => (i ? [" ", code(k)] : [code(k)]))));
    if (r.finished_at) rows.push(h("dt", {}, t("keys.rotationFinished")), h("dd", {}, when(r.finished_at)));
    // replaceChildren() would print a null: only the parts there are.
    progress.replaceChildren(...[h("h3", {}, t("keys.rotationTitle")), h("dl", { class: "facts" }, rows),
      r.error ? h("p", { class: "error", role: "alert", id: "atrest-rotation-error" }, r.error) : null,
      r.state === "partial" ? h("p", { class: "warn" }, t("keys.partialHelp")) : null].filter(Boolean));
  }

  function show(doc) {
    const rows = [
      h("dt", {}, t("keys.encryption")),
      h("dd", {}, badge(doc.encryption, doc.encryption ? t("keys.on") : t("keys.off"))),
      h("dt", {}, t("keys.suite")), h("dd", {}, t("keys.suiteText", { suite: doc.suite, cipher: doc.cipher || "—" })),
      h("dt", {}, t("keys.source")), h("dd", { id: "atrest-source" }, source(doc)),
    ];
    if (doc.kek) {
      const older = doc.older_keks || [];
      const dk = doc.data_keys;
      rows.push(
        h("dt", {}, t("keys.currentKek")), h("dd", {}, code(doc.kek.id, { id: "atrest-kek" })),
        h("dt", {}, t("keys.dataKeys")), h("dd", { id: "atrest-data-keys", "data-pending": String(dk.pending) },
          dk.pending ? badge(false, t("keys.dataKeysPending", { total: formatNumber(dk.total), n: formatNumber(dk.pending) }))
            : t("keys.dataKeysAll", { total: formatNumber(dk.total) })),
        h("dt", {}, t("keys.olderKeks")), h("dd", { id: "atrest-older", "data-count": String(older.length) },
          older.length ? h("ul", { class: "plain" }, older.map((k) => h("li", {}, code(k.id), " ",
            t("keys.olderItem", { n: formatNumber(k.data_keys) })))) : t("keys.noOlder")),
        h("dt", {}, t("keys.newestDek")), h("dd", {}, when(dk.newest_created_at)));
    } else if (!doc.in_use) {
      rows.push(h("dt", {}, t("keys.currentKek")), h("dd", {}, t("keys.notInUse")));
    }
    facts.replaceChildren(...rows);
    rotateAtRest.disabled = !doc.kek || doc.rotation?.state === "running";
    showRotation(doc.rotation);
  }

  async function load() {
    try {
      const doc = await api.call("GET", "/keys/atrest");
      show(doc);
      return doc;
    } catch (err) {
      sayAtrest(errorText(err), true);
      if (err.body?.rotation !== undefined) showRotation(err.body.rotation);
      return null;
    }
  }

  // Read the progress until the rotation has ended (or the page was left): the light
  // GET /keys/atrest/rotation each second (not audited, no key provider or store read),
  // then the whole status once.
  async function follow() {
    if (polling) return;
    polling = true;
    try {
      for (;;) {
        await new Promise((r) => setTimeout(r, POLL_MS));
        if (!el.isConnected) return;
        let r;
        try {
          r = (await api.call("GET", "/keys/atrest/rotation")).rotation;
        } catch (err) {
          sayAtrest(errorText(err), true);
          return;
        }
        if (r?.state === "running") {
          showRotation(r);
          continue;
        }
        r = (await load())?.rotation ?? r;
        if (!r || r.state !== "running") {
          if (r?.state === "done") sayAtrest(t("keys.atrestRotated", { kek: r.kek }));
          else if (r?.state === "partial") sayAtrest(t("keys.statePartial"), true);
          else if (r?.state === "failed") sayAtrest(t("keys.atrestFailed"), true);
          return;
        }
      }
    } finally {
      polling = false;
    }
  }

  const rotateAtRest = h("button", { type: "button", class: "primary", id: "rotate-atrest-key", onclick: async () => {
    const ok = await ask({ title: t("keys.atrestConfirmTitle"), help: t("keys.atrestConfirmHelp"),
      submit: t("keys.atrestRotate"), fields: [] });
    if (!ok) return;
    rotateAtRest.disabled = true;
    sayAtrest(t("keys.atrestStarting"));
    try {
      const r = await api.call("POST", "/keys/atrest/rotate");
      showRotation(r.rotation);
      sayAtrest(t("keys.stateRunning"));
      await follow();
    } catch (err) {
      sayAtrest(errorText(err), true);
      if (err.body?.rotation) showRotation(err.body.rotation);
      await load();
      if (err.code === "ROTATION_RUNNING") await follow();
    }
  } }, t("keys.atrestRotate"));

  // The audit signing key: this node's fingerprint now, then the old and new ones.
  const fingerprint = h("dl", { class: "facts", id: "audit-key" });
  const result = h("dl", { class: "facts", id: "rotation" });
  const showFingerprint = (fp) => fingerprint.replaceChildren(h("dt", {}, t("keys.current")),
    h("dd", {}, code(fp || t("keys.noAuditKey"), { id: "audit-fingerprint", class: "wrap" })));
  const button = h("button", { type: "button", class: "primary", id: "rotate-audit-key", onclick: async () => {
    const ok = await ask({ title: t("keys.confirmTitle"), help: t("keys.confirmHelp"), submit: t("keys.rotate"), fields: [] });
    if (!ok) return;
    try {
      const r = await api.call("POST", "/keys/audit/rotate");
      showFingerprint(r.fingerprint);
      result.replaceChildren(
        h("dt", {}, t("keys.old")), h("dd", {}, code(r.old_fingerprint || "—", { class: "wrap" })),
        h("dt", {}, t("keys.new")), h("dd", {}, code(r.fingerprint, { id: "new-fingerprint", class: "wrap" })));
      say(t("keys.rotated"));
    } catch (err) {
      say(errorText(err), true);
    }
  } }, t("keys.rotate"));

  el.append(h("p", { class: "lead" }, t("keys.lead")),
    h("section", { class: "panel", id: "atrest-panel", "aria-labelledby": "atrest-title" },
      h("h2", { id: "atrest-title" }, t("keys.atrest")), facts,
      h("p", { class: "help" }, t("keys.atrestHelp")), rotateAtRest, atrestStatus, progress),
    h("section", { class: "panel", "aria-labelledby": "audit-key-title" },
      h("h2", { id: "audit-key-title" }, t("keys.audit")), fingerprint,
      h("p", { class: "help" }, t("keys.auditHelp")), button, result, status));
  const [doc] = await Promise.all([load(), api.call("GET", "/keys/audit").then(
    (r) => showFingerprint(r.fingerprint), (err) => say(errorText(err), true))]);
  if (doc?.rotation?.state === "running") follow();
}

// The password and lockout policy in force (GET /policy), rule by rule against
// 等保's thresholds, where each value comes from (the configuration file or a change
// made here), and the form that changes it (PUT /policy, step-up): every field is
// checked here and again on the node, which stores the change for every node.
export async function policy(el, { api, t, errorText }) {
  const [status, say] = reporter(t, "policy-status");
  const view = h("div", { id: "policy-view" });
  const unitText = (unit) => (unit === "days" ? t("policy.days") : unit === "seconds" ? t("policy.seconds") : "");
  const unitOf = (key, doc) => doc.editable?.[key]?.unit
    ?? (key.endsWith("_days") ? "days" : /timeout|duration|window|ttl/.test(key) ? "seconds" : "");
  const withUnit = (value, unit) => `${formatNumber(value)} ${unitText(unit)}`.trim();
  const verdict = (ok) => (ok === null ? h("span", { class: "muted" }, t("policy.noRule"))
    : h("span", { class: `badge ${ok ? "state-active" : "state-disabled"}` }, ok ? t("policy.meets") : t("policy.short")));
  const source = (key, doc) => (!(key in (doc.editable || {})) ? h("span", { class: "muted" }, t("policy.fileOnly"))
    : key in (doc.overrides || {}) ? h("span", { class: "badge state-locked" }, t("policy.changedHere"))
      : h("span", { class: "muted" }, t("policy.fromFile")));
  const errorFor = (e) => {
    const reason = reasonKey(e);
    return t(`policy.error.${reason}`, { min: formatNumber(e.min ?? 0), max: formatNumber(e.max ?? 0) });
  };

  async function save(settings, reason, form) {
    say(t("policy.saving"));
    try {
      const r = await api.call("PUT", "/policy", { settings, reason });
      const changed = Object.entries(r.changed);
      show(r);
      say(changed.length ? t("policy.saved", { n: formatNumber(changed.length) }) : t("policy.unchanged"));
      if (changed.length) {
        status.after(h("ul", { id: "policy-changes", class: "changes" }, changed.map(([key, c]) =>
          h("li", { "data-key": key }, t("policy.changeItem", { name: t(`policy.key.${key}`),
            from: withUnit(c.from, unitOf(key, r)), to: withUnit(c.to, unitOf(key, r)) })))));
      }
    } catch (err) {
      const fields = err.body?.fields;
      if (fields && form) {
        for (const [key, e] of Object.entries(fields)) form.mark(key, errorFor(e));
        say(t("policy.refused", { n: formatNumber(Object.keys(fields).length) }), true);
      } else {
        say(errorText(err), true);
      }
    }
  }

  function editForm(doc) {
    const errors = {};
    const form = h("form", { class: "panel", id: "policy-form", novalidate: true },
      h("h2", {}, t("policy.edit")),
      h("p", { class: "help" }, t("policy.editHelp")));
    const grid = h("div", { class: "policy-grid" });
    const start = formValues(doc);
    for (const [key, lim] of Object.entries(doc.editable)) {
      const unit = unitText(lim.unit);
      const id = `policy-${key}`;
      const box = field(unit ? t("policy.withUnit", { name: t(`policy.key.${key}`), unit }) : t(`policy.key.${key}`), {
        id, name: key, type: "number", inputmode: lim.integer ? "numeric" : "decimal",
        min: String(lim.zero_off ? 0 : lim.min), max: String(lim.max), step: lim.integer ? "1" : "any",
        value: start[key], required: true, "aria-describedby": `${id}-help ${id}-error` });
      const bounds = { min: formatNumber(lim.min), max: formatNumber(lim.max) };
      const range = lim.zero_off ? t("policy.rangeOff", bounds) : t("policy.range", bounds);
      box.append(h("p", { class: "help", id: `${id}-help` },
        `${range} · ${t("policy.inFile", { value: withUnit(doc.configured[key], lim.unit) })}`));
      errors[key] = h("p", { class: "field-error", id: `${id}-error`, role: "alert" });
      box.append(errors[key]);
      if (key in doc.overrides) {
        box.append(h("button", { type: "button", class: "secondary small", "data-revert": key,
          onclick: () => save({ [key]: null }, values(form).reason || "", form) },
        t("policy.revert", { value: withUnit(doc.configured[key], lim.unit) })));
      }
      grid.append(box);
    }
    form.mark = (key, text) => {
      const input = form.querySelector(`#policy-${key}`);
      if (!input) return;
      errors[key].textContent = text;
      input.setAttribute("aria-invalid", "true");
    };
    const clear = () => {
      for (const [key, p] of Object.entries(errors)) {
        p.textContent = "";
        form.querySelector(`#policy-${key}`)?.removeAttribute("aria-invalid");
      }
    };
    // The status (and the list of what changed) below the button that was pressed.
    form.append(grid,
      field(t("policy.reasonLabel"), { name: "reason", id: "policy-reason", autocomplete: "off", maxlength: "500" }),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "policy-save" }, t("policy.save"))),
      status);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clear();
      document.getElementById("policy-changes")?.remove();
      const raw = values(form);
      const { settings, errors: bad } = policyChanges(raw, doc);
      if (Object.keys(bad).length) {
        for (const [key, e] of Object.entries(bad)) form.mark(key, errorFor(e));
        say(t("policy.refused", { n: formatNumber(Object.keys(bad).length) }), true);
        form.querySelector("[aria-invalid=true]")?.focus();
        return;
      }
      if (!Object.keys(settings).length) {
        say(t("policy.nothing"));
        return;
      }
      await save(settings, (raw.reason || "").trim(), form);
    });
    return form;
  }

  function show(doc) {
    document.getElementById("policy-changes")?.remove();
    view.replaceChildren(...[
      h("p", { id: "policy-verdict", class: doc.meets_dengbao ? "status" : "status error" },
        doc.meets_dengbao ? t("policy.allMet") : t("policy.notAllMet")),
      table(t("policy.caption"), [
        { head: t("policy.setting"), cell: (r) => [h("div", {}, t(`policy.key.${r.key}`)), h("code", { class: "muted" }, `accounts.${r.key}`)] },
        { head: t("policy.value"), cell: (r) => h("span", { "data-value": r.key }, withUnit(r.value, unitOf(r.key, doc))) },
        { head: t("policy.source"), cell: (r) => source(r.key, doc) },
        { head: t("policy.required"), cell: (r) => r.required || "—" },
        { head: t("policy.status"), cell: (r) => h("span", { "data-key": r.key }, verdict(r.ok)) },
      ], doc.rules, "—"),
      doc.changed_at ? h("p", { class: "help", id: "policy-changed-at" },
        t("policy.changedAt", { time: formatDateTime(doc.changed_at), by: doc.changed_by || "—" })) : null,
      doc.editable ? editForm(doc) : status,
      h("p", { class: "help" }, t("policy.where"))].filter(Boolean));
  }

  el.append(h("p", { class: "lead" }, t("policy.lead")), view);
  show(await api.call("GET", "/policy"));
}

// readOnly: the auditor's view of the same page (retention.read): no release, no forms.
export async function retention(el, { api, t, errorText, readOnly = false }) {
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
      ...(readOnly ? [] : [{ head: t("users.actions"), cell: (x) => h("button", { type: "button", class: "secondary small",
        "data-release": String(x.id), onclick: () => release(x) }, t("retention.release")) }]),
    ], r.holds, t("retention.noHolds")));
  }
  async function load() {
    show(await api.call("GET", readOnly ? "/audit/retention" : "/retention"));
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
  el.append(h("p", { class: "lead" }, t(readOnly ? "retention.leadReadOnly" : "retention.lead")), status,
    h("section", { class: "panel" }, h("h2", {}, t("retention.policies")), view),
    h("section", { class: "panel" }, h("h2", {}, t("retention.holds")), holdsBox),
    ...(readOnly ? [] : [holdForm, auditForm]));
  await load();
}

export async function approvals(el, { api, t, errorText }) {
  const [status, say] = reporter(t, "approvals-status");
  const pending = h("div", { id: "approvals-pending" });
  async function loadPending() {
    try {
      const r = await api.call("GET", "/e2ee/escrow-requests");
      pending.replaceChildren(table(t("approvals.pendingCaption"), [
        { head: t("approvals.requestId"), cell: (x) => h("code", {}, x.request_id) },
        { head: t("approvals.requester"), cell: (x) => x.requester || x.requester_id },
        { head: t("escrow.conversation"), cell: (x) => h("code", {}, x.conversation_id) },
        { head: t("escrow.range"), cell: (x) => `${formatDateTime(x.from_ms)} – ${formatDateTime(x.to_ms)}` },
        { head: t("approvals.reason"), cell: (x) => x.reason },
        { head: t("approvals.state"), cell: (x) => (x.approved ? t("approvals.approvedWaiting") : t("approvals.waiting")) },
        { head: t("approvals.expires"), cell: (x) => t("approvals.minutes", { n: formatNumber(Math.ceil(x.expires_in_s / 60)) }) },
        { head: t("users.actions"), cell: (x) => (x.approved ? "" : h("button", { type: "button", class: "secondary small",
          onclick: () => { form.elements.request_id.value = x.request_id; form.elements.share.focus(); } }, t("approvals.use"))) },
      ], r.requests, t("approvals.none")));
    } catch (err) {
      say(errorText(err), true);
    }
  }
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
      await loadPending();
    } catch (err) {
      say(errorText(err), true);
    }
  });
  el.append(h("p", { class: "lead" }, t("approvals.lead")),
    h("section", { class: "panel" }, h("h2", {}, t("approvals.pending")), pending,
      h("button", { type: "button", class: "secondary", id: "approvals-refresh", onclick: loadPending }, t("approvals.refresh"))),
    form, status);
  await loadPending();
}
