// Tongxin admin console (docs/console.md): one page at /console/, the admin API's
// login (password + TOTP), a navigation that shows only the pages of the signed-in
// role (三员分立); the node refuses the rest on its own.
import * as api from "./api.js";
import { h, field, values } from "./dom.js";
import { initI18n, t, getLanguage, setLanguage } from "../i18n/index.js";
import en from "./i18n/en.json";
import zhCN from "./i18n/zh-CN.json";
import { PAGES } from "./pages/index.js";

await initI18n({ "zh-CN": zhCN, en });

const root = document.getElementById("app");
let notice = ""; // shown once on the login page (e.g. "session ended")

function roleTitle(role) {
  return t(`role.${role}`);
}

function langSwitch() {
  const sel = h("select", { id: "lang", onchange: async () => { await setLanguage(sel.value); render(); } },
    // i18n-exempt: each language is offered in its own name, whatever the page's language
    h("option", { value: "zh-CN" }, "简体中文"), h("option", { value: "en" }, "English"));
  sel.value = getLanguage();
  return h("div", { class: "lang" }, h("label", { for: "lang" }, t("app.language")), sel);
}

export function errorText(err) {
  if (err instanceof api.ApiError) {
    const known = t(`error.${err.code}`);
    const head = known !== `error.${err.code}` ? known : t("error.generic", { status: err.status });
    return err.message && err.message !== head ? t("error.detail", { head, detail: err.message }) : head;
  }
  return t("error.detail", { head: t("error.network"), detail: err.message });
}

// ---- dialogs: step-up and generic prompts ------------------------------------

// ask({title, help, fields: [{name, label, type, ...}], submit}) -> values or null
export function ask({ title, help, fields, submit }) {
  return new Promise((resolve) => {
    const form = h("form", { method: "dialog", class: "dialog-form" },
      h("h2", { id: "dialog-title" }, title),
      help ? h("p", { class: "help" }, help) : null,
      fields.map((f) => field(f.label, { name: f.name, type: f.type || "text", required: f.required !== false,
        autocomplete: f.autocomplete || "off", inputmode: f.inputmode, pattern: f.pattern,
        value: f.value })),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", value: "cancel",
          onclick: () => dlg.close("cancel") }, t("action.cancel")),
        h("button", { type: "submit", class: "primary", value: "ok" }, submit || t("action.confirm"))));
    const dlg = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" }, form);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = values(form);
      dlg.close("ok");
      resolve(v);
    });
    dlg.addEventListener("close", () => {
      dlg.remove();
      if (dlg.returnValue !== "ok") resolve(null);
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

async function stepUp() {
  const v = await ask({ title: t("stepup.title"), help: t("stepup.help"), submit: t("stepup.submit"),
    fields: [{ name: "totp", label: t("login.totp"), inputmode: "numeric", pattern: "[0-9]{6}",
      autocomplete: "one-time-code" }] });
  return v ? v.totp.trim() : null;
}

api.configure({
  signedOut: () => {
    notice = t("login.expired");
    render();
  },
  stepUp,
});

// ---- login ---------------------------------------------------------------------

function loginView() {
  const error = h("p", { class: "error", role: "alert", id: "login-error" }, notice);
  notice = "";
  const form = h("form", { class: "login-card", id: "login-form" },
    h("h1", {}, h("span", { class: "brand" }, t("app.brand")), " ", t("app.console")),
    h("p", { class: "sub" }, t("login.subtitle")),
    field(t("login.username"), { name: "username", id: "username", autocomplete: "username",
      autocapitalize: "none", spellcheck: "false", required: true }),
    field(t("login.password"), { name: "password", id: "password", type: "password",
      autocomplete: "current-password", required: true }),
    field(t("login.totp"), { name: "totp", id: "totp", inputmode: "numeric", pattern: "[0-9]{6}",
      autocomplete: "one-time-code", required: true, "aria-describedby": "totp-help" }),
    h("p", { class: "help", id: "totp-help" }, t("login.totpHelp")),
    error,
    h("button", { type: "submit", class: "primary", id: "login-submit" }, t("login.submit")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = values(form);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    error.textContent = "";
    try {
      await api.login(v.username, v.password, v.totp.trim());
      location.hash = "";
      render();
    } catch (err) {
      error.textContent = errorText(err);
      button.disabled = false;
    }
  });
  return h("main", { class: "login" }, h("div", { class: "login-top" }, langSwitch()), form);
}

// ---- the signed-in shell ---------------------------------------------------------

function allowed(session, page) {
  // Both: a read permission two roles share (retention.read) must not show one role's
  // page in the other's navigation.
  return page.role === session.role && session.permissions.includes(page.permission);
}

function currentPage(session) {
  const id = location.hash.replace(/^#\/?/, "");
  const mine = PAGES.filter((p) => allowed(session, p));
  if (!id) return mine[0] || null;
  return PAGES.find((p) => p.id === id) || mine[0] || null;
}

function shell(session) {
  const page = currentPage(session);
  const nav = h("nav", { class: "nav", "aria-label": t("app.navigation") },
    h("ul", {}, PAGES.filter((p) => allowed(session, p)).map((p) => h("li", {},
      h("a", { href: `#/${p.id}`, id: `nav-${p.id}`, "aria-current": p === page ? "page" : null },
        t(`nav.${p.id}`))))));
  const content = h("main", { class: "content", id: "content" });
  const logout = h("button", { type: "button", class: "secondary", id: "logout",
    onclick: async () => { await api.logout(); location.hash = ""; render(); } }, t("action.logout"));
  const header = h("header", { class: "top" },
    h("div", { class: "brand" }, t("app.brand"), h("span", { class: "sub" }, t("app.console"))),
    h("div", { class: "who" },
      h("span", { id: "who" }, session.username), " ",
      h("span", { class: "badge role", id: "who-role" }, roleTitle(session.role))),
    langSwitch(), logout);
  root.replaceChildren(header, h("div", { class: "body" }, nav, content));
  if (!page) {
    content.append(h("h1", {}, t("app.console")), h("p", {}, t("page.none")));
    return;
  }
  document.title = `${t(`nav.${page.id}`)} · ${t("app.brand")} ${t("app.console")}`;
  content.append(h("h1", { id: "page-title" }, t(`nav.${page.id}`)));
  if (!allowed(session, page)) {
    // Another role's page: not shown, and the node would refuse its API (403).
    content.append(h("div", { class: "panel forbidden", role: "alert", id: "forbidden" },
      h("p", {}, t("page.forbidden", { role: roleTitle(page.role) })),
      h("p", {}, t("page.forbiddenHelp"))));
    return;
  }
  const ctx = { api, t, session, errorText, ask, refresh: render };
  page.render(content, ctx).catch((err) => {
    content.append(h("p", { class: "error", role: "alert" }, errorText(err)));
  });
}

function render() {
  document.documentElement.lang = getLanguage();
  const session = api.getSession();
  if (!session || session.expiresAt < Date.now()) {
    document.title = `${t("app.brand")} ${t("app.console")}`;
    root.replaceChildren(loginView());
    return;
  }
  shell(session);
}

window.addEventListener("hashchange", render);
render();
