// Browser test: the page's entry dies and the page carries on through the next.
//
//   node tests/failover.mjs http://HOST:PORT_A http://HOST:PORT_B PID_A [--artifacts DIR]
//
// Two nodes of one installation (A and B, server.client_endpoints listing both)
// serve the page. Wendy's page comes from A, Xavier's from B; they chat. Then A
// is killed (SIGKILL, PID_A): Wendy's page must move to B by itself (its token,
// no login form), say so ("已切换到备用入口"), show the message Xavier sent while
// it was away exactly once, and send through B, a WebSocket to another origin
// than the page's. Prints "ok - ..." per verified behaviour; exits non-zero on
// the first failure.
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { launchChromium, requireChromium } from "./chromium.mjs";

const args = process.argv.slice(2);
const [baseA, baseB, pidA] = args.filter((a) => !a.startsWith("--"));
const artIdx = args.indexOf("--artifacts");
const artifacts = resolve(artIdx >= 0 ? args[artIdx + 1] : "test-artifacts/browser");
if (!baseA || !baseB || !pidA) {
  console.error("usage: node tests/failover.mjs http://A http://B PID_A [--artifacts DIR]");
  process.exit(2);
}
requireChromium();
mkdirSync(artifacts, { recursive: true });
const wsOf = (base) => `${base.replace(/^http/, "ws")}/ws`;

const T = 20000;
const suffix = randomBytes(3).toString("hex");
const wendy = { username: `wendy${suffix}`, password: "correct-horse-1", name: "Wendy Zhou" };
const xavier = { username: `xavier${suffix}`, password: "battery-staple-2", name: "Xavier Sun" };
const ok = (what) => console.log(`ok - ${what}`);
const fail = (what) => {
  throw new Error(what);
};

const browser = await launchChromium();
const pageErrors = [];

async function newPage(label) {
  // A zh-CN page: the check reads the Chinese entry banner (已切换到备用入口).
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "zh-CN" });
  const page = await context.newPage();
  page.setDefaultTimeout(T);
  page.on("pageerror", (err) => pageErrors.push(`${label}: ${err.message}`));
  // The page's Content-Security-Policy must let it reach entry B (connect-src names the
  // installation's entries): a refused connection or anything else it blocks fails.
  page.on("console", (msg) => {
    if (/Content Security Policy/i.test(msg.text())) pageErrors.push(`${label}: ${msg.text()}`);
  });
  return page;
}

async function register(page, base, user) {
  await page.goto(base);
  await page.locator("#login-form").waitFor();
  await page.click("#switch-mode");
  await page.fill("#username", user.username);
  await page.fill("#password", user.password);
  await page.fill("#display-name", user.name);
  await page.click("#login-submit");
  await page.locator('#conn-status[data-state="online"]').waitFor();
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

function msgs(page, text, own = false) {
  return page.locator(`#messages .msg${own ? ".own" : ""}[data-seq]`).filter({ has: page.locator(".text", { hasText: text }) });
}

let code = 0;
try {
  const w = await newPage("wendy");
  const x = await newPage("xavier");
  await register(w, baseA, wendy);
  await register(x, baseB, xavier);
  const first = await w.evaluate(() => window.tongxinEntry);
  if (first !== wsOf(baseA)) fail(`wendy's page uses ${first}, expected its own origin ${wsOf(baseA)}`);
  if (!(await w.locator("#entry-banner").isHidden())) fail("the backup-entry banner shows on the first entry");
  ok("each page connects to the entry that served it first");

  await w.click("#new-chat");
  await w.fill("#direct-user", xavier.username);
  await w.click('#direct-form button[type="submit"]');
  await w.locator("#chat-title", { hasText: xavier.name }).waitFor();
  await send(w, "hello from dc1");
  await msgs(w, "hello from dc1", true).waitFor();
  await x.locator(`#conv-list .conv[data-title="${wendy.name}"]`).click();
  await msgs(x, "hello from dc1").waitFor();
  ok("wendy (entry A) and xavier (entry B) chat");

  process.kill(Number(pidA), "SIGKILL");
  await send(x, "sent while dc1 was down");
  await msgs(x, "sent while dc1 was down", true).waitFor();

  await w.locator("#entry-banner", { hasText: "已切换到备用入口" }).waitFor();
  await w.locator('#conn-status[data-state="online"]').waitFor();
  const now = await w.evaluate(() => window.tongxinEntry);
  if (now !== wsOf(baseB)) fail(`after A died wendy's page uses ${now}, expected ${wsOf(baseB)}`);
  if (!(await w.locator("#login").isHidden())) fail("wendy was sent back to the login form");
  ok("A killed: wendy's page moved to entry B with its token and says so");
  await w.screenshot({ path: join(artifacts, "failover-moved.png") });

  await msgs(w, "sent while dc1 was down").waitFor();
  for (const text of ["hello from dc1", "sent while dc1 was down"]) {
    const n = await msgs(w, text).count();
    if (n !== 1) fail(`wendy's page shows "${text}" ${n} times`);
  }
  ok("the message sent while wendy was away is shown once, earlier ones not repeated");

  await send(w, "back through dc2");
  await msgs(w, "back through dc2", true).waitFor();
  await msgs(x, "back through dc2").waitFor();
  ok("wendy sends through entry B (a WebSocket to another origin than the page's is accepted)");
  if (pageErrors.length) fail(`page errors: ${pageErrors.join("; ")}`);
} catch (err) {
  console.error(`FAILED: ${err.message}`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
