// Browser test of the web client against a running Tongxin node.
//
//   node tests/e2e.mjs http://127.0.0.1:PORT [--artifacts DIR]
//
// Drives Debian's headless Chromium (/usr/bin/chromium, or $CHROMIUM) with
// playwright-core: two users in two browser contexts register, chat both
// ways, type, edit, recall, page back through history, send a file through
// the files API (when the server has it) and see read receipts come back; a
// third context at phone width logs in again. Prints one "ok - ..." line per
// verified behaviour and exits non-zero on the first failure. Screenshots go
// to the artifacts directory. When the server offers end-to-end encryption
// the pages use it (docs/e2ee.md "Web client"): the checks then also hold for
// ciphertext, and where E2EE changes what is right (a new device cannot read
// older history, ciphertext does not compress) they check that instead.
// End-to-end encrypted tests proper are in tests/e2ee_driver.mjs.
//
// Language (docs/web-client.md "Language"): the users' browsers are zh-CN, so
// the screenshots show the Chinese UI; an en-US browser gets English, the
// 中文/English switch changes the page and survives a reload, and times read
// as each language writes them. Elements are found by id, data-* attributes
// or the catalogues' text, never by hard-coded English.
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { launchChromium, requireChromium } from "./chromium.mjs";

const args = process.argv.slice(2);
const base = args.find((a) => !a.startsWith("--"));
const artIdx = args.indexOf("--artifacts");
const artifacts = resolve(artIdx >= 0 ? args[artIdx + 1] : "test-artifacts/browser");
if (!base) {
  console.error("usage: node tests/e2e.mjs http://HOST:PORT [--artifacts DIR]");
  process.exit(2);
}
requireChromium();
// Without a CJK font Chromium draws the Chinese UI as empty boxes.
let cjkFonts = "";
try {
  cjkFonts = execFileSync("fc-list", [":lang=zh"], { encoding: "utf8" }).trim();
} catch {
  /* no fontconfig: reported below */
}
if (!cjkFonts) {
  console.error("FAILED: no CJK font (`fc-list :lang=zh` is empty): the zh-CN pages would show boxes; install one with: apt-get install -y fonts-wqy-microhei");
  process.exit(3);
}
mkdirSync(artifacts, { recursive: true });
const catalogue = (lang) => JSON.parse(readFileSync(new URL(`../src/i18n/${lang}.json`, import.meta.url), "utf8"));
const zh = catalogue("zh-CN");
const en = catalogue("en");

const started = Date.now();
let passed = 0;
const ok = (what) => {
  passed++;
  console.log(`ok - ${what}`);
};
const fail = (what) => {
  throw new Error(what);
};
const T = 15000;
const suffix = randomBytes(3).toString("hex");
const alice = { username: `alice${suffix}`, password: "correct-horse-1", name: "刘晓丽" };
const bob = { username: `bob${suffix}`, password: "battery-staple-2", name: "王建国" };

const scratch = mkdtempSync(join(tmpdir(), "tongxin-e2e-")); // downloads land here
const browser = await launchChromium();
const consoleErrors = [];
const consoleWarnings = []; // printed on failure only (e.g. why a message did not decrypt)

