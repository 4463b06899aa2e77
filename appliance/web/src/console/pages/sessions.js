// 安全管理员: the accounts' live sessions (GET /sessions: of one user or everyone, 50 a
// page, newest first) and force logout (DELETE /sessions/{token_id}: one session;
// DELETE /users/{name}/sessions: all of a user's; step-up). The node revokes the
// token everywhere and closes the client's connection on whichever node holds it.
import { h, field, values, table } from "../dom.js";
import { formatDateTime, formatNumber } from "../../i18n/index.js";

const PAGE = 50;

export async function sessions(el, { api, t, session, errorText, ask }) {
  const status = h("p", { class: "status", role: "status", id: "sessions-status" });
  const say = (text, bad = false) => {
    status.textContent = text;
    status.classList.toggle("error", bad);
  };
  const list = h("div", { id: "sessions-list" });
  const more = h("button", { type: "button", class: "secondary", id: "sessions-more", hidden: true }, t("sessions.more"));
  const allOut = h("button", { type: "button", class: "secondary", id: "sessions-revoke-all", hidden: true });
  let user = "";
  let rows = [];
  let next = "";

  const when = (ms) => (ms ? formatDateTime(ms) : "—");

  function where(s) {
    if (s.here) {
      return [h("code", { "data-address": s.here.address }, s.here.address), " ",
        h("span", { class: "muted" }, t("sessions.thisNode", { node: s.here.node }))];
    }
    if (s.online_nodes && s.online_nodes.length) {
      return h("span", { class: "muted" }, t("sessions.onNodes", { nodes: s.online_nodes.join(", ") }));
    }
    return h("span", { class: "muted" }, t("sessions.notConnected"));
  }

  function render() {
    list.replaceChildren(table(t("sessions.caption"), [
      { head: t("users.username"), cell: (s) => [s.username || s.user_id, " ",
        h("span", { class: "badge role" }, t(`role.${s.role || "user"}`))] },
      { head: t("sessions.device"), cell: (s) => h("code", {}, s.device_id) },
      { head: t("sessions.where"), cell: where },
      { head: t("sessions.login"), cell: (s) => when(s.issued_at) },
      { head: t("sessions.lastSeen"), cell: (s) => when(s.last_seen) },
      { head: t("sessions.expires"), cell: (s) => when(s.expires_at) },
      { head: t("users.actions"), cell: (s) => (s.current || s.user_id === session.userId
        ? h("span", { class: "muted" }, t(s.current ? "sessions.current" : "sessions.yours"))
        : h("button", { type: "button", class: "secondary small", "data-revoke": s.token_id,
          "data-device": s.device_id, onclick: () => revokeOne(s) }, t("sessions.revoke"))) },
    ], rows, t(user ? "sessions.noneOfUser" : "sessions.none")));
    list.setAttribute("data-count", String(rows.length));
  }

  async function load(append) {
    try {
      const params = new URLSearchParams({ limit: String(PAGE) });
      if (user) params.set("user", user);
      if (append && next) params.set("before", next);
      const r = await api.call("GET", `/sessions?${params}`);
      rows = append ? [...rows, ...r.sessions] : r.sessions;
      next = r.next_before;
      more.hidden = !r.more;
      allOut.hidden = !user || rows.every((s) => s.user_id === session.userId) || !rows.length;
      allOut.textContent = t("sessions.revokeAll", { name: user });
      render();
    } catch (err) {
      say(errorText(err), true);
    }
  }

  async function revokeOne(s) {
    const ok = await ask({ title: t("sessions.confirmTitle", { name: s.username, device: s.device_id }),
      help: t("sessions.confirmHelp"), submit: t("sessions.revoke"), fields: [] });
    if (!ok) return;
    try {
      const r = await api.call("DELETE", `/sessions/${encodeURIComponent(s.token_id)}`);
      say(t("sessions.revoked", { name: r.username, device: r.device_id }));
      await load(false);
    } catch (err) {
      say(errorText(err), true);
    }
  }

  async function revokeAll() {
    const ok = await ask({ title: t("sessions.confirmAllTitle", { name: user }), help: t("sessions.confirmHelp"),
      submit: t("sessions.revokeAll", { name: user }), fields: [] });
    if (!ok) return;
    try {
      const r = await api.call("DELETE", `/users/${encodeURIComponent(user)}/sessions`);
      say(t("sessions.revokedAll", { name: r.username, n: formatNumber(r.revoked_tokens) }));
      await load(false);
    } catch (err) {
      say(errorText(err), true);
    }
  }
  more.addEventListener("click", () => load(true));
  allOut.addEventListener("click", revokeAll);

  const search = h("form", { class: "panel inline-form", id: "sessions-search", role: "search" },
    field(t("sessions.user"), { name: "user", type: "search", autocomplete: "off", autocapitalize: "none",
      spellcheck: "false" }),
    h("button", { type: "submit", class: "primary" }, t("sessions.show")));
  search.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    user = values(search).user.trim().toLowerCase();
    say("");
    await load(false);
  });
  el.append(h("p", { class: "lead" }, t("sessions.lead")), search, status, list, more, " ", allOut,
    h("p", { class: "help" }, t("sessions.help")));
  await load(false);
}
