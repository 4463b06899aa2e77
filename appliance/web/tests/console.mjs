// Browser test of the administrators' console (docs/console.md) against a running node.
//
//   CONSOLE_ADMINS='{"sysadmin": {"username", "password", "secret"}, ...}' \
//     node tests/console.mjs http://127.0.0.1:PORT [--artifacts DIR]
//
// The three administrators of 三员分立 were made with `tongxin admin create` (the
// pytest driver, tests/browser/test_console.py, does it and passes their TOTP
// secrets). The node runs with compliance.step_up_window 0, so every sensitive
// action asks for a fresh TOTP code in the console's step-up dialog. Each role
// signs in with a TOTP code, does its work, checks what the page shows, is
// refused another role's page and the API behind it; the auditor then finds the
// actions in the audit trail. axe-core checks every page (serious and critical
// violations fail); screenshots of every page, in zh-CN, go to the artifacts
// directory. Prints one "ok - ..." line per verified behaviour.
import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as OTPAuth from "otpauth";
import { launchChromium, requireChromium } from "./chromium.mjs";

const require = createRequire(import.meta.url);
const args = process.argv.slice(2);
const base = args.find((a) => !a.startsWith("--"));
const artIdx = args.indexOf("--artifacts");
const artifacts = resolve(artIdx >= 0 ? args[artIdx + 1] : "test-artifacts/console");
const admins = JSON.parse(process.env.CONSOLE_ADMINS || "null");
// A group two ordinary users hold (made by the driver through the SDK): name, id, owner, member.
const group = JSON.parse(process.env.CONSOLE_GROUP || "null");
// Secret values the node was given (a password in storage.mysql_dsn, $TONGXIN_REDIS_PASSWORD):
// the configuration page must not show any of them.
const cfgSecrets = JSON.parse(process.env.CONSOLE_SECRETS || "[]");
// The evidence files the driver wrote into the node's evidence/ before it started: a DR
// drill report (drillFile, its run id drillRunId carries markup that must stay text) and
// a failed backup (backupFile, backupError).
const evidence = JSON.parse(process.env.CONSOLE_EVIDENCE || "null");
// An ordinary user's client the driver keeps connected over WebSocket (username, device):
// the secadmin forces it out from the sessions page; the driver then finds its connection
// closed (4010) and its token refused.
const live = JSON.parse(process.env.CONSOLE_LIVE || "null");
if (!base || !admins || !group || !evidence || !live) {
  console.error("usage: CONSOLE_ADMINS=JSON CONSOLE_GROUP=JSON node tests/console.mjs http://HOST:PORT [--artifacts DIR]");
  process.exit(2);
}
requireChromium();
mkdirSync(artifacts, { recursive: true });
const console_ = `${base}/console/`;
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

let passed = 0;
const ok = (what) => {
  passed++;
  console.log(`ok - ${what}`);
};
const fail = (what) => {
  throw new Error(what);
};
const T = 15000;

// ---- TOTP: RFC 6238 codes through otpauth; the node accepts each time step once -------
const lastStep = {}; // secret -> the last step used
async function totp(secret) {
  const gen = new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), digits: 6, period: 30, algorithm: "SHA1" });
  // The node accepts one step of drift either way and only a later step than last time.
  for (;;) {
    const now = Math.floor(Date.now() / 30000);
    // The current step, or the next one when the current was used: both stay in the
    // node's window if a step boundary passes before it checks the code.
    const step = Math.max(now, (lastStep[secret] ?? -Infinity) + 1);
    if (step <= now + 1) {
      lastStep[secret] = step;
      return gen.generate({ timestamp: step * 30000 + 1000 });
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

const browser = await launchChromium();
const pageErrors = [];

async function newPage(label, locale = "zh-CN") {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, locale, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on("pageerror", (err) => pageErrors.push(`${label}: ${err.message}`));
  // The node serves the console with a Content-Security-Policy: anything the pages
  // themselves need and the policy refuses shows up here and fails the test.
  page.on("console", (msg) => {
    if (/Content Security Policy/i.test(msg.text())) pageErrors.push(`${label}: ${msg.text()}`);
  });
  return page;
}

async function shot(page, name) {
  await rawKeys(page, name);
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

// A catalogue key shown instead of its text (a key missing from both catalogues, or built
// from a value the catalogue has no entry for): the console's keys are "<section>.<name>"
// (src/console/i18n/*.json, sections such as "users", "keys", "sessions"). Identifiers
// that are data and may look the same (audit events, operations, configuration keys)
// are shown in <code> or marked translate="no", and are not looked at.
const SECTIONS = Object.keys(JSON.parse(readFileSync(new URL("../src/console/i18n/en.json", import.meta.url), "utf8")));
const KEY_LIKE = `(?<![\\w./:@-])(?:${SECTIONS.join("|")})\\.[A-Za-z_]\\w*(?:\\.\\w+)*(?![\\w/:@-])`;
const rawKeysChecked = [];
async function rawKeys(page, name) {
  const found = await page.evaluate((source) => {
    const re = new RegExp(source, "g");
    const out = [];
    const skip = (el) => !el || el.closest("code, pre, script, style, [translate=no]") || !el.getClientRects().length;
    const where = (el) => `<${el.tagName.toLowerCase()}${el.id ? `#${el.id}` : ""}>`;
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      if (skip(n.parentElement)) continue;
      for (const m of n.data.matchAll(re)) out.push(`${m[0]} in ${where(n.parentElement)}`);
    }
    for (const el of document.querySelectorAll("[title], [placeholder], [aria-label], [alt]")) {
      if (skip(el)) continue;
      for (const a of ["title", "placeholder", "aria-label", "alt"]) {
        for (const m of (el.getAttribute(a) || "").matchAll(re)) out.push(`${m[0]} in ${where(el)} ${a}`);
      }
    }
    for (const m of document.title.matchAll(re)) out.push(`${m[0]} in the title`);
    return out;
  }, KEY_LIKE);
  if (found.length) fail(`raw catalogue keys shown on ${name}: ${found.join("; ")}`);
  rawKeysChecked.push(name);
}

// axe-core on the page as it is now: serious and critical violations fail.
const axeChecked = [];
async function axe(page, name) {
  // Evaluated through the DevTools protocol rather than added as a script tag: the
  // console's Content-Security-Policy refuses inline scripts, as it should.
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
  });
  const bad = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) fail(`axe on ${name}: ${JSON.stringify(bad, null, 1)}`);
  axeChecked.push(name);
  await rawKeys(page, name);
}

async function login(page, who, secret = who.secret) {
  await page.goto(console_);
  await page.locator("#login-form").waitFor();
  await page.fill("#username", who.username);
  await page.fill("#password", who.password);
  await page.fill("#totp", await totp(secret));
  await page.click("#login-submit");
  await page.locator("#logout").waitFor();
}

async function logout(page) {
  const token = await page.evaluate(() => JSON.parse(sessionStorage.getItem("tongxin.console.session")).token);
  await page.click("#logout");
  await page.locator("#login-form").waitFor();
  const after = await apiAs(page, token, "GET", "/whoami");
  if (after.status !== 401) fail(`the token still works after logout: ${after.status}`);
}

// An admin API call from inside the page with a given token (what a hand-made request would do).
function apiAs(page, token, method, path) {
  return page.evaluate(async ([token, method, path]) => {
    const resp = await fetch(`/api/v1/admin${path}`, { method, headers: { authorization: `Bearer ${token}` } });
    return { status: resp.status, body: await resp.json().catch(() => ({})) };
  }, [token, method, path]);
}
const myToken = (page) => page.evaluate(() => JSON.parse(sessionStorage.getItem("tongxin.console.session")).token);