async function newPage(label, viewport = { width: 1280, height: 800 }, locale = "zh-CN") {
  const context = await browser.newContext({ viewport, acceptDownloads: true, locale });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on("pageerror", (err) => consoleErrors.push(`${label}: ${err.message}`));
  page.on("console", (msg) => {
    // The node serves the page with a Content-Security-Policy (docs/security.md): anything
    // the page needs and the policy refuses is reported here, whatever its level, and fails.
    if (msg.type() === "error" || /Content Security Policy/i.test(msg.text())) consoleErrors.push(`${label}: ${msg.text()}`);
    else if (msg.type() === "warning") consoleWarnings.push(`${label}: ${msg.text()}`);
  });
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`) });
}

async function register(page, user) {
  await page.goto(base);
  await page.locator("#login-form").waitFor();
  await page.click("#switch-mode");
  await page.fill("#username", user.username);
  await page.fill("#password", user.password);
  await page.fill("#display-name", user.name);
  await page.click("#login-submit");
  await page.locator('#conn-status[data-state="online"]').waitFor();
  const shown = await page.textContent("#me-name");
  if (shown !== user.name) fail(`after registering ${user.username} the page shows "${shown}"`);
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

/** The last own message with this text, once the server has acknowledged it (it has a seq). */
function ownMsg(page, text) {
  return page.locator("#messages .msg.own[data-seq]").filter({ has: page.locator(".text", { hasText: text }) }).last();
}

function anyMsg(page, text) {
  return page.locator("#messages .msg[data-seq]").filter({ has: page.locator(".text", { hasText: text }) }).last();
}

async function expectStatus(locator, want, what) {
  try {
    await locator.and(locator.page().locator(`[data-status="${want}"]`)).waitFor({ timeout: T });
  } catch {
    fail(`${what}: status is "${await locator.getAttribute("data-status")}", expected "${want}"`);
  }
}

try {
  // ---- two users, two contexts ----------------------------------------------
  const a = await newPage("alice");
  const b = await newPage("bob");
  const served = await a.goto(base);
  // The checks below run under the page's real policy, not without one.
  const csp = served.headers()["content-security-policy"] || "";
  for (const directive of ["default-src 'none'", "script-src 'self';", "style-src 'self';", "frame-ancestors 'none'"]) {
    if (!csp.includes(directive)) fail(`the page's Content-Security-Policy lacks ${directive}: "${csp}"`);
  }
  ok("the page is served with its Content-Security-Policy (no inline script or style, no framing)");
  await a.locator("#login-form").waitFor();
  const zhLogin = { lang: await a.getAttribute("html", "lang"), button: (await a.textContent("#login-submit")).trim() };
  if (zhLogin.lang !== "zh-CN" || zhLogin.button !== zh.login.submit || zhLogin.button !== "登录") {
    fail(`a zh-CN browser got <html lang="${zhLogin.lang}"> and a login button reading "${zhLogin.button}"`);
  }
  await shot(a, "01-login-desktop");
  ok(`a zh-CN browser gets the Chinese UI (<html lang="zh-CN">, the login button reads ${zhLogin.button})`);

  // ---- an English browser, and the switch -----------------------------------------
  const e = await newPage("english", { width: 1280, height: 800 }, "en-US");
  await e.goto(base);
  await e.locator("#login-form").waitFor();
  const enLogin = { lang: await e.getAttribute("html", "lang"), button: (await e.textContent("#login-submit")).trim() };
  if (enLogin.lang !== "en" || enLogin.button !== en.login.submit) {
    fail(`an en-US browser got <html lang="${enLogin.lang}"> and a login button reading "${enLogin.button}"`);
  }
  await shot(e, "01-login-en");
  ok(`an en-US browser gets the English UI (the login button reads ${enLogin.button})`);
  await e.click('[data-testid="lang-switch-login"] [data-lang="zh-CN"]');
  await e.locator("#login-submit", { hasText: zh.login.submit }).waitFor();
  if (await e.getAttribute("html", "lang") !== "zh-CN") fail("switching to 中文 left <html lang> alone");
  await e.reload();
  await e.locator("#login-form").waitFor();
  const after = (await e.textContent("#login-submit")).trim();
  if (after !== zh.login.submit) fail(`after a reload the switched page reads "${after}" (the choice was not remembered)`);
  if (await e.getAttribute('[data-testid="lang-switch-login"] [data-lang="zh-CN"]', "aria-pressed") !== "true") {
    fail("the switch does not show 中文 as chosen");
  }
  await e.click('[data-testid="lang-switch-login"] [data-lang="en"]');
  await e.locator("#login-submit", { hasText: en.login.submit }).waitFor();
  await e.context().close();
  ok("the 中文/English switch changes the page at once and the choice survives a reload");
  await register(a, alice);
  await register(b, bob);
  ok("two users registered and logged in over the WebSocket protocol");

  // ---- direct chat, both ways ----------------------------------------------------
  await a.click("#new-chat");
  await a.fill("#direct-user", bob.username);
  await a.click('#direct-form button[type="submit"]');
  await a.locator("#chat-title", { hasText: bob.name }).waitFor();
  await send(a, "Hello Bob, this is Alice.");
  await ownMsg(a, "Hello Bob, this is Alice.").waitFor();
  ok("alice started a direct chat by username and sent a message (ACK received)");

  const bConv = b.locator(`#conv-list .conv[data-title="${alice.name}"]`);
  await bConv.waitFor();
  const badge = await bConv.locator(".badge").textContent({ timeout: T });
  if (!(Number(badge) >= 1)) fail(`bob's unread badge is "${badge}"`);
  ok(`bob's conversation list shows the new chat with ${badge} unread`);
  await shot(b, "02-bob-list-unread");

  await bConv.click();
  await anyMsg(b, "Hello Bob, this is Alice.").waitFor();
  ok("bob opened the chat and sees alice's message (history via SYNC)");
  await expectStatus(ownMsg(a, "Hello Bob, this is Alice."), "read", "alice's first message");
  ok('alice sees "read" on her message after bob displayed it (READ receipt)');

  await send(b, "Hi Alice! Got it.");
  await anyMsg(a, "Hi Alice! Got it.").waitFor();
  ok("bob replied and alice received it live (DELIVER push)");
  await expectStatus(ownMsg(b, "Hi Alice! Got it."), "read", "bob's reply");
  ok("bob's reply shows read: alice's open chat sent a READ receipt");

  // ---- presence and typing -------------------------------------------------------
  await a.locator('#chat-sub[data-presence="online"]', { hasText: zh.chat.online }).waitFor();
  await a.locator(`#online .chip[data-user]`, { hasText: bob.name }).waitFor();
  ok("alice sees bob online (PRESENCE_SUB)");
  await b.fill("#text", "I am typing something");
  await b.dispatchEvent("#text", "input");
  await a.locator(`#typing[data-typing="${bob.name}"]`, { hasText: `${bob.name} 正在输入` }).waitFor();
  await shot(a, "03-alice-sees-typing");
  await b.fill("#text", "");
  await b.dispatchEvent("#text", "input");
  await a.locator('#typing[data-typing=""]').waitFor({ state: "attached" }).catch(() => {});
  ok("alice sees bob typing (TYPING relay)");

  // ---- edit and recall ----------------------------------------------------------
  await send(a, "Meeting at 3pm");
  const meeting = ownMsg(a, "Meeting at 3pm");
  await meeting.waitFor();
  await anyMsg(b, "Meeting at 3pm").waitFor();
  await meeting.hover();
  await meeting.locator(".more").click();
  await a.click('#menu button[data-action="edit"]');
  await a.fill("#text", "Meeting at 4pm");
  await a.press("#text", "Enter");
  await ownMsg(a, "Meeting at 4pm").locator(".edited").waitFor();
  await anyMsg(b, "Meeting at 4pm").locator(".edited").waitFor();
  ok("alice edited a message; bob sees the new text marked edited");

  await send(a, "oops, wrong chat");
  const oops = ownMsg(a, "oops, wrong chat");
  await oops.waitFor();
  await anyMsg(b, "oops, wrong chat").waitFor();
  const oopsSeq = await oops.getAttribute("data-seq");
  await oops.hover();
  await oops.locator(".more").click();
  await a.click('#menu button[data-action="recall"]');
  await b.locator(`#messages .msg[data-seq="${oopsSeq}"] .text.recalled`).waitFor();
  await a.locator(`#messages .msg[data-seq="${oopsSeq}"] .text.recalled`).waitFor();
  const leaked = await b.locator("#messages", { hasText: "oops, wrong chat" }).count();
  if (leaked) fail("the recalled text is still shown to bob");
  ok("alice recalled a message; bob sees it recalled and its text is gone");

  // ---- a long message: fragmentation out, zstd (and fragments) in ------------------
  // Letters and inner spaces only: the composer trims the ends of what it sends.
  const long = `<${Array.from(randomBytes(11998), (x) => "abcdefghijklmnopqrstuvwxyz "[x % 27]).join("")}>`;
  const before = await b.evaluate(() => ({ ...window.tongxinStats }));
  await send(a, long);
  const bLong = b.locator("#messages .msg[data-seq] .text").filter({ hasText: long.slice(0, 60) });
  await bLong.waitFor();
  const gotLong = await bLong.textContent();
  if (gotLong !== long) fail(`the 12,000-character message arrived altered (${gotLong.length} characters, first difference at ${[...gotLong].findIndex((c, i) => c !== long[i])})`);
  const aStats = await a.evaluate(() => ({ ...window.tongxinStats }));
  const bStats = await b.evaluate(() => ({ ...window.tongxinStats }));
  const limit = await a.evaluate(() => window.tongxinLimits?.maxFramePayload);
  if (limit && limit < 12000 && aStats.fragmentsOut === 0) fail(`no fragments sent though max_frame_payload is ${limit}`);
  // End-to-end encrypted (the server offers E2EE, docs/e2ee.md), the message is
  // ciphertext, which zstd cannot shrink and the server rightly sends as is.
  const e2ee = await a.evaluate(() => !!window.tongxinE2EE?.on);
  if (!e2ee && bStats.compressedIn <= before.compressedIn) fail("bob received no zstd-compressed frame for the long message");
  // 12,000 random letters still take ~7 KB after zstd (12 KB as ciphertext): fragmented in below that.
  if (limit && limit < (e2ee ? 12000 : 6000) && bStats.fragmentsIn <= before.fragmentsIn) fail(`bob received no fragments though max_frame_payload is ${limit}`);
  ok(`a 12,000-character message arrived intact${e2ee ? " end-to-end encrypted" : ""} (alice sent ${aStats.fragmentsOut} fragment frames, ` +
    `max_frame_payload ${limit}; bob decoded ${bStats.compressedIn} compressed and ${bStats.fragmentsIn} fragment frames)`);

  // ---- files -----------------------------------------------------------------------
  const probe = await fetch(`${base}/api/v1/files`, { method: "POST", body: "{}", headers: { "Content-Type": "application/json" } });
  const filesApi = probe.status !== 404 && probe.status !== 405;
  if (filesApi) {
    const size = 5 * 1024 * 1024 + 12345;
    const data = randomBytes(size);
    const digest = createHash("sha256").update(data).digest("hex");
    await a.setInputFiles("#file-input", { name: "report-q3.bin", mimeType: "application/octet-stream", buffer: data });
    const up = a.locator("#messages .msg.upload");
    await up.waitFor().catch(() => {});
    if (await up.count()) await shot(a, "04-alice-upload-progress");
    const fileMsgA = a.locator("#messages .msg.own[data-seq]").filter({ has: a.locator(".file-name", { hasText: "report-q3.bin" }) });
    await fileMsgA.waitFor({ timeout: 60000 });
    ok(`alice uploaded a ${size}-byte file in parts (files API) and sent it as a file message`);
    const fileMsgB = b.locator("#messages .msg[data-seq]").filter({ has: b.locator(".file-name", { hasText: "report-q3.bin" }) });
    await fileMsgB.waitFor();
    const [download] = await Promise.all([b.waitForEvent("download", { timeout: 60000 }), fileMsgB.locator("a.download").click()]);
    const saved = join(scratch, "downloaded.bin");
    await download.saveAs(saved);
    const { readFileSync } = await import("node:fs");
    const got = createHash("sha256").update(readFileSync(saved)).digest("hex");
    if (got !== digest) fail(`downloaded file differs: sha256 ${got}, sent ${digest}`);
    ok("bob sees the file message and downloaded it with the same sha256");
    await expectStatus(fileMsgA, "read", "alice's file message");
    ok("alice sees her file message read by bob");
    await shot(b, "05-bob-file-message");
  } else {
    console.log(`note - files API absent (POST /api/v1/files answered ${probe.status}): file step skipped`);
  }
  await shot(a, "06-alice-chat-desktop");

  // ---- history paging ---------------------------------------------------------------
  await a.evaluate(async () => {
    const box = document.getElementById("text");
    for (let i = 1; i <= 60; i++) {
      box.value = `history ${i}`;
      document.getElementById("composer").requestSubmit();
      await new Promise((r) => setTimeout(r, 30));
    }
  });
  await ownMsg(a, "history 60").waitFor({ timeout: 30000 });
  await b.reload(); // resumes with the stored token, no password
  await b.locator('#conn-status[data-state="online"]').waitFor();
  ok("bob reloaded the page and the session resumed from the stored token");
  await b.locator(`#conv-list .conv[data-title="${alice.name}"]`).click();
  await anyMsg(b, "history 60").waitFor();
  const shownBefore = await b.locator("#messages .msg[data-seq]").count();
  if (await b.locator("#messages", { hasText: /history 1$/ }).count()) fail("the first page already holds everything");
  await b.locator("#load-older").waitFor();
  await b.locator("#messages").evaluate((el) => { el.scrollTop = 0; });
  await b.locator("#messages .msg[data-seq] .text", { hasText: /^history 1$/ }).waitFor();
  const shownAfter = await b.locator("#messages .msg[data-seq]").count();
  ok(`bob scrolled back: ${shownBefore} messages, then ${shownAfter} after SYNC before_seq paging`);

  // ---- group --------------------------------------------------------------------------
  await a.click("#new-chat");
  await a.click('[data-tab="group"]');
  await a.fill("#group-name", "发布小组");
  await a.fill("#group-members", bob.username);
  await a.click('#group-form button[type="submit"]');
  await a.locator("#chat-title", { hasText: "发布小组" }).waitFor();
  await send(a, "欢迎加入发布小组");
  const bGroup = b.locator('#conv-list .conv[data-title="发布小组"]');
  await bGroup.waitFor();
  await bGroup.click();
  await anyMsg(b, "欢迎加入发布小组").waitFor();
  await send(b, "很高兴加入！");
  await anyMsg(a, "很高兴加入！").waitFor();
  await expectStatus(ownMsg(a, "欢迎加入发布小组"), "read", "alice's group message");
  ok("alice created a group with bob; both chatted in it and the read receipt came back");
  await shot(a, "07-alice-group-desktop");
  await shot(b, "08-bob-group-desktop");

  // ---- dates and times per language; the switch in the sidebar, across a reload ------
  const clock = async (page) => ({
    day: (await page.locator("#messages .day").last().textContent()).trim(),
    time: (await page.locator("#messages .msg[data-seq] .time").last().textContent()).trim(),
  });
  const zhClock = await clock(a);
  if (zhClock.day !== zh.msg.today || !/^\d{1,2}:\d{2}$/.test(zhClock.time)) {
    fail(`zh-CN: the day reads "${zhClock.day}" and the time "${zhClock.time}" (expected ${zh.msg.today} and a 24-hour time)`);
  }
  await a.click('[data-testid="lang-switch-main"] [data-lang="en"]');
  await a.locator("#send", { hasText: en.composer.send }).waitFor();
  const enClock = await clock(a);
  if (enClock.day !== en.msg.today || !/^\d{1,2}:\d{2}\s?[AP]M$/.test(enClock.time)) {
    fail(`en: the day reads "${enClock.day}" and the time "${enClock.time}" (expected ${en.msg.today} and a 12-hour time)`);
  }
  if (await a.getAttribute("html", "lang") !== "en") fail("switching to English left <html lang> alone");
  await shot(a, "07-alice-group-en");
  await a.reload();
  await a.locator('#conn-status[data-state="online"]').waitFor();
  await a.locator("#logout", { hasText: en.nav.logout }).waitFor();
  await a.click('[data-testid="lang-switch-main"] [data-lang="zh-CN"]');
  await a.locator("#logout", { hasText: zh.nav.logout }).waitFor();
  await a.locator('#conv-list .conv[data-title="发布小组"]').click();
  await anyMsg(a, "很高兴加入！").waitFor();
  ok(`dates and times follow the language (zh-CN: ${zhClock.day} ${zhClock.time}; en: ${enClock.day} ${enClock.time}); the sidebar switch survives a reload`);

  // ---- phone width ----------------------------------------------------------------------
  const p = await newPage("bob-phone", { width: 390, height: 844 });
  await p.goto(base);
  await p.fill("#username", bob.username);
  await p.fill("#password", bob.password);
  await shot(p, "09-phone-login");
  await p.click("#login-submit");
  await p.locator('#conn-status[data-state="online"]').waitFor();
  await p.locator(`#conv-list .conv[data-title="${alice.name}"]`).waitFor();
  await shot(p, "10-phone-list");
  if (await p.locator("#chat").isVisible()) fail("on a phone the chat pane shows beside the list");
  await p.locator(`#conv-list .conv[data-title="${alice.name}"]`).click();
  if (await p.evaluate(() => !!window.tongxinE2EE?.on)) {
    // A new device cannot read end-to-end encrypted history from before it
    // existed (no key was wrapped to it): it says so instead of showing text.
    await p.locator("#messages .msg[data-seq] .e2ee-error").last().waitFor();
    if (await p.locator("#messages", { hasText: "history 60" }).count()) fail("a new device shows E2EE history it has no key for");
  } else {
    await anyMsg(p, "history 60").waitFor();
  }
  if (await p.locator("#sidebar").isVisible()) fail("on a phone the list stays visible beside the open chat");
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) fail(`the phone layout is ${overflow}px wider than the screen`);
  await send(p, "Sent from my phone");
  await ownMsg(p, "Sent from my phone").waitFor();
  // alice has the group open: the direct chat's row shows the new message and an unread count
  const aRow = a.locator(`#conv-list .conv[data-title="${bob.name}"]`);
  await aRow.locator(".conv-preview", { hasText: "Sent from my phone" }).waitFor();
  await aRow.locator(".badge").waitFor();
  await shot(p, "11-phone-chat");
  await p.click("#back");
  await p.locator("#conv-list").waitFor();
  ok("at 390px the list and the chat take the whole screen in turn, nothing overflows, and sending works");

  if (consoleErrors.length) fail(`errors in the page console:\n  ${consoleErrors.join("\n  ")}`);
  ok("no errors in the page consoles (none a Content Security Policy violation)");
  console.log(`e2e: ${passed} checks passed in ${((Date.now() - started) / 1000).toFixed(1)}s; screenshots in ${artifacts}`);
} catch (err) {
  console.log(`FAILED: ${err.message}`);
  for (const c of browser.contexts()) {
    for (const [i, pg] of c.pages().entries()) {
      await pg.screenshot({ path: join(artifacts, `failure-${browser.contexts().indexOf(c)}-${i}.png`) }).catch(() => {});
    }
  }
  if (consoleErrors.length) console.log(`page console errors:\n  ${consoleErrors.join("\n  ")}`);
  if (consoleWarnings.length) console.log(`page console warnings:\n  ${consoleWarnings.join("\n  ")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  rmSync(scratch, { recursive: true, force: true });
}