async function navLinks(page) {
  return page.locator("nav a").evaluateAll((as) => as.map((a) => a.getAttribute("href")));
}

async function goTo(page, id) {
  await page.goto(`${console_}#/${id}`);
  await page.locator("#page-title").waitFor();
}

// The step-up dialog: the node asked for a fresh TOTP code.
async function stepUp(page, secret) {
  const dlg = page.locator("dialog[open]");
  await dlg.locator("input[name=totp]").waitFor();
  await dlg.locator("input[name=totp]").fill(await totp(secret));
  await dlg.locator("button[type=submit]").click();
}

async function refused(page, who, pageId, apiMethod, apiPath, owner) {
  await goTo(page, pageId);
  await page.locator("#forbidden").waitFor();
  const links = await navLinks(page);
  if (links.includes(`#/${pageId}`)) fail(`${who} has a navigation link to ${pageId}`);
  const r = await apiAs(page, await myToken(page), apiMethod, apiPath);
  if (r.status !== 403 || r.body.required_role !== owner) {
    fail(`${who}: ${apiMethod} ${apiPath} answered ${r.status} ${JSON.stringify(r.body)}, expected 403 (${owner})`);
  }
  return r;
}

// A failed login whose "username" is a spreadsheet formula: the node audits what was typed
// (auth.login, failed, target lower-cased), and the auditor's CSV download must defuse it.
const FORMULA_USER = "=HYPERLINK(\"http://evil.example/\",\"x\")";
const sys = admins.sysadmin;
const sec = admins.secadmin;
const aud = admins.auditor;
const staff = { username: `zhangsan${Date.now() % 100000}`, name: "张三", password: "Zhang-san-pass-1" };
const suffix = Date.now() % 100000;
const temp = { username: `linshi${Date.now() % 100000}`, name: "临时", password: "Lin-shi-pass-1" };

try {
  // ---- the login page: zh-CN by default, a wrong code refused ---------------------------
  const p = await newPage("sysadmin");
  await p.goto(console_);
  await p.locator("#login-form").waitFor();
  if ((await p.getAttribute("html", "lang")) !== "zh-CN") fail("the console is not in zh-CN by default");
  if (!(await p.textContent("#login-submit")).includes("登录")) fail("the login button is not Chinese");
  await shot(p, "01-login");
  await axe(p, "login");
  const formulaLogin = await fetch(`${base}/api/v1/admin/login`, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: FORMULA_USER, password: "x", totp: "000000" }) });
  if (formulaLogin.status !== 401) fail(`a login as ${FORMULA_USER} answered ${formulaLogin.status}`);
  await p.fill("#username", sys.username);
  await p.fill("#password", sys.password);
  await p.fill("#totp", "000000");
  await p.click("#login-submit");
  await p.locator("#login-error", { hasText: "动态口令" }).waitFor();
  ok("the login page is in zh-CN and refuses a wrong TOTP code");

  // ---- 系统管理员 ------------------------------------------------------------------
  await login(p, sys);
  if ((await p.textContent("#who-role")) !== "系统管理员") fail("the header does not name the sysadmin role");
  const sysLinks = await navLinks(p);
  if (JSON.stringify(sysLinks) !== JSON.stringify(["#/users", "#/org", "#/groups", "#/status", "#/config"])) fail(`sysadmin navigation: ${sysLinks}`);
  ok("sysadmin signed in with password and TOTP; the navigation shows only users, organisation, groups, node status and configuration");

  await p.locator("#users-list table").waitFor();
  const form = p.locator("#create-user");
  for (const u of [staff, temp]) {
    await form.locator("input[name=username]").fill(u.username);
    await form.locator("input[name=display_name]").fill(u.name);
    await form.locator("input[name=password]").fill(u.password);
    await form.locator("button[type=submit]").click();
    await p.locator("#users-list tr", { hasText: u.username }).waitFor();
  }
  // Import from CSV: two good rows (with a header, a quoted display name) and one refused.
  const csv = `username,display_name,password\r\nwang${suffix},"王五, 财务处",Wang-wu-pass-1\r\n`
    + `zhao${suffix},赵六,Zhao-liu-pass-1\r\nbad name,坏,short\r\n`;
  await p.setInputFiles("#import-users input[type=file]", { name: "users.csv", mimeType: "text/csv", buffer: Buffer.from(csv) });
  await p.click("#import-users button[type=submit]");
  await p.locator("#import-status", { hasText: "已导入 2 个账号（共 3 行）" }).waitFor();
  await p.locator("#users-list tr", { hasText: "王五, 财务处" }).waitFor();
  if ((await p.locator("#import-results li.error").count()) !== 1) fail("the bad CSV row was not reported");
  ok("sysadmin imported accounts from CSV: two created, the bad row reported");
  const row = p.locator("#users-list tr", { hasText: staff.username });
  await row.locator("[data-action=disable]").click();
  await row.locator(".badge", { hasText: "已停用" }).waitFor();
  await row.locator("[data-action=enable]").click();
  await row.locator(".badge", { hasText: "正常" }).waitFor();
  await row.locator("[data-action=password]").click();
  await p.locator("dialog[open] input[name=password]").fill("Zhang-san-new-2");
  await p.locator("dialog[open] button[type=submit]").click();
  await p.locator("#users-status", { hasText: staff.username }).waitFor();
  // Deleting is sensitive: the step-up dialog asks for a fresh code.
  await p.locator("#users-list tr", { hasText: temp.username }).locator("[data-action=delete]").click();
  await p.locator("dialog[open] button[type=submit]").click();
  await stepUp(p, sys.secret);
  await p.locator("#users-list tr", { hasText: temp.username }).locator(".badge", { hasText: "已停用" }).waitFor();
  ok("sysadmin created, disabled, enabled and reset the password of a user, and deleted another after a TOTP step-up");
  await shot(p, "02-users");
  await axe(p, "users");

  // ---- 组织机构: a unit and a sub-unit, a user moved in, deletes of non-empty units refused.
  // After each action the test waits for what the action leaves behind (the new tree
  // item, the member count, the status line's text), never for something that goes away.
  await goTo(p, "org");
  await p.locator("#org-tree[data-count]").waitFor();
  const hq = `总部${suffix}`;
  const office = `办公厅${suffix}`;
  const renamed = `综合处${suffix}`;
  const unitItem = (name) => p.locator(`#org-tree li[data-unit="${name}"]`);
  const unitButton = (name, action) => p.locator(`#org-tree li[data-unit="${name}"] > .org-unit [data-action=${action}]`);
  const orgForm = p.locator("#org-create");
  await orgForm.locator("input[name=name]").fill(hq);
  await orgForm.locator("button[type=submit]").click();
  await unitItem(hq).waitFor();
  await orgForm.locator("input[name=name]").fill(office);
  await orgForm.locator("select[name=parent_id]").selectOption({ label: hq });
  await orgForm.locator("button[type=submit]").click();
  await unitItem(hq).locator(`li[data-unit="${office}"]`).waitFor();
  // The same name again under the same parent: refused, the tree unchanged.
  await orgForm.locator("input[name=name]").fill(office);
  await orgForm.locator("select[name=parent_id]").selectOption({ label: hq });
  await orgForm.locator("button[type=submit]").click();
  await p.locator("#org-status.error", { hasText: "与现有数据冲突" }).waitFor();
  if ((await p.locator(`#org-tree li[data-unit="${office}"]`).count()) !== 1) fail("a second sibling of the same name appeared");
  // Rename the sub-unit from its dialog.
  await unitButton(office, "rename").click();
  await p.locator("dialog[open] input[name=name]").fill(renamed);
  await p.locator("dialog[open] button[type=submit]").click();
  await unitItem(hq).locator(`li[data-unit="${renamed}"]`).waitFor();
  ok(`sysadmin built a unit and a sub-unit (${hq} / ${renamed}, renamed from ${office}); a twin sibling name was refused`);
  // Move the staff member into the sub-unit.
  const assignForm = p.locator("#org-assign");
  await assignForm.locator("select[name=username]").selectOption(staff.username);
  await assignForm.locator("select[name=unit_id]").selectOption({ label: `${hq} / ${renamed}` });
  await assignForm.locator("button[type=submit]").click();
  await unitItem(renamed).locator(".badge[data-members='1']").waitFor();
  await unitItem(renamed).locator(".org-people", { hasText: staff.name }).waitFor();
  // Deleting either unit is refused: the top one has a sub-unit, the sub-unit a member.
  await unitButton(hq, "delete").click();
  await p.locator("dialog[open] button[type=submit]").click();
  await p.locator("#org-status.error", { hasText: hq }).waitFor();
  const refusedTop = await p.textContent("#org-status");
  await unitButton(renamed, "delete").click();
  await p.locator("dialog[open] button[type=submit]").click();
  await p.locator("#org-status.error", { hasText: renamed }).waitFor();
  if (!refusedTop.includes("不能删除") || !(await p.textContent("#org-status")).includes("不能删除")) {
    fail(`the refused deletes do not say why: "${refusedTop}"`);
  }
  await unitItem(renamed).locator(".badge[data-members='1']").waitFor();
  if ((await p.locator("#org-tree").getAttribute("data-count")) !== "2") fail("a refused delete changed the tree");
  ok(`deleting a unit that still has a sub-unit or a member is refused and says so ("${refusedTop}"); the tree is unchanged`);
  await shot(p, "02b-org");
  await axe(p, "org");
  await goTo(p, "users");
  await p.locator("#users-list tr", { hasText: staff.username }).locator("td", { hasText: `${hq} / ${renamed}` }).waitFor();
  ok(`the users page shows each user's unit (${staff.username}: ${hq} / ${renamed})`);

  // ---- 群组: the driver's group, found by name, its members and their roles; no messages.
  await goTo(p, "groups");
  const groupSearch = p.locator("#groups-search");
  await groupSearch.locator("input[name=q]").fill(`不存在${suffix}`);
  await groupSearch.locator("button[type=submit]").click();
  await p.locator("#groups-list td.empty", { hasText: `不存在${suffix}` }).waitFor();
  await groupSearch.locator("input[name=q]").fill(group.name.slice(0, 4));
  await groupSearch.locator("button[type=submit]").click();
  const groupRow = p.locator("#groups-list tr", { hasText: group.name });
  await groupRow.waitFor();
  const cells = await groupRow.locator("td").allTextContents();
  if (cells[1] !== "2" || cells[2] !== group.owner || !/\d{4}/.test(cells[3])) fail(`the group's row: ${JSON.stringify(cells)}`);
  await groupRow.locator(`[data-group="${group.id}"]`).click();
  await p.locator("#group-members tr", { hasText: group.owner }).locator(".badge", { hasText: "群主" }).waitFor();
  await p.locator("#group-members tr", { hasText: group.member }).locator(".badge", { hasText: "成员" }).waitFor();
  if ((await p.textContent("#content")).includes("群里的消息")) fail("the groups page shows message content");
  ok(`the groups page lists the group found by name (${cells.join(" | ")}) and its members with their roles, and no message`);
  await shot(p, "02c-groups");
  await axe(p, "groups");

  await goTo(p, "status");
  await p.locator("#st-ready", { hasText: "是" }).waitFor();
  const version = await p.textContent("#st-version");
  if (!/\d+\.\d+/.test(version)) fail(`node status shows version "${version}"`);
  ok(`node status shows the node ready, version ${version}, site role ${await p.textContent("#st-role")}`);
  // Site and evidence (GET /api/v1/admin/site): the driver wrote a failed backup and a
  // DR drill report into the node's evidence/, and no restore test, which the page must
  // say rather than leave blank; the failure is shown, not hidden.
  await p.locator("#dr-backup", { hasText: evidence.backupError }).waitFor();
  await p.locator("#dr-drill", { hasText: "RPO 2 秒" }).waitFor();
  await p.locator("#dr-restore", { hasText: "尚无记录" }).waitFor();
  await p.locator("#dr-db", { hasText: "本机 SQLite" }).waitFor();
  // The live charts' captions are written by their first poll of GET /node, which may
  // still be on its way when the site panel is there: wait for it, up to the timeout.
  await p.waitForFunction(() => document.querySelector("#chart-ack")?.textContent.trim())
    .catch(() => fail("the ACK latency chart has no caption text"));
  ok(`the site panel shows the database (${await p.textContent("#dr-db")}), the failed backup, the drill and no restore test yet; the ACK latency chart is there`);
  // The DR copy (site.standby_status_urls): the driver's stand-in standbys, one keeping
  // up, one 42 s behind, and a port nobody listens on, each a row with its badge.
  const standby = (text) => p.locator("#dr-standbys tr", { hasText: text });
  await standby("dr-standby-01").locator(".badge.state-active", { hasText: "同步正常" }).waitFor();
  await standby("dr-standby-01").locator("td", { hasText: "1.5 秒" }).first().waitFor();
  await standby("dr-standby-02").locator(".badge.state-disabled", { hasText: "落后" }).waitFor();
  await standby("dr-standby-02").locator("td", { hasText: "42 秒" }).first().waitFor();
  await p.locator("#dr-standbys tr .badge.state-disabled", { hasText: "无法访问" }).waitFor();
  if ((await p.locator("#dr-standbys tbody tr").count()) !== 3) fail("the DR copy does not show one row per standby");
  ok(`the site panel shows the DR copy: a standby keeping up, one behind, one unreachable ("${(await standby("dr-standby-02").textContent()).trim()}")`);
  // The panel reads the DR copy again while it is open: the standby that was behind
  // catches up (the driver tells the stand-in), and within a reading (10 s) its row
  // turns green and the lag chart's largest reading comes down to it.
  await p.locator("#chart-dr-lag", { hasText: "最大 42 秒" }).waitFor();
  const caughtUp = await fetch(process.env.CONSOLE_STANDBY_CATCH_UP, { method: "POST" });
  if (caughtUp.status !== 204) fail(`the stand-in standby refused to catch up: ${caughtUp.status}`);
  await standby("dr-standby-02").locator(".badge.state-active", { hasText: "同步正常" }).waitFor({ timeout: 30000 });
  await p.locator("#chart-dr-lag", { hasText: "最大 2 秒" }).waitFor({ timeout: 30000 });
  if ((await p.locator("#dr-standbys tbody tr").count()) !== 3) fail("a reading of the DR copy changed its rows");
  ok("the site panel reads the DR copy again while open: the standby that caught up turns green and the lag chart follows (最大 2 秒)");
  // The live chart polls GET /api/v1/admin/node: two WebSocket connections opened
  // from another page show up in it, beside the driver's live client (CONSOLE_LIVE).
  const sockets = await newPage("sockets");
  await sockets.goto(`${base}/healthz`);
  await sockets.evaluate((url) => { window.socks = [new WebSocket(url), new WebSocket(url)]; }, `${base.replace("http", "ws")}/ws`);
  await p.locator("#chart-connections", { hasText: /^当前 3 个连接/ }).waitFor();
  // 全部节点 (GET /api/v1/admin/nodes): on the SQLite store the list is this node, live,
  // read again every 10 s, so the two connections reach its row within a reading.
  const nodeRows = p.locator("#nodes-list tbody tr");
  if ((await nodeRows.count()) !== 1) fail(`the node list has ${await nodeRows.count()} rows, expected this node alone`);
  const nodeId = (await p.textContent("#st-node-id")).trim();
  await nodeRows.locator("td", { hasText: nodeId }).locator("text=本节点").waitFor();
  await nodeRows.locator(".badge.state-active", { hasText: "在线" }).waitFor();
  await nodeRows.locator("td", { hasText: /秒前$/ }).waitFor();
  await nodeRows.locator("td", { hasText: /^3$/ }).waitFor({ timeout: 30000 });
  ok(`the node list shows this node live, refreshed with its 3 connections: "${(await nodeRows.textContent()).trim()}"`);
  await p.waitForFunction(() => (document.querySelector(".charts polyline")
    ?.getAttribute("points") || "").split(" ").length >= 2, null, { timeout: T });
  ok(`the live chart shows connections and messages per second: "${await p.textContent("#chart-connections")}", "${await p.textContent("#chart-messages")}"`);
  // A reload keeps the charts' recent history (sessionStorage, src/console/history.js):
  // the first poll after it already draws the points from before, where without the
  // history a single point would draw nothing. The DR lag chart likewise.
  const polyPoints = (sel) => p.evaluate((sel) => (document.querySelector(sel)?.closest("figure")
    ?.querySelector("polyline")?.getAttribute("points") || "").split(" ").filter(Boolean).length, sel);
  const before = await polyPoints("#chart-connections");
  await p.reload();
  await p.waitForFunction(() => document.querySelector("[data-restored]"), null, { timeout: T });
  const restored = Number(await p.getAttribute("[data-restored]", "data-restored"));
  const afterReload = await polyPoints("#chart-connections");
  if (restored < 2 || restored < before - 1 || afterReload < restored + 1) {
    fail(`the connections chart after a reload: ${restored} points restored, ${afterReload} drawn (${before} before)`);
  }
  await p.locator("#chart-dr-lag", { hasText: "最大" }).waitFor();
  const lagPoints = await polyPoints("#chart-dr-lag");
  if (lagPoints < 2) fail(`the DR lag chart starts empty after a reload (${lagPoints} points)`);
  ok(`a reload keeps the charts' history: ${restored} connection readings restored (${before} before), ${lagPoints} DR lag readings`);
  // Corrupt or foreign stored history is ignored, removed and written afresh.
  await p.evaluate(() => {
    sessionStorage.setItem("tongxin.console.charts.v1.node", "{corrupt");
    sessionStorage.setItem("tongxin.console.charts.v1.drLag", JSON.stringify({ v: 1, owner: "", series: { lag: [{ t: "x", v: 1 }] } }));
  });
  await p.reload();
  await p.waitForFunction(() => document.querySelector("[data-restored]"), null, { timeout: T });
  if ((await p.getAttribute("[data-restored]", "data-restored")) !== "0") fail("corrupt chart history was restored");
  await p.waitForFunction(() => document.querySelector("#chart-connections")?.textContent.trim());
  const rewritten = await p.evaluate(() => JSON.parse(sessionStorage.getItem("tongxin.console.charts.v1.node") || "null"));
  if (!rewritten || rewritten.v !== 1 || !Array.isArray(rewritten.series?.connections)) {
    fail(`the corrupt chart history was not replaced: ${JSON.stringify(rewritten)}`);
  }
  ok("corrupt chart history in sessionStorage is ignored and replaced; the charts start afresh");
  await shot(p, "03-status");
  await axe(p, "status");
  await sockets.context().close();

  // 配置 (GET /api/v1/admin/config): a key the driver set, with its default and
  // "changed"; the database DSN (a password in it) and the Redis password of the
  // node's environment only as "set"; the filter narrows the tables to one section.
  await goTo(p, "config");
  const cfgRow = (key) => p.locator("#config-list tr", { has: p.locator(`code[data-key="${key}"]`) });
  await cfgRow("accounts.scrypt_n").locator("td", { hasText: /^1024$/ }).waitFor();
  await cfgRow("accounts.scrypt_n").locator("td", { hasText: /^16384$/ }).waitFor();
  await cfgRow("accounts.scrypt_n").locator(".badge", { hasText: "已修改" }).waitFor();
  await cfgRow("storage.mysql_dsn").locator("[data-secret=set]", { hasText: "已设置" }).waitFor();
  await cfgRow("files.s3_secret_key").locator("[data-secret=unset]", { hasText: "未设置" }).waitFor();
  await p.locator("tr", { has: p.locator('code[data-env="TONGXIN_REDIS_PASSWORD"]') })
    .locator("[data-secret=set]").waitFor();
  const cfgText = await p.textContent("main");
  for (const secret of cfgSecrets) if (cfgText.includes(secret)) fail(`the configuration page shows a secret: ${secret}`);
  await shot(p, "03b-config");
  await axe(p, "config");
  await p.fill("#config-filter", "recall_window");
  await p.locator("#config-count", { hasText: "显示 1 / " }).waitFor();
  if ((await p.locator("#config-list tbody tr").count()) !== 1
    || (await p.locator("#config-list section").getAttribute("data-section")) !== "chat") fail("the filter does not narrow to chat.recall_window");
  ok("the configuration page shows accounts.scrypt_n 1024 (default 16384, changed), the DSN and the Redis password only as set, and filters");

  await refused(p, "sysadmin", "drills", "GET", "/evidence", "auditor");
  await refused(p, "sysadmin", "audit", "GET", "/audit", "auditor");
  await refused(p, "sysadmin", "audit", "GET", "/audit/download?format=csv", "auditor");
  await refused(p, "sysadmin", "sessions", "GET", "/sessions", "secadmin");
  await refused(p, "sysadmin", "sessions", "DELETE", `/users/${live.username}/sessions`, "secadmin");
  await shot(p, "04-forbidden");
  await axe(p, "forbidden");
  ok("sysadmin is refused the auditor's pages (audit trail, drill reports) and their API (403, separation of duties)");
  await logout(p);
  ok("sysadmin logged out; the token is revoked (401)");

  // ---- 安全管理员 ---------------------------------------------------------------------
  const s = await newPage("secadmin");
  await login(s, sec);
  const secLinks = await navLinks(s);
  if (JSON.stringify(secLinks) !== JSON.stringify(["#/admins", "#/sessions", "#/keys", "#/policy", "#/retention", "#/approvals"])) {
    fail(`secadmin navigation: ${secLinks}`);
  }
  await s.locator("#admins-list table").waitFor();
  await s.locator(`[data-totp="${aud.username}"]`).click();
  await s.locator("#totp-qr").waitFor();
  const qrOk = await s.locator("#totp-qr").evaluate((img) => img.complete && img.naturalWidth > 100);
  if (!qrOk) fail("the TOTP QR code did not render");
  const newSecret = (await s.textContent("#totp-secret")).trim();
  const uri = await s.textContent("#totp-uri");
  if (!uri.startsWith("otpauth://totp/") || !uri.includes(newSecret)) fail(`otpauth URI: ${uri}`);
  ok("secadmin enrolled a new TOTP for the auditor: QR code and secret shown once");
  await shot(s, "05-admins-totp");
  await axe(s, "admins");

  // Force another administrator out: the sysadmin signs in again on a page of its
  // own; after the secadmin's sign-out (a step-up) its token is refused.
  const p2 = await newPage("sysadmin-again");
  await login(p2, sys);
  const sysToken = await p2.evaluate(() => JSON.parse(sessionStorage.getItem("tongxin.console.session")).token);
  if ((await apiAs(p2, sysToken, "GET", "/whoami")).status !== 200) fail("the sysadmin's new session does not work");
  await s.locator(`[data-signout="${sys.username}"]`).click();
  await stepUp(s, sec.secret);
  await s.locator("#admins-status", { hasText: "已结束" }).waitFor();
  const afterSignOut = await apiAs(p2, sysToken, "GET", "/whoami");
  if (afterSignOut.status !== 401) fail(`the signed-out sysadmin's token still works: ${afterSignOut.status}`);
  // Not goTo(): the users page's title shows only until its first API call is refused
  // (401), so waiting for the title races the sign-in form that replaces it.
  await p2.goto(`${console_}#/users`);
  await p2.locator("#login-form").waitFor();
  ok(`secadmin signed the sysadmin out after a TOTP step-up: its token is refused and its console asks to sign in (${await s.textContent("#admins-status")})`);
  await p2.context().close();

  // The sessions page: an ordinary user's live client (the driver's, over WebSocket) is
  // listed with its device, address and node; force logout (a confirmation, then a step-up)
  // revokes its token and the row goes. The driver checks the connection was closed and
  // the token is refused afterwards.
  await goTo(s, "sessions");
  await s.locator("#sessions-list table").waitFor();
  await s.fill("#sessions-search input[name=user]", live.username);
  await s.click("#sessions-search button[type=submit]");
  const liveRow = s.locator("#sessions-list tr", { has: s.locator(`[data-device="${live.device}"]`) });
  await liveRow.waitFor();
  const liveText = await liveRow.textContent();
  if (!liveText.includes("127.0.0.1") || !liveText.includes("本节点") || !liveText.includes(live.username)) {
    fail(`the live session's row lacks the user, address or node: ${liveText}`);
  }
  await shot(s, "05b-sessions");
  await axe(s, "sessions");
  await liveRow.locator(`[data-device="${live.device}"]`).click();
  await s.locator("dialog[open] button[type=submit]").click(); // the confirmation
  await stepUp(s, sec.secret);
  await s.locator("#sessions-status", { hasText: "已强制" }).waitFor();
  await s.locator(`#sessions-list [data-device="${live.device}"]`).waitFor({ state: "detached" });
  const left = await apiAs(s, await myToken(s), "GET", `/sessions?user=${live.username}`);
  if (left.status !== 200 || left.body.sessions.some((x) => x.device_id === live.device)) {
    fail(`the forced-out session is still listed: ${JSON.stringify(left)}`);
  }
  ok(`secadmin forced the live session of ${live.username} (${live.device}) out from the sessions page after a confirmation and a TOTP step-up (${await s.textContent("#sessions-status")})`);

  // The keys page: the at-rest master key's status (GET /keys/atrest), its rotation
  // (step-up) followed to the end, then the audit signing key, whose fingerprint shows
  // before it is rotated.
  await goTo(s, "keys");
  await s.locator("#atrest-kek").waitFor();
  const oldKek = (await s.textContent("#atrest-kek")).trim();
  const source = await s.textContent("#atrest-source");
  if (!/^[0-9a-f]{16}$/.test(oldKek) || !source.includes("master.key")) fail(`at-rest status: KEK ${oldKek}, source ${source}`);
  if ((await s.getAttribute("#atrest-data-keys", "data-pending")) !== "0") fail("data keys under an older KEK before any rotation");
  await s.click("#rotate-atrest-key");
  await s.locator("dialog[open] button[type=submit]").click();
  await stepUp(s, sec.secret);
  await s.locator('#atrest-rotation-state[data-state="done"]').waitFor();
  const newKek = (await s.textContent("#atrest-kek")).trim();
  if (newKek === oldKek || (await s.textContent("#atrest-new-kek")).trim() !== newKek) {
    fail(`after the rotation the page shows KEK ${newKek} (was ${oldKek})`);
  }
  await s.locator("#atrest-status", { hasText: newKek }).waitFor();
  if ((await s.textContent("#atrest-rotation")).includes("null")) fail(`the rotation panel: ${await s.textContent("#atrest-rotation")}`);
  if ((await s.getAttribute("#atrest-older", "data-count")) !== "0") fail("the old KEK is still listed after a complete rotation");
  const atrest = await apiAs(s, await myToken(s), "GET", "/keys/atrest");
  if (atrest.body.kek?.id !== newKek || atrest.body.rotation?.retired?.[0] !== oldKek) {
    fail(`GET /keys/atrest after the rotation: ${JSON.stringify(atrest.body)}`);
  }
  ok(`secadmin saw the at-rest key status and rotated the master key after a TOTP step-up: KEK ${oldKek} -> ${newKek}, the old one retired`);
  await shot(s, "06-keys-atrest");

  const shownFingerprint = (await s.textContent("#audit-fingerprint")).trim();
  if (!/^[0-9a-f]{16,}$/.test(shownFingerprint)) fail(`audit key fingerprint before the rotation: ${shownFingerprint}`);
  await s.click("#rotate-audit-key");
  await s.locator("dialog[open] button[type=submit]").click();
  await stepUp(s, sec.secret);
  await s.locator("#new-fingerprint").waitFor();
  const newFingerprint = (await s.textContent("#new-fingerprint")).trim();
  const oldShown = (await s.textContent("#rotation dd code")).trim();
  if (oldShown !== shownFingerprint || (await s.textContent("#audit-fingerprint")).trim() !== newFingerprint) {
    fail(`audit key: shown ${shownFingerprint} before, the rotation's old one ${oldShown}, new ${newFingerprint}`);
  }
  ok(`secadmin rotated the audit signing key after a TOTP step-up; the fingerprint the page showed before was the old one (new ${newFingerprint.slice(0, 16)}…)`);
  await shot(s, "06-keys");
  await axe(s, "keys");

  // The policy page: this test node hashes with scrypt N 1024 and asks one character
  // class, which 等保 finds short; eight characters it finds enough.
  await goTo(s, "policy");
  await s.locator("#policy-verdict", { hasText: "未达到" }).waitFor();
  const verdictOf = (key) => s.textContent(`[data-key="${key}"]`);
  if ((await verdictOf("scrypt_n")) !== "不符合" || (await verdictOf("password_min_classes")) !== "不符合"
    || (await verdictOf("password_min_length")) !== "符合" || (await verdictOf("token_ttl")) !== "无要求") {
    fail(`the policy page's verdicts: scrypt_n ${await verdictOf("scrypt_n")}, min_length ${await verdictOf("password_min_length")}`);
  }
  ok("the policy page shows each password and lockout rule against 等保 (scrypt N 1024 and one character class fall short)");
  await shot(s, "06b-policy");
  await axe(s, "policy");

  // Change it from the page: a value out of range is refused on the page (no step-up,
  // nothing sent), then 12 characters and 3 classes are saved after a TOTP step-up and
  // the table shows them in force.
  if (/\b(null|undefined|NaN)\b/.test(await s.textContent("#policy-view"))) fail("the policy page shows null, undefined or NaN");
  const policyField = (key) => s.locator(`#policy-${key}`);
  await policyField("password_min_length").fill("200");
  await s.click("#policy-save");
  await s.locator("#policy-password_min_length-error", { hasText: "128" }).waitFor();
  if ((await policyField("password_min_length").getAttribute("aria-invalid")) !== "true") fail("the refused field is not marked invalid");
  await s.locator("#policy-status.error", { hasText: "未做任何修改" }).waitFor();
  if (await s.locator("dialog[open]").count()) fail("a refused value still asked for a step-up");
  await shot(s, "06c-policy-refused");
  await axe(s, "policy (refused value)");
  await policyField("password_min_length").fill("12");
  await policyField("password_min_classes").fill("3");
  await s.fill("#policy-reason", "等保测评整改");
  await s.click("#policy-save");
  await stepUp(s, sec.secret);
  await s.locator("#policy-status", { hasText: "已保存 2 项" }).waitFor();
  const shown = async (key) => (await s.textContent(`[data-value="${key}"]`)).trim();
  if ((await shown("password_min_length")) !== "12" || (await shown("password_min_classes")) !== "3"
    || (await verdictOf("password_min_classes")) !== "符合" || (await policyField("password_min_length").inputValue()) !== "12") {
    fail(`the policy page after the change: length ${await shown("password_min_length")}, classes ${await shown("password_min_classes")} (${await verdictOf("password_min_classes")})`);
  }
  const changes = await s.locator("#policy-changes li").allTextContents();
  if (changes.length !== 2 || !changes.some((c) => c.includes("8 → 12"))) fail(`the changes listed: ${JSON.stringify(changes)}`);
  if (!(await s.locator('[data-revert="password_min_length"]').count())) fail("no way back to the configuration file's value");
  // The node answers the new rule too, read back with the secadmin's own token.
  const read = await apiAs(s, await myToken(s), "GET", "/policy");
  if (read.body.overrides?.password_min_length !== 12) fail(`GET /policy after the change: ${JSON.stringify(read.body.overrides)}`);
  ok(`secadmin changed the password policy from the page after a TOTP step-up (${changes.join("; ")}); an out-of-range value was refused on the page`);
  await shot(s, "06d-policy-changed");
  await axe(s, "policy (changed)");

  await goTo(s, "retention");
  await s.locator("#audit-days").waitFor();
  const hold = s.locator("#hold-form");
  await hold.locator("input[name=target]").fill(staff.username);
  await hold.locator("input[name=reason]").fill("案件调查 2026-17");
  await hold.locator("button[type=submit]").click();
  await s.locator("#holds tr", { hasText: "案件调查 2026-17" }).waitFor();
  ok("secadmin set a legal hold on a user; the page lists it");
  await shot(s, "07-retention");
  await axe(s, "retention");

  await goTo(s, "approvals");
  await s.locator("#approvals-pending td.empty", { hasText: "本节点上没有待处理的申请" }).waitFor();
  ok("secadmin's list of open escrow requests is shown (none on this node)");
  await s.fill("#approve-form input[name=request_id]", "no-such-request");
  await s.fill("#approve-form textarea[name=share]", "not-a-share");
  await s.click("#approve-form button[type=submit]");
  await stepUp(s, sec.secret);
  await s.locator("#approvals-status.error", { hasText: "未找到" }).waitFor();
  ok("secadmin's escrow approval of an unknown request is refused and shown");
  await shot(s, "08-approvals");
  await axe(s, "approvals");

  await refused(s, "secadmin", "users", "GET", "/users", "sysadmin");
  ok("secadmin is refused the sysadmin's page and its API (403)");
  await logout(s);

  // ---- 审计管理员 ----------------------------------------------------------------------
  const a = await newPage("auditor");
  await a.goto(console_);
  await a.fill("#username", aud.username);
  await a.fill("#password", aud.password);
  await a.fill("#totp", await totp(aud.secret));
  await a.click("#login-submit");
  await a.locator("#login-error", { hasText: "动态口令" }).waitFor();
  await login(a, aud, newSecret);
  const audLinks = await navLinks(a);
  if (JSON.stringify(audLinks) !== JSON.stringify(["#/audit", "#/report", "#/drills", "#/export", "#/escrow", "#/retained"])) fail(`auditor navigation: ${audLinks}`);
  ok("auditor signed in with the TOTP enrolled on the secadmin's page (the old secret is refused)");

  await a.locator("#audit-records table").waitFor();
  const search = async (fields) => {
    const f = a.locator("#audit-filters");
    await f.locator("button[type=reset]").click();
    for (const [name, value] of Object.entries(fields)) {
      if (name === "outcome") await f.locator("select[name=outcome]").selectOption(value);
      else await f.locator(`input[name=${name}]`).fill(value);
    }
    await f.locator("button[type=submit]").click();
    // Until the newest load has drawn the table (the clear's reload may still run).
    await a.waitForFunction(() => !document.querySelector("#audit-records")?.hasAttribute("aria-busy")
      && !document.querySelector("#audit-status")?.textContent);
    return a.locator("#audit-records tbody tr").evaluateAll((trs) => trs.map((tr) =>
      [...tr.querySelectorAll("td")].map((td) => td.textContent)));
  };
  const has = (rows, event, target, outcome) => rows.some((r) => r[2] === event
    && (target === undefined || r[4] === target) && (outcome === undefined || r[5] === outcome));
  let rows = await search({ actor: sys.username, event: "user." });
  for (const [ev, target] of [["user.create", staff.username], ["user.disable", staff.username],
    ["user.enable", staff.username], ["user.reset_password", staff.username], ["user.delete", temp.username]]) {
    if (!has(rows, ev, target)) fail(`no ${ev} of ${target} by ${sys.username} in the audit page: ${JSON.stringify(rows)}`);
  }
  if (rows.some((r) => !r[2].startsWith("user."))) fail("the event filter let other events through");
  ok("the audit trail shows the sysadmin's actions (create, disable, enable, reset, delete), filtered by actor and event");
  rows = await search({ actor: sys.username, event: "org." });
  for (const ev of ["org.create", "org.rename", "org.assign", "org.delete"]) {
    if (!has(rows, ev)) fail(`no ${ev} by ${sys.username} in the audit page: ${JSON.stringify(rows)}`);
  }
  ok("the audit trail shows the sysadmin's organisation changes, the refused deletes too");
  rows = await search({ event: "user.create", actor: sys.username });
  if (!has(rows, "user.create", `wang${suffix}`) || !has(rows, "user.create", `zhao${suffix}`)) {
    fail(`the CSV import's creations are not in the audit page: ${JSON.stringify(rows)}`);
  }
  rows = await search({ event: "admin.forbidden" });
  if (!has(rows, "admin.forbidden", "audit.read") || !has(rows, "admin.forbidden", "report.read")
    || !has(rows, "admin.forbidden", "user.list")) {
    fail(`the refused API calls are not in the audit page: ${JSON.stringify(rows)}`);
  }
  ok("the audit trail shows the refused calls of the sysadmin and the secadmin");
  rows = await search({ actor: sec.username });
  for (const [ev, target] of [["totp.reset", aud.username], ["key.rotate", "audit_sign"],
    ["hold.set", undefined], ["auth.step_up", "key.rotate"], ["policy.set", "accounts"], ["auth.step_up", "policy.set"]]) {
    if (!has(rows, ev, target)) fail(`no ${ev} by ${sec.username} in the audit page: ${JSON.stringify(rows)}`);
  }
  if (!has(rows, "escrow.approve", undefined, "失败")) fail(`no failed escrow.approve: ${JSON.stringify(rows)}`);
  ok("the audit trail shows the secadmin's TOTP enrolment, key rotation, policy change, legal hold and refused approval");
  rows = await search({ actor: sec.username, event: "keys." });
  if (!has(rows, "keys.rotate", "master key", "成功") || !has(rows, "keys.status", "master key")) {
    fail(`the master key rotation is not in the audit page: ${JSON.stringify(rows)}`);
  }
  ok("the audit trail shows the secadmin's master key rotation and status reads");
  rows = await search({ actor: sec.username, event: "user_session." });
  if (!has(rows, "user_session.revoke", live.username, "成功") || !has(rows, "user_session.list", live.username)) {
    fail(`the force logout is not in the audit page: ${JSON.stringify(rows)}`);
  }
  rows = await search({ event: "admin.forbidden", actor: sys.username });
  if (!has(rows, "admin.forbidden", "user_session.list") || !has(rows, "admin.forbidden", "user_session.revoke")) {
    fail(`the sysadmin's refused session calls are not in the audit page: ${JSON.stringify(rows)}`);
  }
  ok("the audit trail shows who forced whom out (user_session.revoke) and the sysadmin's refused session calls");
  const future = new Date(Date.now() + 3600e3);
  const local = (d) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  rows = await search({ from: local(future) });
  if (rows.length !== 1 || !rows[0][0].includes("没有")) fail(`a time range in the future found records: ${JSON.stringify(rows)}`);
  ok("the time filter narrows the trail (nothing after an hour from now)");
  // Download the whole search result (GET /audit/download): the same records as the page,
  // and in the CSV the formula typed as a username at a failed login is defused.
  rows = await search({ event: "auth.login", outcome: "failed" });
  const shownSeqs = rows.map((r) => r[0]);
  const savedAs = async (fmt) => {
    const [dl] = await Promise.all([a.waitForEvent("download"), a.click(`#audit-download-${fmt}`)]);
    const path = join(mkdtempSync(join(tmpdir(), "tongxin-audit-")), dl.suggestedFilename());
    await dl.saveAs(path);
    await a.locator("#audit-status", { hasText: "已下载" }).waitFor();
    return [dl.suggestedFilename(), readFileSync(path, "utf8")];
  };
  const [jsonlName, jsonlText] = await savedAs("jsonl");
  const lines = jsonlText.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  if (!jsonlName.endsWith(".jsonl") || JSON.stringify(lines.map((r) => String(r.seq))) !== JSON.stringify(shownSeqs)
    || lines.some((r) => r.event !== "auth.login" || r.outcome !== "failed")) {
    fail(`the JSON Lines download is not the search result: ${jsonlName} ${JSON.stringify(lines.map((r) => r.seq))} vs ${shownSeqs}`);
  }
  const [csvName, csvText] = await savedAs("csv");
  const Papa = require("papaparse");
  const csvRows = Papa.parse(csvText.replace(/^\uFEFF/, ""), { skipEmptyLines: true }).data;
  const targetCol = csvRows[0].indexOf("target");
  const formulaRow = csvRows.find((r) => r[targetCol] === `'${FORMULA_USER.toLowerCase()}`);
  if (!csvName.endsWith(".csv") || csvRows.length - 1 !== shownSeqs.length || !formulaRow
    || csvRows.slice(1).some((r) => r.some((c) => /^[=+\-@\t\r]/.test(c)))) {
    fail(`the CSV download: ${csvName}, ${csvRows.length - 1} rows for ${shownSeqs.length}, formula row ${JSON.stringify(formulaRow)}`);
  }
  await a.locator("#audit-status", { hasText: `已下载 ${shownSeqs.length} 条记录` }).waitFor();
  rows = await search({ event: "audit.download", actor: aud.username });
  const finished = rows.filter((r) => r[6].includes("\"step\":\"finished\"") && r[6].includes(`"count":${shownSeqs.length},`)
    && r[6].includes("auth.login"));
  if (finished.length !== 2) fail(`the two downloads are not in the audit trail: ${JSON.stringify(rows)}`);
  ok(`the auditor downloaded the search result as JSON Lines and CSV (${shownSeqs.length} records each, the formula username quoted), both audited`);
  await shot(a, "05a-audit-download");
  // Paging: 50 a page, newest first; the next page holds older records.
  await search({});
  const first = await a.locator("#audit-records tbody tr td:first-child").allTextContents();
  if (first.length === 50 && !(await a.locator("#audit-next").isDisabled())) {
    await a.click("#audit-next");
    await a.locator("#audit-page", { hasText: "第 2 页" }).waitFor();
    const second = await a.locator("#audit-records tbody tr td:first-child").allTextContents();
    if (!(Number(first[0]) > Number(first[first.length - 1]))) fail(`page 1 is not newest first: ${first[0]}…`);
    if (!(Number(second[0]) < Number(first[first.length - 1]))) fail(`page 2 starts at ${second[0]}`);
    await a.click("#audit-prev");
    await a.locator("#audit-page", { hasText: "第 1 页" }).waitFor();
    ok(`the audit trail pages newest first (50 a page: records ${first[0]}–${first[first.length - 1]}, then ${second[0]}–${second[second.length - 1]})`);
  } else {
    ok(`the audit trail fits on one page (${first.length} records)`);
  }
  await a.click("#verify-chain");
  await a.locator("#verify-verdict").waitFor();
  // The key pinned at the start verifies the chain; the one the secadmin rotated in is
  // not pinned yet, and the page must say exactly that (docs/compliance.md, "Trusted keys").
  const problems = await a.locator("#verify-result li").evaluateAll((lis) => lis.map((li) => [li.dataset.kind, li.textContent]));
  const other = problems.filter(([kind, text]) => !(kind === "untrusted-key" && text.includes(newFingerprint.slice(0, 16))));
  if (other.length || (problems.length && !(await a.locator("#pin-hint").count()))) {
    await shot(a, "09-audit-verify-failed");
    fail(`the chain does not verify: ${await a.textContent("#verify-result")}`);
  }
  ok(`the audit chain verifies from the page: records ${await a.textContent("#verify-range")} intact, `
    + `${problems.length} heads signed by the newly rotated key reported as not pinned yet`);
  await shot(a, "09-audit");
  await axe(a, "audit");

  await goTo(a, "report");
  await a.locator("#report-title", { hasText: "等级保护" }).waitFor();
  const summary = await a.textContent("#report-summary");
  const [download] = await Promise.all([a.waitForEvent("download"), a.click("#report-download-html")]);
  const saved = join(mkdtempSync(join(tmpdir(), "tongxin-console-")), download.suggestedFilename());
  await download.saveAs(saved);
  const html = readFileSync(saved, "utf8");
  if (!html.includes("等级保护") || !html.includes("<table")) fail("the downloaded report lacks its title or table");
  ok(`the compliance report is shown and downloaded (${summary}; ${download.suggestedFilename()}, ${html.length} bytes)`);
  await shot(a, "10-report");
  await axe(a, "report");

  // 演练报告 (GET /evidence): every record newest first; the drill opened shows its
  // figures, its JSON downloads as it is on the node, and its HTML page (rendered by the
  // node) opens in a frame where the run id's markup is text, not an element.
  await goTo(a, "drills");
  const evRow = (file) => a.locator("#drills-list tr", { has: a.locator(`button[data-file="${file}"]`) });
  await evRow(evidence.backupFile).locator(".badge", { hasText: "失败" }).waitFor();
  await evRow(evidence.backupFile).locator("td", { hasText: evidence.backupError }).waitFor();
  await evRow(evidence.drillFile).locator("td", { hasText: "RPO 2 秒 · RTO 12 秒" }).waitFor();
  const order = await a.locator("#drills-list button[data-file]").evaluateAll((bs) => bs.map((b) => b.dataset.file));
  if (order.indexOf(evidence.backupFile) > order.indexOf(evidence.drillFile)) fail(`records not newest first: ${order}`);
  await shot(a, "10b-drills");
  await axe(a, "drills");
  await evRow(evidence.drillFile).locator("button").click();
  await a.locator("#drill-rpo", { hasText: "2 秒" }).waitFor();
  await a.locator("#drill-rto", { hasText: "12 秒" }).waitFor();
  const [drillDl] = await Promise.all([a.waitForEvent("download"), a.click("#drill-download")]);
  const drillPath = join(mkdtempSync(join(tmpdir(), "tongxin-console-")), drillDl.suggestedFilename());
  await drillDl.saveAs(drillPath);
  const drillDoc = JSON.parse(readFileSync(drillPath, "utf8"));
  if (drillDoc.run_id !== evidence.drillRunId || drillDl.suggestedFilename() !== evidence.drillFile) {
    fail(`the downloaded drill report is not the file: ${drillDl.suggestedFilename()} ${drillDoc.run_id}`);
  }
  await a.click("#drill-open-html");
  const drillFrame = a.frameLocator("#drill-frame");
  await drillFrame.locator("h1", { hasText: "容灾演练报告" }).waitFor();
  await drillFrame.locator("body", { hasText: evidence.drillRunId }).first().waitFor();
  // The run id's <b> and <script> stayed text (the page's own inline SVG charts are pygal's).
  if (await drillFrame.locator("script", { hasText: "x()" }).count() + await drillFrame.locator("b", { hasText: /^01$/ }).count()) {
    fail("markup from the drill report became elements in its page");
  }
  if ((await a.getAttribute("#drill-frame", "sandbox")) !== "") fail("the drill report's frame is not sandboxed");
  ok(`the drill reports page lists the failed backup and the drill newest first; the drill opens (RPO, RTO), its JSON downloads and its HTML page shows the run id as text (${evidence.drillFile})`);
  await shot(a, "10c-drill-open");
  await axe(a, "drill report");

  await goTo(a, "escrow");
  const ef = a.locator("#escrow-form");
  await ef.locator("input[name=conversation_id]").fill("c_test");
  await ef.locator("input[name=from]").fill(local(new Date(Date.now() - 86400e3)));
  await ef.locator("input[name=to]").fill(local(new Date()));
  await ef.locator("input[name=reason]").fill("纪检调查");
  // A well-formed share (the node refuses it before it looks at it: no sealed escrow key here).
  await ef.locator("textarea[name=share]").fill(`tongxin-escrow-share-v1:0123456789abcdef:2:1:${"ab".repeat(32)}`);
  await ef.locator("button[type=submit]").click();
  await stepUp(a, newSecret);
  await a.locator("#escrow-status.error").waitFor();
  ok(`an escrow request on a node without two-person escrow is refused and shown: ${await a.textContent("#escrow-status")}`);
  await shot(a, "11-escrow");
  await axe(a, "escrow");

  // Export: a user's messages, signed; the step-up of the escrow request above may
  // still be fresh (the node's step_up_window), else the dialog asks again.
  await goTo(a, "export");
  const xf = a.locator("#export-form");
  await xf.locator("input[name=user]").fill(staff.username);
  await xf.locator("button[type=submit]").click();
  const exportFirst = await Promise.race([
    a.locator("#export-id").waitFor().then(() => "done", () => "none"),
    a.locator("dialog[open]").waitFor().then(() => "dialog", () => "none")]);
  if (exportFirst === "dialog") await stepUp(a, newSecret);
  await a.locator("#export-records").waitFor().catch(async (e) => {
    fail(`no export result (${exportFirst}): ${e.message.split("\n")[0]}; page says "${await a.textContent("#export-status")}", dialog open: ${await a.locator("dialog[open]").count()}`);
  });
  const exportId = await a.textContent("#export-id");
  if (!/^exp_\d+_[0-9a-f]{8}$/.test(exportId)) fail(`the export page shows export id "${exportId}"`);
  const [manifestDl] = await Promise.all([
    a.waitForEvent("download").catch(async (e) => { fail(`no download: ${e.message}; page says "${await a.textContent("#export-status")}"`); }),
    a.click('button[data-file="manifest.json"]')]);
  const manifestPath = join(mkdtempSync(join(tmpdir(), "tongxin-console-")), manifestDl.suggestedFilename());
  await manifestDl.saveAs(manifestPath);
  const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
  if (manifest.export_id !== exportId || manifest.records !== Number(await a.textContent("#export-records"))) {
    fail(`the downloaded manifest does not match the page: ${JSON.stringify(manifest)}`);
  }
  ok(`the auditor exported ${staff.username}'s messages (${exportId}, ${manifest.records} records) and downloaded the signed manifest`);
  await shot(a, "12-export");
  await axe(a, "export");

  // Retention and legal holds, read-only: the hold the secadmin set is there, and
  // nothing on the page changes anything.
  await goTo(a, "retained");
  await a.locator("#holds tr", { hasText: "案件调查 2026-17" }).waitFor();
  const changers = await a.locator("[data-release], #hold-form, #audit-retention-form").count();
  if (changers !== 0) fail(`the auditor's retention page offers ${changers} controls that change something`);
  if ((await a.locator("body").textContent()).includes("null")) fail("the auditor's retention page shows a stray \"null\"");
  ok("the auditor sees the retention periods and the secadmin's legal hold, read-only");
  await shot(a, "12b-retained");
  await axe(a, "retained");

  await refused(a, "auditor", "admins", "GET", "/roles", "secadmin");
  await refused(a, "auditor", "keys", "GET", "/keys/atrest", "secadmin");
  await refused(a, "auditor", "sessions", "GET", "/sessions", "secadmin");
  ok("auditor is refused the secadmin's page and its API (403): administrators, keys, sessions");
  await goTo(a, "audit");
  rows = await search({ actor: aud.username, event: "escrow.request" });
  if (!has(rows, "escrow.request", "conversation:c_test", "失败")) fail(`escrow.request not audited: ${JSON.stringify(rows)}`);
  rows = await search({ actor: aud.username, event: "export." });
  if (!has(rows, "export.messages") || !has(rows, "export.download", `${exportId}/manifest.json`)) {
    fail(`the export and its download are not in the audit trail: ${JSON.stringify(rows)}`);
  }
  rows = await search({ actor: aud.username, event: "report.compliance" });
  if (!rows.length || rows[0][2] !== "report.compliance") fail("report.compliance not audited");
  ok("the auditor's own report and escrow request are in the audit trail");
  await logout(a);

  // ---- English: switched on the page, and followed from the browser ------------------------
  await a.selectOption("#lang", "en");
  await a.locator("#login-submit", { hasText: "Sign in" }).waitFor();
  if ((await a.getAttribute("html", "lang")) !== "en") fail("html lang did not follow the switch");
  await shot(a, "12-login-en");
  const e = await newPage("english", "en-US");
  await e.goto(console_);
  await e.locator("#login-submit", { hasText: "Sign in" }).waitFor();
  await login(e, sys);
  await e.locator("#page-title", { hasText: "Users" }).waitFor();
  await shot(e, "13-users-en");
  await axe(e, "users (en)");
  ok("the console switches to English and follows the browser language (en-US)");
  await e.setViewportSize({ width: 390, height: 844 });
  await e.locator("#users-list table").waitFor();
  await shot(e, "14-phone-users-en");
  await axe(e, "users at 390px");
  ok("the console works at phone width (390px)");

  ok(`no serious or critical accessibility violations on ${axeChecked.length} pages (${axeChecked.join(", ")})`);
  ok(`no raw catalogue key shown on ${rawKeysChecked.length} rendered pages`);
  if (pageErrors.length) fail(`errors in the pages:\n${pageErrors.join("\n")}`);
  ok("no uncaught errors in the pages");
  console.log(`console: ${passed} checks passed`);
  await browser.close();
} catch (err) {
  console.error(`FAILED: ${err.message}`);
  if (pageErrors.length) console.error(`page errors:\n${pageErrors.join("\n")}`);
  await browser.close();
  process.exit(1);
}
